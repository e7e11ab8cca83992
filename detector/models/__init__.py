"""Detectors behind torchvision's interface: `build_model(model_cfg, num_classes)` -> RetinaNet|FasterRCNN
(or torchvision's own RetinaNet, the reference implementation, with `name: torchvision_retinanet`).

`model_cfg` is the `model` section of a config (duck-typed; see detector/config.py ModelConfig).
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from detector.models.anchors import AnchorGrid
from detector.models.atss import ATSSMatcher
from detector.models.backbones import build_backbone
from detector.models.box_coder import BoxCoder
from detector.models.faster_rcnn import FasterRCNNDetector
from detector.models.fpn import FPN
from detector.models.matcher import ASSIGNERS, BatchMatcher
from detector.models.retinanet import DetectionSettings, RetinaNet, Subnet
from detector.models.retinanet_loss import CLS_LOSSES, OHEMSampler, RetinaNetLoss

__all__ = [
    "FasterRCNNDetector",
    "RetinaNet",
    "build_backbone",
    "build_matcher",
    "build_model",
    "build_retinanet",
    "build_retinanet_loss",
]


def _backbone(model_cfg: Any) -> nn.Module:
    b = model_cfg.backbone
    return build_backbone(b.name, b.pretrained, b.trainable_layers, b.mobilenet_c5_layer)


def build_matcher(model_cfg: Any) -> BatchMatcher | ATSSMatcher:
    """RetinaNet's anchor assigner from the `model` section: `assigner` iou (the IoU thresholds
    `fg_iou_thresh` / `bg_iou_thresh`) or atss (`atss_topk` candidates per level)."""
    assigner = getattr(model_cfg, "assigner", "iou")
    if assigner not in ASSIGNERS:
        raise ValueError(f"anchor assigner must be one of {ASSIGNERS}, got {assigner!r}")
    if assigner == "atss":
        return ATSSMatcher(int(model_cfg.atss_topk))
    return BatchMatcher(model_cfg.fg_iou_thresh, model_cfg.bg_iou_thresh, allow_low_quality_matches=True)


def build_retinanet_loss(model_cfg: Any, box_coder: BoxCoder) -> RetinaNetLoss:
    """The criterion from the `model` section: its `loss` settings and its anchor assigner."""
    loss = model_cfg.loss
    if loss.cls not in CLS_LOSSES:
        raise ValueError(f"classification loss must be one of {CLS_LOSSES}, got {loss.cls!r}")
    ohem = None
    if loss.cls == "ohem":
        ohem = OHEMSampler(float(loss.ohem_neg_pos_ratio), int(loss.ohem_budget), float(loss.ohem_nms))
    return RetinaNetLoss(
        build_matcher(model_cfg),
        box_coder,
        alpha=loss.alpha,
        gamma=loss.gamma,
        ohem=ohem,
        box_loss=loss.box,
        smooth_l1_beta=loss.smooth_l1_beta,
        box_weight=loss.box_weight,
        normalize=loss.normalize,
    )


def build_retinanet(model_cfg: Any, num_classes: int) -> RetinaNet:
    """RetinaNet from the `model` config section: backbone, FPN, heads, anchors, box coder, loss."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    head, a, loss = model_cfg.head, model_cfg.anchors, model_cfg.loss
    if len(a.sizes) != 5:
        raise ValueError(f"anchor sizes need one value per level P3..P7 (5), got {list(a.sizes)}")
    if not 0.0 < loss.prior < 1.0:
        raise ValueError(f"classifier prior must be in (0, 1), got {loss.prior}")
    backbone = _backbone(model_cfg)
    fpn = FPN(backbone.out_channels, model_cfg.fpn.channels, model_cfg.fpn.p6_from)
    anchors = AnchorGrid(list(a.sizes), list(a.scales), list(a.ratios))
    per_location = anchors.num_anchors_per_location
    channels = model_cfg.fpn.channels
    cls_bias = -math.log((1 - loss.prior) / loss.prior)  # every anchor starts at p = prior
    cls_head = Subnet(channels, head.channels, head.depth, head.norm, per_location, num_classes, cls_bias)
    box_head = Subnet(channels, head.channels, head.depth, head.norm, per_location, 4, 0.0)
    box_coder = BoxCoder(list(model_cfg.box_coder_weights))
    detection = DetectionSettings(
        score_thresh=model_cfg.score_thresh,
        topk_candidates=model_cfg.topk_candidates,
        nms_thresh=model_cfg.nms_thresh,
        detections_per_img=model_cfg.detections_per_img,
    )
    return RetinaNet(
        backbone,
        fpn,
        cls_head,
        box_head,
        anchors,
        box_coder,
        build_retinanet_loss(model_cfg, box_coder),
        detection,
        channels_last=getattr(model_cfg, "channels_last", True),
    )


def build_model(model_cfg: Any, num_classes: int) -> nn.Module:
    """The detector named by `model_cfg.name` (retinanet | faster_rcnn | torchvision_retinanet)."""
    if model_cfg.name == "retinanet":
        return build_retinanet(model_cfg, num_classes)
    if model_cfg.name == "torchvision_retinanet":
        from detector.models.torchvision_retinanet import build_from_config

        return build_from_config(model_cfg, num_classes)
    if model_cfg.name == "faster_rcnn":
        return FasterRCNNDetector(
            _backbone(model_cfg),
            num_classes,
            fpn_channels=model_cfg.fpn.channels,
            p6_from=model_cfg.fpn.p6_from,
            anchor_sizes=list(model_cfg.anchors.sizes),
            anchor_ratios=list(model_cfg.anchors.ratios),
            score_thresh=model_cfg.score_thresh,
            nms_thresh=model_cfg.nms_thresh,
            detections_per_img=model_cfg.detections_per_img,
        )
    raise ValueError(
        f"unknown model name {model_cfg.name!r}; "
        "expected 'retinanet', 'faster_rcnn' or 'torchvision_retinanet'"
    )
