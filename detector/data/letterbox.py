"""Letterbox geometry without the augmentation stack: the size rule and the map back to original pixels.

Light (torch only), so export, prediction and evaluation use it without importing albumentations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["boxes_to_original", "check_letterbox_size"]


def check_letterbox_size(size: int) -> int:
    """`size` if it is a positive int multiple of 32 (the FPN's largest stride), else a ValueError."""
    if not isinstance(size, int) or size <= 0 or size % 32:
        raise ValueError(f"letterbox size must be a positive multiple of 32, got {size!r}")
    return size


def boxes_to_original(
    boxes: torch.Tensor,
    scale: torch.Tensor | Sequence[float],
    pad: torch.Tensor | Sequence[float],
    orig_size: Sequence[int],
) -> torch.Tensor:
    """Map boxes [K, 4] from the letterboxed frame back to original image pixels and clip to (H, W)."""
    boxes = torch.as_tensor(boxes)
    dtype = boxes.dtype if boxes.is_floating_point() else torch.float32
    scale = torch.as_tensor(scale, dtype=dtype, device=boxes.device).reshape(2)
    pad = torch.as_tensor(pad, dtype=dtype, device=boxes.device).reshape(2)
    height, width = (int(v) for v in orig_size)
    out = (boxes.to(dtype) - pad.repeat(2)) / scale.repeat(2)
    out[..., 0::2] = out[..., 0::2].clamp(0, width)
    out[..., 1::2] = out[..., 1::2].clamp(0, height)
    return out
