"""RetinaNet: backbone + FPN + class/box subnets, with a batched loss and batched post-processing.

Everything after the head works on the whole batch at once: one IoU tensor for matching, one focal-loss
call over `[B*A, C]`, one box-loss call over the foreground anchors, and one NMS over all images and classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.ops import batched_nms, nms

from detector.losses.focal import sigmoid_focal_loss
from detector.models.anchors import AnchorGrid
from detector.models.backbones import Backbone
from detector.models.box_coder import BoxCoder
from detector.models.box_loss import BOX_LOSSES, box_regression_loss
from detector.models.fpn import FPN
from detector.models.matcher import BACKGROUND, IGNORE, BatchMatcher
from detector.models.normalize import ImageNormalizer


class Subnet(nn.Module):
    """`depth` 3x3 conv + (GroupNorm) + ReLU layers, then a 3x3 predictor (`num_anchors * outputs` ch)."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        depth: int,
        norm: str,
        num_anchors: int,
        outputs: int,
        bias: float,
    ) -> None:
        super().__init__()
        if norm not in ("none", "group"):
            raise ValueError(f"head norm must be 'none' or 'group', got {norm!r}")
        layers: list[nn.Module] = []
        for i in range(depth):
            layers.append(
                nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1, bias=norm == "none")
            )
            if norm == "group":
                layers.append(nn.GroupNorm(math.gcd(32, channels), channels))
            layers.append(nn.ReLU(inplace=True))
        self.tower = nn.Sequential(*layers)
        self.predictor = nn.Conv2d(channels if depth else in_channels, num_anchors * outputs, 3, padding=1)
        self.outputs = outputs
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0.0)
        nn.init.constant_(self.predictor.bias, bias)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Predictions [B, sum_l H_l*W_l*A, outputs], levels concatenated, anchor order (y, x, anchor)."""
        outs = []
        for f in feats:
            o = self.predictor(self.tower(f))
            outs.append(o.permute(0, 2, 3, 1).reshape(o.shape[0], -1, self.outputs))
        return torch.cat(outs, dim=1)


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


class RetinaNet(nn.Module):
    """One-stage detector with torchvision's interface; images uint8 [B, 3, H, W], normalized inside.

    Use `.train()` / `.eval()` (not `.training = ...`) to switch modes: they also switch the memory format.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        fpn_channels: int = 256,
        p6_from: str = "p5",
        head_channels: int = 256,
        head_depth: int = 4,
        head_norm: str = "none",
        anchor_sizes: Sequence[float] = (32.0, 64.0, 128.0, 256.0, 512.0),
        anchor_scales: Sequence[float] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3)),
        anchor_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        cls_loss: str = "focal",
        alpha: float | None = 0.25,
        gamma: float = 2.0,
        prior: float = 0.01,
        ohem_neg_pos_ratio: float = 3.0,
        ohem_budget: int = 0,
        ohem_nms: float = 0.0,
        box_loss: str = "smooth_l1",
        smooth_l1_beta: float = 1.0 / 9.0,
        box_weight: float = 1.0,
        loss_normalize: str = "batch",
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.4,
        score_thresh: float = 0.05,
        topk_candidates: int = 1000,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        box_coder_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if cls_loss not in ("focal", "ohem"):
            raise ValueError(f"classification loss must be 'focal' or 'ohem', got {cls_loss!r}")
        if loss_normalize not in ("batch", "image"):
            raise ValueError(f"loss normalization must be 'batch' or 'image', got {loss_normalize!r}")
        if box_loss not in BOX_LOSSES:
            raise ValueError(f"box loss must be one of {BOX_LOSSES}, got {box_loss!r}")
        if not 0.0 < prior < 1.0:
            raise ValueError(f"classifier prior must be in (0, 1), got {prior}")
        if not 0.0 <= ohem_nms <= 1.0:
            raise ValueError(f"OHEM NMS IoU must be in [0, 1] (0: none), got {ohem_nms}")
        if len(anchor_sizes) != 5:
            raise ValueError(f"anchor sizes need one value per level P3..P7 (5), got {list(anchor_sizes)}")
        self.num_classes = num_classes
        self.backbone = backbone
        self.fpn = FPN(backbone.out_channels, fpn_channels, p6_from)
        self.anchors = AnchorGrid(anchor_sizes, anchor_scales, anchor_ratios)
        num_anchors = self.anchors.num_anchors_per_location
        cls_bias = -math.log((1 - prior) / prior)
        self.cls_head = Subnet(
            fpn_channels, head_channels, head_depth, head_norm, num_anchors, num_classes, cls_bias
        )
        self.box_head = Subnet(fpn_channels, head_channels, head_depth, head_norm, num_anchors, 4, 0.0)
        self.box_coder = BoxCoder(box_coder_weights)
        self.matcher = BatchMatcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.cls_loss, self.alpha, self.gamma = cls_loss, alpha, gamma
        self.ohem_neg_pos_ratio, self.ohem_budget = float(ohem_neg_pos_ratio), int(ohem_budget)
        self.ohem_nms = float(ohem_nms)
        self.box_loss, self.smooth_l1_beta, self.box_weight = box_loss, smooth_l1_beta, box_weight
        self.loss_normalize = loss_normalize
        self.score_thresh, self.topk_candidates = score_thresh, topk_candidates
        self.nms_thresh, self.detections_per_img = nms_thresh, detections_per_img
        self.channels_last = channels_last
        self.normalizer = ImageNormalizer()
        self.train()

    def train(self, mode: bool = True) -> RetinaNet:
        """Switch mode; with `channels_last`, eval runs NHWC (faster oneDNN forward on CPU) and training NCHW
        (NHWC convolution backward measured ~1.4x slower on the 2-core CPU, see docs/benchmarks.md)."""
        super().train(mode)
        fmt = torch.channels_last if self.channels_last and not mode else torch.contiguous_format
        for module in self.modules():
            if isinstance(module, nn.Conv2d) and not module.weight.is_contiguous(memory_format=fmt):
                module.weight.data = module.weight.data.contiguous(memory_format=fmt)
        return self

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (or 0-255 float) images [B, 3, H, W] -> ImageNet-normalized float on the model's device."""
        x = self.normalizer(images)
        return (
            x.contiguous(memory_format=torch.channels_last) if self.channels_last and not self.training else x
        )

    def head_outputs(
        self, images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
        """Class logits [B, A, C], box deltas [B, A, 4], anchors [A, 4] and anchors per level."""
        feats = self.fpn(self.backbone(self.normalize(images)))
        cls_logits = self.cls_head(feats)
        box_deltas = self.box_head(feats)
        grids = [tuple(f.shape[-2:]) for f in feats]
        anchors, per_level = self.anchors.grid(
            tuple(images.shape[-2:]), grids, box_deltas.device, box_deltas.dtype
        )
        return cls_logits, box_deltas, anchors, per_level

    def forward(
        self, images: torch.Tensor, targets: Sequence[dict[str, torch.Tensor]] | None = None
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """Training: dict of losses (needs targets). Eval: list of dicts boxes [K, 4], scores, labels."""
        if self.training and targets is None:
            raise ValueError("RetinaNet in training mode needs targets")
        cls_logits, box_deltas, anchors, per_level = self.head_outputs(images)
        if self.training:
            assert targets is not None
            if len(targets) != images.shape[0]:
                raise ValueError(f"got {len(targets)} targets for {images.shape[0]} images")
            return self.compute_loss(cls_logits, box_deltas, anchors, targets)
        return self.postprocess(cls_logits, box_deltas, anchors, per_level, tuple(images.shape[-2:]))

    def classification_targets(self, matches: torch.Tensor, gt_labels: torch.Tensor) -> torch.Tensor:
        """Per-anchor integer labels [B, A]: class 0..C-1, -1 background, -2 ignore."""
        fg_label = gt_labels.gather(1, matches.clamp(min=0)) - 1 if gt_labels.shape[1] else matches
        return torch.where(matches >= 0, fg_label, matches)

    def compute_loss(
        self,
        cls_logits: torch.Tensor,
        box_deltas: torch.Tensor,
        anchors: torch.Tensor,
        targets: Sequence[dict[str, torch.Tensor]],
    ) -> dict[str, torch.Tensor]:
        """Focal (or OHEM) classification + box loss, both normalized by foreground anchors (>= 1): the
        batch's count, or with `loss_normalize="image"` each image's own count, averaged over the images."""
        batch, num_anchors, num_classes = cls_logits.shape
        gt_boxes, gt_labels, valid = pad_targets(targets, self.num_classes, cls_logits.device)
        matches = self.matcher(gt_boxes, valid, anchors)
        labels = self.classification_targets(matches, gt_labels)
        foreground = matches >= 0
        if self.cls_loss == "ohem":
            labels = self.ohem_select(cls_logits.detach().reshape(-1, num_classes), labels, anchors)
            alpha, gamma = None, 0.0
        else:
            alpha, gamma = self.alpha, self.gamma
        fg_b, fg_a = torch.nonzero(foreground, as_tuple=True)
        if gt_boxes.shape[1]:
            matched_boxes = gt_boxes[fg_b, matches[fg_b, fg_a]]
        else:
            matched_boxes = box_deltas.new_zeros((0, 4))

        def losses(images: slice | int, rows: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
            """Summed classification and box loss of `images` (their foreground anchors: `rows`)."""
            cls = sigmoid_focal_loss(
                cls_logits[images].reshape(-1, num_classes), labels[images].reshape(-1), alpha, gamma
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

        if self.loss_normalize == "batch":
            cls, box = losses(slice(None), slice(None))
            normalizer = foreground.sum().clamp(min=1).float()
            return {"classification": cls / normalizer, "bbox_regression": box / normalizer}
        per_image = [losses(i, fg_b == i) for i in range(batch)]
        normalizer = foreground.sum(dim=1).clamp(min=1).float() * batch
        cls = sum(c / n for (c, _), n in zip(per_image, normalizer, strict=True))
        box = sum(b / n for (_, b), n in zip(per_image, normalizer, strict=True))
        return {"classification": cls, "bbox_regression": box}

    @torch.no_grad()
    def ohem_select(self, logits: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Online hard example mining: keep the highest-CE anchors per image, mark the rest ignored (-2).

        With `ohem_budget > 0` each image keeps its `budget` hardest non-ignored anchors (positive or
        negative); otherwise all positives and at most `ohem_neg_pos_ratio` times as many of the hardest
        negatives (at least as many as one positive allows, so images without objects still train).
        With `ohem_nms > 0` they are picked after an NMS over the candidates' `anchors` [A, 4] (the paper's
        OHEM: one pick per hard spot instead of a cluster of overlapping anchors on it).
        """
        batch, num_anchors = labels.shape
        ce = sigmoid_focal_loss(logits, labels.reshape(-1), alpha=None, gamma=0.0, reduction="none")
        ce = ce.sum(dim=1).view(batch, num_anchors)
        positive, negative = labels >= 0, labels == BACKGROUND
        if self.ohem_budget > 0:
            candidates = positive | negative
            keep_count = torch.full((batch,), self.ohem_budget, device=labels.device)
        else:
            candidates = negative
            num_pos = positive.sum(dim=1)
            keep_count = (self.ohem_neg_pos_ratio * num_pos.clamp(min=1)).floor().long()
        score = torch.where(candidates, ce, torch.full_like(ce, -1.0))
        if self.ohem_nms > 0:
            keep = torch.zeros_like(candidates)
            for i in range(batch):
                keep[i, hardest_after_nms(score[i], anchors, int(keep_count[i]), self.ohem_nms)] = True
        else:
            order = score.argsort(dim=1, descending=True)
            rank = torch.empty_like(order)
            rank.scatter_(1, order, torch.arange(num_anchors, device=labels.device).expand(batch, -1))
            keep = candidates & (rank < keep_count[:, None])
        if self.ohem_budget <= 0:
            keep = keep | positive
        return torch.where(keep, labels, torch.full_like(labels, IGNORE))

    @torch.no_grad()
    def postprocess(
        self,
        cls_logits: torch.Tensor,
        box_deltas: torch.Tensor,
        anchors: torch.Tensor,
        per_level: Sequence[int],
        image_size: tuple[int, int],
    ) -> list[dict[str, torch.Tensor]]:
        """Per-level top-k above the score threshold, decode, clip, NMS per image over classes, top-N."""
        batch, _, num_classes = cls_logits.shape
        device = cls_logits.device
        scores_l, anchor_l, class_l = [], [], []
        start = 0
        for count in per_level:
            logits = cls_logits[:, start : start + count].reshape(batch, -1)
            top_logits, idx = logits.topk(min(self.topk_candidates, logits.shape[1]), dim=1)
            scores_l.append(torch.sigmoid(top_logits))
            anchor_l.append(torch.div(idx, num_classes, rounding_mode="floor") + start)
            class_l.append(idx % num_classes)
            start += count
        scores, anchor_idx, classes = torch.cat(scores_l, 1), torch.cat(anchor_l, 1), torch.cat(class_l, 1)
        keep = scores > self.score_thresh  # [B, K]
        image_idx = torch.arange(batch, device=device)[:, None].expand_as(anchor_idx)[keep]
        anchor_idx, scores, classes = anchor_idx[keep], scores[keep], classes[keep]
        boxes = self.box_coder.decode(box_deltas[image_idx, anchor_idx].float(), anchors[anchor_idx].float())
        height, width = image_size
        boxes = torch.stack(
            (
                boxes[:, 0].clamp(0, width),
                boxes[:, 1].clamp(0, height),
                boxes[:, 2].clamp(0, width),
                boxes[:, 3].clamp(0, height),
            ),
            dim=1,
        )
        # NMS image by image, over its (class) groups. One NMS over the whole batch would grow with the square
        # of the batch's candidates, and past a size torchvision's batched_nms runs one kernel per (image,
        # class) group instead, each a device sync on a GPU. `image_idx` is sorted (row-major `keep`).
        counts = torch.bincount(image_idx, minlength=batch).tolist()
        detections = []
        for b, s, c in zip(boxes.split(counts), scores.split(counts), classes.split(counts), strict=True):
            kept = batched_nms(b, s, c, self.nms_thresh)[: self.detections_per_img]  # by score, desc
            detections.append({"boxes": b[kept], "scores": s[kept], "labels": c[kept] + 1})
        return detections
