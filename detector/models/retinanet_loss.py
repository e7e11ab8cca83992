"""RetinaNet's training criterion for a whole batch: matching, focal (or OHEM) classification, box loss,
normalization by foreground anchors.

One `[B, G, A]` IoU for the matching (padded ground truth), one fused focal-loss call over `[B*A, C]` and one
box-loss call over the foreground anchors. The study tools reuse `RetinaNetLoss.anchor_labels`, so every
per-anchor figure comes from the same matching as training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops import nms

from detector.losses.focal import sigmoid_focal_loss
from detector.models.atss import ATSSMatcher
from detector.models.box_coder import BoxCoder
from detector.models.box_loss import box_regression_loss
from detector.models.matcher import BACKGROUND, IGNORE, BatchMatcher

__all__ = [
    "CLS_LOSSES",
    "NORMALIZATIONS",
    "OHEMSampler",
    "RetinaNetLoss",
    "classification_targets",
    "hardest_after_nms",
    "pad_targets",
]

CLS_LOSSES = ("focal", "ohem")
# "batch": the batch's summed loss over the batch's foreground count (the paper, Detectron, mmdetection);
# "image": each image over its own count, averaged over the images (torchvision's RetinaNet).
NORMALIZATIONS = ("batch", "image")


def pad_targets(
    targets: Sequence[dict[str, torch.Tensor]], num_classes: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ground truth as padded boxes [B, G, 4], labels [B, G] (1..C) and validity [B, G]; checks them."""
    boxes = [t["boxes"].to(device=device, dtype=torch.float32) for t in targets]
    labels = [t["labels"].to(device=device, dtype=torch.int64) for t in targets]
    for i, (b, lab) in enumerate(zip(boxes, labels, strict=True)):
        if b.dim() != 2 or b.shape[-1] != 4 or lab.shape != b.shape[:1]:
            raise ValueError(
                f"target {i}: boxes must be [G, 4] with labels [G], got {tuple(b.shape)}, {tuple(lab.shape)}"
            )
    lengths = torch.tensor([b.shape[0] for b in boxes], device=device)
    gt_boxes = nn.utils.rnn.pad_sequence(boxes, batch_first=True)
    gt_labels = nn.utils.rnn.pad_sequence(labels, batch_first=True)
    if gt_boxes.shape[1] == 0:
        gt_boxes = gt_boxes.reshape(len(boxes), 0, 4)
    valid = torch.arange(gt_boxes.shape[1], device=device)[None, :] < lengths[:, None]
    bad_label = valid & ((gt_labels < 1) | (gt_labels > num_classes))
    degenerate = valid & ((gt_boxes[..., 2] <= gt_boxes[..., 0]) | (gt_boxes[..., 3] <= gt_boxes[..., 1]))
    if bool((bad_label | degenerate).any()):
        img, j = torch.nonzero(bad_label | degenerate)[0].tolist()
        raise ValueError(
            f"target {img}, box {j}: label {int(gt_labels[img, j])} must be in 1..{num_classes} and the box "
            f"{gt_boxes[img, j].tolist()} must have x2 > x1 and y2 > y1"
        )
    return gt_boxes, gt_labels, valid


def classification_targets(matches: torch.Tensor, gt_labels: torch.Tensor) -> torch.Tensor:
    """Per-anchor integer labels [B, A]: class 0..C-1, -1 background, -2 ignore."""
    fg_label = gt_labels.gather(1, matches.clamp(min=0)) - 1 if gt_labels.shape[1] else matches
    return torch.where(matches >= 0, fg_label, matches)


def hardest_after_nms(score: torch.Tensor, boxes: torch.Tensor, count: int, iou: float) -> torch.Tensor:
    """Indices of the `count` highest-`score` boxes that survive an NMS at `iou` (candidates: score >= 0).

    Greedy NMS decides each box from the higher-scored ones only, so it runs on the top `4 * count`
    candidates and widens the window only while too few survive: the picks an NMS over every candidate
    would make first (up to the order of equal scores), at a fraction of its cost over ~10^5 anchors.
    """
    order = score.argsort(descending=True)
    available = int((score >= 0).sum())
    window = min(available, 4 * count)
    while True:
        top = order[:window]
        kept = top[nms(boxes[top], score[top], iou)]
        if len(kept) >= count or window == available:
            return kept[:count]
        window = min(available, 2 * window)


@dataclass(frozen=True)
class OHEMSampler:
    """Online hard example mining: keep the highest-CE anchors per image, mark the rest ignored (-2).

    With `budget > 0` each image keeps its `budget` hardest non-ignored anchors (positive or negative);
    otherwise all positives and at most `neg_pos_ratio` times as many of the hardest negatives (at least as
    many as one positive allows, so images without objects still train). With `nms > 0` they are picked after
    an NMS at that IoU over the candidates' anchors (the paper's OHEM: one pick per hard spot instead of a
    cluster of overlapping anchors on it).
    """

    neg_pos_ratio: float = 3.0
    budget: int = 0
    nms: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.nms <= 1.0:
            raise ValueError(f"OHEM NMS IoU must be in [0, 1] (0: none), got {self.nms}")

    @torch.no_grad()
    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Labels [B, A] with the anchors not picked set to IGNORE; `logits` [B*A, C], `anchors` [A, 4]."""
        batch, num_anchors = labels.shape
        ce = sigmoid_focal_loss(logits, labels.reshape(-1), alpha=None, gamma=0.0, reduction="none")
        ce = ce.sum(dim=1).view(batch, num_anchors)
        positive, negative = labels >= 0, labels == BACKGROUND
        if self.budget > 0:
            candidates = positive | negative
            keep_count = torch.full((batch,), int(self.budget), device=labels.device)
        else:
            candidates = negative
            num_pos = positive.sum(dim=1)
            keep_count = (float(self.neg_pos_ratio) * num_pos.clamp(min=1)).floor().long()
        score = torch.where(candidates, ce, torch.full_like(ce, -1.0))
        if self.nms > 0:
            keep = torch.zeros_like(candidates)
            for i in range(batch):
                keep[i, hardest_after_nms(score[i], anchors, int(keep_count[i]), float(self.nms))] = True
        else:
            order = score.argsort(dim=1, descending=True)
            rank = torch.empty_like(order)
            rank.scatter_(1, order, torch.arange(num_anchors, device=labels.device).expand(batch, -1))
            keep = candidates & (rank < keep_count[:, None])
        if self.budget <= 0:
            keep = keep | positive
        return torch.where(keep, labels, torch.full_like(labels, IGNORE))


class RetinaNetLoss:
    """Classification (focal, or CE over OHEM's picks) + box loss of a batch, each divided by foreground
    anchors (>= 1): the batch's count (`normalize="batch"`) or each image's own, averaged over the images."""

    def __init__(
        self,
        matcher: BatchMatcher | ATSSMatcher,
        box_coder: BoxCoder,
        alpha: float | None = 0.25,
        gamma: float = 2.0,
        ohem: OHEMSampler | None = None,
        box_loss: str = "smooth_l1",
        smooth_l1_beta: float = 1.0 / 9.0,
        box_weight: float = 1.0,
        normalize: str = "batch",
    ) -> None:
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"loss normalization must be one of {NORMALIZATIONS}, got {normalize!r}")
        self.matcher, self.box_coder = matcher, box_coder
        # OHEM trains plain CE on the picked anchors
        self.alpha, self.gamma = (None, 0.0) if ohem is not None else (alpha, gamma)
        self.ohem = ohem
        self.box_loss, self.smooth_l1_beta, self.box_weight = box_loss, smooth_l1_beta, box_weight
        self.normalize = normalize

    def anchor_labels(
        self,
        anchors: torch.Tensor,
        targets: Sequence[dict[str, torch.Tensor]],
        num_classes: int,
        num_per_level: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(labels [B, A]: class 0..C-1 / -1 background / -2 ignore, matches [B, A], padded gt boxes).

        `num_per_level`: anchors per pyramid level (`RetinaNet.head_outputs`); the ATSS matcher needs it."""
        gt_boxes, gt_labels, valid = pad_targets(targets, num_classes, anchors.device)
        matches = self.matcher(gt_boxes, valid, anchors, num_per_level)
        return classification_targets(matches, gt_labels), matches, gt_boxes

    def __call__(
        self,
        cls_logits: torch.Tensor,
        box_deltas: torch.Tensor,
        anchors: torch.Tensor,
        targets: Sequence[dict[str, torch.Tensor]],
        num_per_level: Sequence[int] | None = None,
    ) -> dict[str, torch.Tensor]:
        """`{"classification", "bbox_regression"}` of logits [B, A, C], deltas [B, A, 4] at anchors [A, 4]
        (`num_per_level` of them per pyramid level; the ATSS matcher needs it)."""
        batch, _, num_classes = cls_logits.shape
        labels, matches, gt_boxes = self.anchor_labels(anchors, targets, num_classes, num_per_level)
        foreground = matches >= 0
        if self.ohem is not None:
            labels = self.ohem(cls_logits.detach().reshape(-1, num_classes), labels, anchors)
        fg_b, fg_a = torch.nonzero(foreground, as_tuple=True)
        if gt_boxes.shape[1]:
            matched_boxes = gt_boxes[fg_b, matches[fg_b, fg_a]]
        else:
            matched_boxes = box_deltas.new_zeros((0, 4))

        def losses(images: slice | int, rows: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
            """Summed classification and box loss of `images` (their foreground anchors: `rows`)."""
            cls = sigmoid_focal_loss(
                cls_logits[images].reshape(-1, num_classes),
                labels[images].reshape(-1),
                self.alpha,
                self.gamma,
            )
            box = box_regression_loss(
                self.box_loss,
                self.box_coder,
                box_deltas[fg_b[rows], fg_a[rows]],
                anchors[fg_a[rows]],
                matched_boxes[rows],
                self.smooth_l1_beta,
            )
            return cls, box * self.box_weight

        if self.normalize == "batch":
            cls, box = losses(slice(None), slice(None))
            normalizer = foreground.sum().clamp(min=1).float()
            return {"classification": cls / normalizer, "bbox_regression": box / normalizer}
        per_image = [losses(i, fg_b == i) for i in range(batch)]
        normalizer = foreground.sum(dim=1).clamp(min=1).float() * batch
        cls = sum(c / n for (c, _), n in zip(per_image, normalizer, strict=True))
        box = sum(b / n for (_, b), n in zip(per_image, normalizer, strict=True))
        return {"classification": cls, "bbox_regression": box}
