"""Anchor-to-ground-truth matching for a whole batch at once (padded ground truth, one IoU tensor).

Per image it equals torchvision's `Matcher(high, low, allow_low_quality_matches=True)` applied to
`box_iou(gt, anchors)`: index >= 0 matched ground truth, -1 background (IoU < low), -2 ignore (in between).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

BACKGROUND = -1
IGNORE = -2
# RetinaNet's anchor assigners (`model.assigner`): this IoU matcher, or ATSS (detector/models/atss.py)
ASSIGNERS = ("iou", "atss")


def batched_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU [B, G, A] of boxes1 [B, G, 4] against boxes2 [A, 4] or [B, A, 4], bit for bit torchvision's.

    Each coordinate is broadcast as its own [B, G, 1] against [B, 1, A] plane: a [..., 2]-wide inner dimension
    (torchvision's `lt`/`rb`) makes every max/min a 2-element inner loop, several times slower on the CPU."""
    if boxes2.dim() == 2:
        boxes2 = boxes2.unsqueeze(0)
    x1a, y1a, x2a, y2a = (t.unsqueeze(2) for t in boxes1.unbind(-1))  # [B, G, 1] each
    x1b, y1b, x2b, y2b = boxes2.transpose(1, 2).contiguous().unsqueeze(1).unbind(2)  # [B, 1, A] each
    area1 = (x2a - x1a) * (y2a - y1a)
    area2 = (x2b - x1b) * (y2b - y1b)
    w = (torch.minimum(x2a, x2b) - torch.maximum(x1a, x1b)).clamp(min=0)
    h = (torch.minimum(y2a, y2b) - torch.maximum(y1a, y1b)).clamp(min=0)
    inter = w * h
    union = area1 + area2 - inter
    return inter / union


class BatchMatcher:
    """Matches anchors [A, 4] to padded ground truth [B, G, 4] with a validity mask [B, G]."""

    def __init__(self, high: float = 0.5, low: float = 0.4, allow_low_quality_matches: bool = True) -> None:
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"matcher thresholds need 0 <= low <= high <= 1, got low={low}, high={high}")
        self.high = float(high)
        self.low = float(low)
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(
        self,
        gt_boxes: torch.Tensor,
        valid: torch.Tensor,
        anchors: torch.Tensor,
        num_per_level: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Matched ground-truth index per anchor [B, A] (int64): >= 0, BACKGROUND (-1) or IGNORE (-2).

        `num_per_level` (anchors per pyramid level) is unused here; ATSS, with the same call, needs it. On
        the CPU the images are matched one at a time: a [1, G, A] IoU stays in cache, faster than one
        [B, G, A] pass (tools/bench_matcher.py); on a GPU the batch is one pass (fewer launches)."""
        batch, num_gt = gt_boxes.shape[:2]
        if num_gt == 0:
            return torch.full((batch, anchors.shape[0]), BACKGROUND, dtype=torch.int64, device=anchors.device)
        if anchors.device.type == "cpu" and batch > 1:
            per_image = [self._match(gt_boxes[b : b + 1], valid[b : b + 1], anchors) for b in range(batch)]
            return torch.cat(per_image)
        return self._match(gt_boxes, valid, anchors)

    def _match(self, gt_boxes: torch.Tensor, valid: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        iou = batched_box_iou(gt_boxes, anchors)
        iou = torch.where(valid[:, :, None], iou, torch.full_like(iou, -1.0))  # padding never wins
        matched_vals, matches = iou.max(dim=1)  # [B, A]
        all_matches = matches
        matches = torch.where(matched_vals < self.low, torch.full_like(matches, BACKGROUND), matches)
        between = (matched_vals >= self.low) & (matched_vals < self.high)
        matches = torch.where(between, torch.full_like(matches, IGNORE), matches)
        if self.allow_low_quality_matches:
            # every anchor that is the best one for some ground truth keeps its best ground truth
            best_per_gt = iou.max(dim=2, keepdim=True).values  # [B, G, 1]
            is_best = (iou == best_per_gt) & valid[:, :, None]
            matches = torch.where(is_best.any(dim=1), all_matches, matches)
        no_gt = ~valid.any(dim=1)  # images without boxes: everything background
        return torch.where(no_gt[:, None], torch.full_like(matches, BACKGROUND), matches)
