"""ATSS matching (Zhang et al. 2020, "Bridging the Gap Between Anchor-based and Anchor-free Detection") for a
whole padded batch, with `BatchMatcher`'s call contract: matched ground-truth index per anchor, or BACKGROUND.

Per ground truth and pyramid level, the `topk` anchors whose centres are closest to the box centre are its
candidates (anchors, not locations, as in mmdetection and the paper's code); the IoU threshold is the mean +
the (unbiased) standard deviation of the candidates' IoUs; positives are the candidates at or above it whose
centre lies inside the box (by more than 0.01 px, as both reference implementations); an anchor positive for
several boxes takes the one it overlaps most. Everything else is background: ATSS has no ignore band.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from detector.models.matcher import BACKGROUND, batched_box_iou

__all__ = ["ATSSMatcher"]

INSIDE_MARGIN = 0.01  # px an anchor centre must lie inside the box (the paper's code and mmdetection)
# IoUs this close below the threshold still pass: candidates of equal IoU (a box centred between grid
# points) must not fail their own mean + std (0) because float32 rounds the mean up by an ulp.
THRESHOLD_TOLERANCE = 1e-6


class ATSSMatcher:
    """Adaptive training sample selection over anchors [A, 4] (levels concatenated, `num_per_level` each)
    for padded ground truth [B, G, 4] with a validity mask [B, G]."""

    def __init__(self, topk: int = 9) -> None:
        if int(topk) < 1:
            raise ValueError(f"ATSS needs topk >= 1 candidates per level, got {topk}")
        self.topk = int(topk)

    def candidates(
        self, gt_boxes: torch.Tensor, anchors: torch.Tensor, num_per_level: Sequence[int]
    ) -> torch.Tensor:
        """Candidate mask [B, G, A]: per level the `topk` anchors nearest to each box centre (squared L2
        between centres; equal distances: the lower anchor index first, so the choice is deterministic)."""
        if sum(num_per_level) != anchors.shape[0]:
            raise ValueError(f"anchors per level {list(num_per_level)} do not add up to {anchors.shape[0]}")
        gt_c = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2  # [B, G, 2]
        an_c = (anchors[:, :2] + anchors[:, 2:]) / 2  # [A, 2]
        dist = (an_c[None, None, :, 0] - gt_c[..., 0, None]) ** 2 + (
            an_c[None, None, :, 1] - gt_c[..., 1, None]
        ) ** 2
        masks = []
        for d in dist.split(list(num_per_level), dim=2):
            k = min(self.topk, d.shape[2])
            if k == 0:
                masks.append(torch.zeros_like(d, dtype=torch.bool))
                continue
            kth = d.topk(k, dim=2, largest=False).values[..., -1:]  # the k-th smallest distance
            closer = d < kth
            tied = d == kth
            room = k - closer.sum(dim=2, keepdim=True)  # how many of the tied anchors still fit
            masks.append(closer | (tied & (tied.cumsum(dim=2) <= room)))
        return torch.cat(masks, dim=2)

    def __call__(
        self,
        gt_boxes: torch.Tensor,
        valid: torch.Tensor,
        anchors: torch.Tensor,
        num_per_level: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Matched ground-truth index per anchor [B, A] (int64): >= 0 or BACKGROUND (-1)."""
        if num_per_level is None:
            raise ValueError("the ATSS matcher needs the number of anchors per pyramid level")
        batch, num_gt = gt_boxes.shape[:2]
        background = torch.full(
            (batch, anchors.shape[0]), BACKGROUND, dtype=torch.int64, device=anchors.device
        )
        if num_gt == 0 or anchors.shape[0] == 0:
            return background
        gt_boxes = gt_boxes.to(anchors.dtype)
        candidate = self.candidates(gt_boxes, anchors, num_per_level) & valid[:, :, None]
        iou = batched_box_iou(gt_boxes, anchors)  # [B, G, A]
        count = candidate.sum(dim=2, keepdim=True).clamp(min=1)
        cand_iou = torch.where(candidate, iou, torch.zeros_like(iou))
        mean = cand_iou.sum(dim=2, keepdim=True) / count
        sq_dev = torch.where(candidate, (iou - mean) ** 2, torch.zeros_like(iou))
        std = (sq_dev.sum(dim=2, keepdim=True) / (count - 1).clamp(min=1)).sqrt()  # 1 candidate: std 0
        above = iou >= mean + std - THRESHOLD_TOLERANCE
        an_x = ((anchors[:, 0] + anchors[:, 2]) / 2)[None, None]
        an_y = ((anchors[:, 1] + anchors[:, 3]) / 2)[None, None]
        x1, y1, x2, y2 = (gt_boxes[..., i, None] for i in range(4))
        margin = torch.minimum(torch.minimum(an_x - x1, an_y - y1), torch.minimum(x2 - an_x, y2 - an_y))
        inside = margin > INSIDE_MARGIN
        positive = candidate & above & inside
        # an anchor positive for several boxes takes the highest IoU (equal IoUs: the lower box index)
        best_gt = torch.where(positive, iou, torch.full_like(iou, -1.0)).argmax(dim=1)
        return torch.where(positive.any(dim=1), best_gt, background)
