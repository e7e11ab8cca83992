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

from detector.models.matcher import BACKGROUND

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
        """Candidate anchor indices [B, G, K] (ascending; K = sum over levels of min(topk, level size)): per
        level the `topk` anchors nearest to each box centre (squared L2 between centres; equal distances
        across the k-th place: the lower anchor indices, so the choice is deterministic)."""
        if sum(num_per_level) != anchors.shape[0]:
            raise ValueError(f"anchors per level {list(num_per_level)} do not add up to {anchors.shape[0]}")
        batch, num_gt = gt_boxes.shape[:2]
        gt_x = ((gt_boxes[..., 0] + gt_boxes[..., 2]) / 2)[..., None]  # [B, G, 1]
        gt_y = ((gt_boxes[..., 1] + gt_boxes[..., 3]) / 2)[..., None]
        picked, start = [], 0
        for count in num_per_level:
            k = min(self.topk, count)
            level = anchors[start : start + count]
            dx = (level[:, 0] + level[:, 2]) / 2 - gt_x  # [B, G, n]
            dy = (level[:, 1] + level[:, 3]) / 2 - gt_y
            dist = dx * dx + dy * dy
            if k > 0:
                values, index = dist.topk(k, dim=2, largest=False)
                kth = values[..., -1:]  # the k-th smallest distance
                if bool(((dist <= kth).sum(dim=2) > k).any()):  # ties across the k-th place: topk's pick
                    closer, tied = dist < kth, dist == kth  # among them is arbitrary; take lower indices
                    room = k - closer.sum(dim=2, keepdim=True)
                    mask = closer | (tied & (tied.cumsum(dim=2, dtype=torch.int32) <= room))
                    index = mask.nonzero()[:, 2].view(batch, num_gt, k)
                picked.append(index + start)
            start += count
        return torch.cat(picked, dim=2).sort(dim=2).values

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
        # at least float32 (bf16 anchors under mixed precision would make most distances equal)
        anchors = anchors.to(torch.promote_types(anchors.dtype, torch.float32))
        gt_boxes = gt_boxes.to(anchors.dtype)
        index = self.candidates(gt_boxes, anchors, num_per_level)  # [B, G, K] anchor indices
        count = index.shape[2]
        boxes = anchors[index]  # [B, G, K, 4]
        gt = gt_boxes[:, :, None, :]
        wh = (torch.minimum(gt[..., 2:], boxes[..., 2:]) - torch.maximum(gt[..., :2], boxes[..., :2])).clamp(
            min=0
        )
        inter = wh[..., 0] * wh[..., 1]
        area_gt = (gt[..., 2] - gt[..., 0]) * (gt[..., 3] - gt[..., 1])
        area_an = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
        iou = inter / (area_gt + area_an - inter)  # [B, G, K]
        mean = iou.mean(dim=2, keepdim=True)
        std = iou.std(dim=2, keepdim=True) if count > 1 else torch.zeros_like(mean)  # 1 candidate: std 0
        centre = (boxes[..., :2] + boxes[..., 2:]) / 2
        margin = torch.minimum(centre - gt[..., :2], gt[..., 2:] - centre).amin(dim=-1)
        positive = (iou >= mean + std - THRESHOLD_TOLERANCE) & (margin > INSIDE_MARGIN) & valid[:, :, None]
        # an anchor positive for several boxes takes the highest IoU (equal IoUs: the lower box index)
        flat_index = index.view(batch, -1)
        score = torch.where(positive, iou, torch.full_like(iou, -1.0)).view(batch, -1)
        best = torch.full((batch, anchors.shape[0]), -1.0, dtype=iou.dtype, device=iou.device)
        best = best.scatter_reduce(1, flat_index, score, "amax")
        gt_index = (
            torch.arange(num_gt, device=anchors.device).view(1, -1, 1).expand_as(index).reshape(batch, -1)
        )
        winner = positive.view(batch, -1) & (score == best.gather(1, flat_index))
        chosen = torch.full_like(background, num_gt).scatter_reduce(
            1, flat_index, torch.where(winner, gt_index, torch.full_like(gt_index, num_gt)), "amin"
        )
        return torch.where(chosen < num_gt, chosen, background)
