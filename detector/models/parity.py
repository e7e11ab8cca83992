"""Our RetinaNet next to torchvision's with identical architecture and weights: build both, copy our weights
into torchvision's, give the heads realistic outputs, and measure how far losses and detections differ.

Used by `tools/bench_model.py` (speed side by side) and the parity tests. Torch and torchvision only, so it
runs on a bare GPU box.
"""

from __future__ import annotations

import math

import torch
from torchvision.models.detection import RetinaNet as TVRetinaNet
from torchvision.ops import box_iou

from detector.models.anchors import AnchorGrid
from detector.models.backbones import build_backbone
from detector.models.box_coder import BoxCoder
from detector.models.faster_rcnn import FasterRCNNDetector
from detector.models.fpn import FPN
from detector.models.matcher import BatchMatcher
from detector.models.retinanet import RetinaNet, Subnet
from detector.models.retinanet_loss import RetinaNetLoss

__all__ = [
    "build_faster_rcnn",
    "build_ours",
    "check_equal",
    "copy_weights",
    "make_heads_fire",
    "random_batch",
]

SIZES = (32.0, 64.0, 128.0, 256.0, 512.0)
SCALES = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
RATIOS = (0.5, 1.0, 2.0)


def build_ours(num_classes: int, pretrained: bool, channels: int = 256) -> RetinaNet:
    """Our RetinaNet in the benchmark's settings, from its parts (no config: torch and torchvision only):
    MobileNetV2-FPN `channels` wide, 4-conv heads, the default anchors, L1 box loss."""
    backbone = build_backbone(
        "mobilenet_v2", pretrained=pretrained, trainable_layers=3, mobilenet_c5_layer=18
    )
    fpn = FPN(backbone.out_channels, channels, "p5")
    anchors = AnchorGrid(SIZES, SCALES, RATIOS)
    per_location = anchors.num_anchors_per_location
    prior_bias = -math.log((1 - 0.01) / 0.01)
    cls_head = Subnet(channels, channels, 4, "none", per_location, num_classes, prior_bias)
    box_head = Subnet(channels, channels, 4, "none", per_location, 4, 0.0)
    coder = BoxCoder()
    loss = RetinaNetLoss(BatchMatcher(0.5, 0.4), coder, box_loss="l1")
    return RetinaNet(backbone, fpn, cls_head, box_head, anchors, coder, loss)


def build_faster_rcnn(ours: RetinaNet, num_classes: int, channels: int = 256) -> FasterRCNNDetector:
    """Our Faster R-CNN baseline on the same backbone architecture and weights, FPN width and anchor sizes."""
    backbone = build_backbone("mobilenet_v2", pretrained=False, trainable_layers=3, mobilenet_c5_layer=18)
    backbone.load_state_dict(ours.backbone.state_dict())
    return FasterRCNNDetector(
        backbone, num_classes, fpn_channels=channels, anchor_sizes=SIZES, anchor_ratios=RATIOS
    )


def copy_weights(ours: RetinaNet, tv: TVRetinaNet) -> None:
    """Copy our parameters and buffers into torchvision's model, part by part in registration order."""
    src, dst = ours.state_dict(), tv.state_dict()
    pairs = [
        ("backbone.", "backbone.body."),
        ("fpn.", "backbone.fpn."),
        ("cls_head.", "head.classification_head."),
        ("box_head.", "head.regression_head."),
    ]
    new = {}
    for ours_prefix, tv_prefix in pairs:
        a = [k for k in src if k.startswith(ours_prefix)]
        b = [k for k in dst if k.startswith(tv_prefix)]
        if len(a) != len(b):
            raise RuntimeError(f"{ours_prefix}: {len(a)} tensors in ours vs {len(b)} in torchvision's")
        for ka, kb in zip(a, b, strict=True):
            if src[ka].shape != dst[kb].shape:
                raise RuntimeError(
                    f"shape mismatch {ka} {tuple(src[ka].shape)} vs {kb} {tuple(dst[kb].shape)}"
                )
            new[kb] = src[ka]
    missing = set(dst) - set(new)
    if missing:
        raise RuntimeError(f"torchvision tensors not covered: {sorted(missing)[:5]}")
    tv.load_state_dict(new)


def make_heads_fire(model: RetinaNet) -> None:
    """Re-initialize the heads so scores vary (an untrained head scores every anchor alike, all ties)."""
    with torch.no_grad():
        for head, std in ((model.cls_head, 0.05), (model.box_head, 0.01)):
            for m in head.tower.modules():
                if isinstance(m, torch.nn.Conv2d):
                    torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            head.predictor.weight.normal_(0, std)
        model.cls_head.predictor.bias.fill_(-2.0)


def random_batch(
    batch: int, size: int, num_classes: int, gen: torch.Generator
) -> tuple[torch.Tensor, list[dict]]:
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=gen)
    targets = []
    for i in range(batch):
        n = 3 + 2 * i
        xy = torch.rand(n, 2, generator=gen) * size * 0.7
        wh = 16 + torch.rand(n, 2, generator=gen) * size * 0.3
        boxes = torch.cat([xy, (xy + wh).clamp(max=size - 1)], 1)
        labels = torch.randint(1, num_classes + 1, (n,), generator=gen)
        targets.append({"boxes": boxes, "labels": labels})
    return images, targets


def check_equal(
    ours: RetinaNet, tv: TVRetinaNet, images: torch.Tensor, targets: list[dict]
) -> dict[str, float]:
    """Max differences of losses and detections between the two models holding the same weights."""
    tv_images = list(images.float() / 255)
    tv_targets = [{"boxes": t["boxes"], "labels": t["labels"] - 1} for t in targets]
    ours.train()
    tv.train()
    with torch.no_grad():
        tv_loss = tv(tv_images, tv_targets)
        normalize, ours.loss.normalize = ours.loss.normalize, "image"  # torchvision's reduction
        try:
            ours_loss = ours(images, targets)
        finally:
            ours.loss.normalize = normalize
    diffs = [abs(float(ours_loss[k]) - float(tv_loss[k])) for k in ours_loss]
    loss_diff = float("nan") if any(d != d for d in diffs) else max(diffs)  # a NaN loss must show
    ours.eval()
    tv.eval()
    with torch.inference_mode():
        a, b = ours(images), tv(tv_images)
    counts = sum(len(x["scores"]) for x in a), sum(len(x["scores"]) for x in b)
    # detections with equal scores may come out in a different order: pair each of ours with the
    # torchvision detection of the same class that overlaps it most. A score perturbation (TF32 convolutions
    # on a GPU) can swap which candidate is an image's 100th, so also count the share of ours matched closely.
    min_iou, score_diff, matched = 1.0, 0.0, 0
    for x, y in zip(a, b, strict=True):
        if len(x["scores"]) == 0 or len(y["scores"]) == 0:
            min_iou = min_iou if len(x["scores"]) == len(y["scores"]) else 0.0
            continue
        iou = box_iou(x["boxes"], y["boxes"]) * (x["labels"][:, None] == y["labels"][None, :] + 1)
        best, j = iou.max(dim=1)
        min_iou = min(min_iou, float(best.min()))
        close = best >= 0.99
        matched += int(close.sum())
        if close.any():
            score_diff = max(score_diff, float((x["scores"] - y["scores"][j])[close].abs().max()))
    return {
        "losses_ours": {k: float(v) for k, v in ours_loss.items()},
        "losses_torchvision": {k: float(v) for k, v in tv_loss.items()},
        "loss_max_abs_diff": loss_diff,
        "matched_fraction_iou99": matched / max(counts[0], 1),
        "detections_ours": counts[0],
        "detections_torchvision": counts[1],
        "matched_min_iou": min_iou,
        "matched_score_max_abs_diff": score_diff,
    }
