"""Box regression losses on foreground anchors: smooth-L1 or L1 on deltas, or GIoU on decoded boxes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss

from detector.models.box_coder import BoxCoder

BOX_LOSSES = ("smooth_l1", "l1", "giou")


def box_regression_loss(
    kind: str,
    coder: BoxCoder,
    deltas: torch.Tensor,
    anchors: torch.Tensor,
    gt_boxes: torch.Tensor,
    beta: float = 1.0 / 9.0,
) -> torch.Tensor:
    """Summed loss over rows of deltas/anchors/gt_boxes [N, 4] (foreground anchors only)."""
    if kind == "smooth_l1":
        return F.smooth_l1_loss(deltas, coder.encode(gt_boxes, anchors), reduction="sum", beta=beta)
    if kind == "l1":
        return F.l1_loss(deltas, coder.encode(gt_boxes, anchors), reduction="sum")
    if kind == "giou":
        return generalized_box_iou_loss(coder.decode(deltas, anchors), gt_boxes, reduction="sum", eps=1e-7)
    raise ValueError(f"unknown box loss {kind!r}; expected one of {BOX_LOSSES}")
