"""Box deltas (dx, dy, dw, dh) relative to anchors, with per-coordinate weights and the dw/dh clamp.

Arithmetic mirrors torchvision's `det_utils.BoxCoder.encode_single/decode_single` so results are identical;
unlike it, both accept any leading batch dimensions ([..., 4]).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

DEFAULT_CLIP = math.log(1000.0 / 16)


class BoxCoder:
    """Encode ground-truth boxes against anchors and decode predicted deltas back to xyxy boxes."""

    def __init__(self, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0), clip: float = DEFAULT_CLIP) -> None:
        if len(weights) != 4:
            raise ValueError(f"box coder weights need 4 values (wx, wy, ww, wh), got {list(weights)}")
        self.weights = tuple(float(w) for w in weights)
        self.clip = float(clip)

    def encode(self, boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Deltas [..., 4] that move `anchors` onto `boxes` (both xyxy, broadcastable)."""
        wx, wy, ww, wh = self.weights
        ex_w = anchors[..., 2] - anchors[..., 0]
        ex_h = anchors[..., 3] - anchors[..., 1]
        ex_cx = anchors[..., 0] + 0.5 * ex_w
        ex_cy = anchors[..., 1] + 0.5 * ex_h
        gt_w = boxes[..., 2] - boxes[..., 0]
        gt_h = boxes[..., 3] - boxes[..., 1]
        gt_cx = boxes[..., 0] + 0.5 * gt_w
        gt_cy = boxes[..., 1] + 0.5 * gt_h
        dx = wx * (gt_cx - ex_cx) / ex_w
        dy = wy * (gt_cy - ex_cy) / ex_h
        dw = ww * torch.log(gt_w / ex_w)
        dh = wh * torch.log(gt_h / ex_h)
        return torch.stack((dx, dy, dw, dh), dim=-1)

    def decode(self, deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """xyxy boxes [..., 4] from `deltas` applied to `anchors` (broadcastable); dw/dh clamped."""
        anchors = anchors.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        widths = anchors[..., 2] - anchors[..., 0]
        heights = anchors[..., 3] - anchors[..., 1]
        ctr_x = anchors[..., 0] + 0.5 * widths
        ctr_y = anchors[..., 1] + 0.5 * heights
        dx = deltas[..., 0] / wx
        dy = deltas[..., 1] / wy
        dw = torch.clamp(deltas[..., 2] / ww, max=self.clip)
        dh = torch.clamp(deltas[..., 3] / wh, max=self.clip)
        pred_cx = dx * widths + ctr_x
        pred_cy = dy * heights + ctr_y
        pred_w = torch.exp(dw) * widths
        pred_h = torch.exp(dh) * heights
        half_w = torch.tensor(0.5, dtype=pred_cy.dtype, device=pred_w.device) * pred_w
        half_h = torch.tensor(0.5, dtype=pred_cy.dtype, device=pred_h.device) * pred_h
        return torch.stack((pred_cx - half_w, pred_cy - half_h, pred_cx + half_w, pred_cy + half_h), dim=-1)
