"""Anchor grids for the P3-P7 pyramid, built once per (input size, device, dtype) and cached.

The layout equals torchvision's `AnchorGenerator`: per level, locations row-major, then the cell
anchors (ratio major, scale minor); strides are `image_size // grid_size` as there, so the two agree exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def cell_anchors(
    sizes: Sequence[float], ratios: Sequence[float], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Zero-centred anchors [len(ratios) * len(sizes), 4] for one level, rounded like torchvision."""
    scales = torch.as_tensor(list(sizes), dtype=dtype)
    aspect = torch.as_tensor(list(ratios), dtype=dtype)
    h_ratios = torch.sqrt(aspect)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).view(-1)
    hs = (h_ratios[:, None] * scales[None, :]).view(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


class AnchorGrid(nn.Module):
    """Per-level anchors for a square or rectangular input; `grid` returns them concatenated over levels.

    `sizes[l]` is the base size of level l; each level gets `size * scale` for every scale and every ratio.
    """

    def __init__(self, sizes: Sequence[float], scales: Sequence[float], ratios: Sequence[float]) -> None:
        super().__init__()
        if not sizes or not scales or not ratios:
            raise ValueError(
                f"anchors need non-empty sizes, scales and ratios, got {sizes}, {scales}, {ratios}"
            )
        if any(r <= 0 for r in ratios) or any(s <= 0 for s in sizes) or any(s <= 0 for s in scales):
            raise ValueError(
                f"anchor sizes, scales and ratios must be positive, got {sizes}, {scales}, {ratios}"
            )
        self.level_sizes = [[float(s) * float(k) for k in scales] for s in sizes]
        self.ratios = [float(r) for r in ratios]
        self._cells = [cell_anchors(s, self.ratios) for s in self.level_sizes]
        self._cache: dict[tuple, tuple[torch.Tensor, list[int]]] = {}

    @property
    def num_levels(self) -> int:
        return len(self.level_sizes)

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.ratios) * len(self.level_sizes[0])

    def grid(
        self,
        image_size: tuple[int, int],
        grid_sizes: Sequence[tuple[int, int]],
        device: torch.device,
        dtype: torch.dtype = torch.float32,
    ) -> tuple[torch.Tensor, list[int]]:
        """All anchors [A, 4] (levels concatenated) and the number of anchors per level; cached."""
        if len(grid_sizes) != self.num_levels:
            raise ValueError(f"got {len(grid_sizes)} feature maps for {self.num_levels} anchor levels")
        key = (tuple(image_size), tuple(tuple(int(v) for v in g) for g in grid_sizes), str(device), dtype)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        levels = []
        for (gh, gw), cell in zip(grid_sizes, self._cells, strict=True):
            stride_h, stride_w = image_size[0] // gh, image_size[1] // gw
            shifts_x = torch.arange(0, gw, dtype=torch.int32, device=device) * stride_w
            shifts_y = torch.arange(0, gh, dtype=torch.int32, device=device) * stride_h
            shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
            shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
            base = cell.to(device=device, dtype=dtype)
            levels.append((shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4))
        out = (torch.cat(levels), [lv.shape[0] for lv in levels])
        if len(self._cache) > 16:
            self._cache.clear()
        self._cache[key] = out
        return out
