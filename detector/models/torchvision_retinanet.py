"""torchvision's own RetinaNet (the reference implementation) on our backbone taps, anchors and head shape.

`build_torchvision_retinanet` returns the plain `torchvision.models.detection.RetinaNet` (torchvision's FPN,
head, per-image loss and post-processing; torchvision's resizing transform set to the input size), as used by
`tools/bench_model.py`. `TorchvisionRetinaNet` puts it behind our detector interface (uint8 letterboxed images
`[B, 3, S, S]`, labels 1..C), so it trains through the same Lightning loop and is evaluated like ours.

Labels: torchvision's RetinaNet has no background logit (a label indexes its one-hot target), so it is built
with C classes and fed labels 0..C-1; the wrapper shifts our 1..C in and its detections back out.
Its classification loss is fixed (focal, alpha 0.25, gamma 2); its smooth-L1 box loss uses beta 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
from torch import nn
from torchvision.models.detection import RetinaNet as TVRetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import Conv2dNormActivation

from detector.models.backbones import build_backbone
from detector.models.faster_rcnn import PassThroughTransform
from detector.models.normalize import ImageNormalizer

__all__ = ["TorchvisionRetinaNet", "build_torchvision_retinanet"]

DEFAULT_SIZES = (32.0, 64.0, 128.0, 256.0, 512.0)
DEFAULT_SCALES = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
DEFAULT_RATIOS = (0.5, 1.0, 2.0)
TV_BOX_LOSSES = ("l1", "smooth_l1", "giou")


def _tower(in_channels: int, channels: int, depth: int, norm: str) -> nn.Sequential:
    """torchvision's head tower (Conv2dNormActivation blocks) with our width, depth and norm choice."""
    norm_layer = partial(nn.GroupNorm, math.gcd(32, channels)) if norm == "group" else None
    return nn.Sequential(
        *[
            Conv2dNormActivation(in_channels if i == 0 else channels, channels, norm_layer=norm_layer)
            for i in range(depth)
        ]
    )


def _reshape_head(model: TVRetinaNet, in_channels: int, channels: int, depth: int, norm: str, prior: float):
    """Replace torchvision's fixed 4 x `in_channels` towers by `depth` x `channels` ones, initialized as
    torchvision does (normal std 0.01, zero bias, classifier bias at the prior)."""
    cls_head, box_head = model.head.classification_head, model.head.regression_head
    num_anchors, num_classes = cls_head.num_anchors, cls_head.num_classes
    last = channels if depth else in_channels
    cls_head.conv = _tower(in_channels, channels, depth, norm)
    box_head.conv = _tower(in_channels, channels, depth, norm)
    cls_head.cls_logits = nn.Conv2d(last, num_anchors * num_classes, 3, padding=1)
    box_head.bbox_reg = nn.Conv2d(last, num_anchors * 4, 3, padding=1)
    for head in (cls_head, box_head):
        for m in head.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0.0)
    nn.init.constant_(cls_head.cls_logits.bias, -math.log((1 - prior) / prior))


def build_torchvision_retinanet(
    num_classes: int,
    size: int,
    channels: int = 256,
    *,
    backbone: str = "mobilenet_v2",
    pretrained: bool = False,
    trainable_layers: int = 3,
    mobilenet_c5_layer: int = 18,
    p6_from: str = "p5",
    head_channels: int | None = None,
    head_depth: int = 4,
    head_norm: str = "none",
    prior: float = 0.01,
    anchor_sizes: Sequence[float] = DEFAULT_SIZES,
    anchor_scales: Sequence[float] = DEFAULT_SCALES,
    anchor_ratios: Sequence[float] = DEFAULT_RATIOS,
    box_loss: str = "l1",
    **detector_kwargs: float,
) -> TVRetinaNet:
    """torchvision's RetinaNet on our backbone's C3-C5 taps (plain FrozenBatchNorm, not folded) and
    torchvision's FeaturePyramidNetwork with P6/P7 (`channels` wide) and our anchors (sizes x scales x
    ratios per level).

    Its own transform resizes to `size` without padding (`size_divisible` 1). `detector_kwargs` go to
    torchvision's RetinaNet (score_thresh, nms_thresh, detections_per_img, fg/bg_iou_thresh, topk_candidates).
    Head defaults (4 convs, `channels` wide, no norm) are torchvision's; other shapes rebuild the towers.
    """
    if p6_from not in ("c5", "p5"):
        raise ValueError(f"p6_from must be 'c5' or 'p5', got {p6_from!r}")
    if head_norm not in ("none", "group"):
        raise ValueError(f"head norm must be 'none' or 'group', got {head_norm!r}")
    if box_loss not in TV_BOX_LOSSES:
        raise ValueError(f"torchvision's RetinaNet box loss must be one of {TV_BOX_LOSSES}, got {box_loss!r}")
    if len(anchor_sizes) != 5:
        raise ValueError(f"anchor sizes need one value per level P3..P7 (5), got {list(anchor_sizes)}")
    body = build_backbone(backbone, pretrained, trainable_layers, mobilenet_c5_layer, fold_bn=False)
    c5 = body.out_channels[-1]
    n = len(body.stages)
    fpn_body = BackboneWithFPN(
        nn.Sequential(*body.stages),
        {str(n - 3): "0", str(n - 2): "1", str(n - 1): "2"},
        list(body.out_channels),
        channels,
        extra_blocks=LastLevelP6P7(channels if p6_from == "p5" else c5, channels),
    )
    anchors = AnchorGenerator(
        tuple(tuple(float(s) * k for k in anchor_scales) for s in anchor_sizes),
        (tuple(float(r) for r in anchor_ratios),) * len(anchor_sizes),
    )
    detector_kwargs.setdefault("detections_per_img", 100)  # our default (torchvision's is 300)
    model = TVRetinaNet(
        fpn_body, num_classes, min_size=size, max_size=size, anchor_generator=anchors, **detector_kwargs
    )
    model.transform.size_divisible = 1  # no padding: both models see the same S x S input
    head_channels = channels if head_channels is None else head_channels
    default_head = head_channels == channels and head_depth == 4 and head_norm == "none"
    if not default_head or prior != 0.01:
        _reshape_head(model, channels, head_channels, head_depth, head_norm, prior)
    model.head.regression_head._loss_type = box_loss
    return model


class TorchvisionRetinaNet(nn.Module):
    """torchvision's RetinaNet behind our interface: uint8 [B, 3, S, S] in, labels 1..C in and out.

    We normalize (ImageNet mean/std) and bypass torchvision's resizing (the data pipeline letterboxed
    already), so boxes come back in the input's pixel frame, as from our RetinaNet.
    """

    def __init__(self, detector: TVRetinaNet, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.detector = detector
        self.detector.transform = PassThroughTransform()
        self.normalizer = ImageNormalizer()

    def forward(
        self, images: torch.Tensor, targets: Sequence[dict[str, torch.Tensor]] | None = None
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """Training: {classification, bbox_regression}. Eval: list of dicts boxes [K, 4], scores, labels."""
        if self.training and targets is None:
            raise ValueError("torchvision RetinaNet in training mode needs targets")
        x = self.normalizer(images)
        tv_targets = None
        if targets is not None:
            if len(targets) != images.shape[0]:
                raise ValueError(f"got {len(targets)} targets for {images.shape[0]} images")
            tv_targets = []
            for i, t in enumerate(targets):
                labels = t["labels"].to(x.device, torch.int64)
                if labels.numel() and (int(labels.min()) < 1 or int(labels.max()) > self.num_classes):
                    raise ValueError(
                        f"target {i}: labels must be in 1..{self.num_classes}, got {labels.tolist()}"
                    )
                tv_targets.append({"boxes": t["boxes"].to(x.device, torch.float32), "labels": labels - 1})
        out = self.detector(x, tv_targets) if self.training else self.detector(x)
        if self.training:
            return out
        return [{"boxes": d["boxes"], "scores": d["scores"], "labels": d["labels"] + 1} for d in out]


def build_from_config(model_cfg, num_classes: int) -> TorchvisionRetinaNet:  # noqa: ANN001 - duck-typed section
    """`TorchvisionRetinaNet` from the `model` config section (`name: torchvision_retinanet`).

    Settings torchvision cannot express raise ValueError naming the key: its focal loss is fixed at alpha
    0.25, gamma 2 (no OHEM), its smooth-L1 uses beta 1, and it matches anchors by IoU (no ATSS).
    """
    loss = model_cfg.loss
    problems = []
    if loss.cls != "focal" or loss.alpha != 0.25 or loss.gamma != 2.0:
        problems.append(
            f"model.loss.cls/alpha/gamma = {loss.cls}/{loss.alpha}/{loss.gamma}: torchvision's RetinaNet "
            "has a fixed focal loss (focal/0.25/2.0)"
        )
    if loss.box == "smooth_l1" and abs(loss.smooth_l1_beta - 1.0) > 1e-9:
        problems.append(
            f"model.loss.smooth_l1_beta = {loss.smooth_l1_beta}: torchvision's smooth-L1 uses beta 1.0 "
            "(set it to 1.0, or model.loss.box=l1)"
        )
    if loss.box_weight != 1.0:
        problems.append(f"model.loss.box_weight = {loss.box_weight}: torchvision's RetinaNet uses 1.0")
    if getattr(model_cfg, "assigner", "iou") != "iou":
        problems.append(
            f"model.assigner = {model_cfg.assigner}: torchvision's RetinaNet matches by IoU only (set iou)"
        )
    if list(model_cfg.box_coder_weights) != [1.0, 1.0, 1.0, 1.0]:
        problems.append("model.box_coder_weights: torchvision's RetinaNet uses [1, 1, 1, 1]")
    if problems:
        raise ValueError("torchvision_retinanet: " + "; ".join(problems))
    b, head, anchors = model_cfg.backbone, model_cfg.head, model_cfg.anchors
    detector = build_torchvision_retinanet(
        num_classes,
        size=1,  # its resizing transform is replaced by the pass-through one
        channels=model_cfg.fpn.channels,
        backbone=b.name,
        pretrained=b.pretrained,
        trainable_layers=b.trainable_layers,
        mobilenet_c5_layer=b.mobilenet_c5_layer,
        p6_from=model_cfg.fpn.p6_from,
        head_channels=head.channels,
        head_depth=head.depth,
        head_norm=head.norm,
        prior=loss.prior,
        anchor_sizes=list(anchors.sizes),
        anchor_scales=list(anchors.scales),
        anchor_ratios=list(anchors.ratios),
        box_loss=loss.box,
        fg_iou_thresh=model_cfg.fg_iou_thresh,
        bg_iou_thresh=model_cfg.bg_iou_thresh,
        score_thresh=model_cfg.score_thresh,
        topk_candidates=model_cfg.topk_candidates,
        nms_thresh=model_cfg.nms_thresh,
        detections_per_img=model_cfg.detections_per_img,
    )
    return TorchvisionRetinaNet(detector, num_classes)
