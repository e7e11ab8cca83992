"""Detectors behind torchvision's interface: `build_model(model_cfg, num_classes)` -> RetinaNet|FasterRCNN
(or torchvision's own RetinaNet, the reference implementation, with `name: torchvision_retinanet`).

`model_cfg` is the `model` section of a config (duck-typed; see detector/config.py ModelConfig).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from detector.models.backbones import build_backbone
from detector.models.faster_rcnn import FasterRCNNDetector
from detector.models.retinanet import RetinaNet

__all__ = ["FasterRCNNDetector", "RetinaNet", "build_backbone", "build_model", "build_retinanet"]


def _backbone(model_cfg: Any) -> nn.Module:
    b = model_cfg.backbone
    return build_backbone(b.name, b.pretrained, b.trainable_layers, b.mobilenet_c5_layer)


def build_retinanet(model_cfg: Any, num_classes: int) -> RetinaNet:
    """RetinaNet from the `model` config section."""
    loss, head, anchors = model_cfg.loss, model_cfg.head, model_cfg.anchors
    return RetinaNet(
        _backbone(model_cfg),
        num_classes,
        fpn_channels=model_cfg.fpn.channels,
        p6_from=model_cfg.fpn.p6_from,
        head_channels=head.channels,
        head_depth=head.depth,
        head_norm=head.norm,
        anchor_sizes=list(anchors.sizes),
        anchor_scales=list(anchors.scales),
        anchor_ratios=list(anchors.ratios),
        cls_loss=loss.cls,
        alpha=loss.alpha,
        gamma=loss.gamma,
        prior=loss.prior,
        ohem_neg_pos_ratio=loss.ohem_neg_pos_ratio,
        ohem_budget=loss.ohem_budget,
        ohem_nms=loss.ohem_nms,
        box_loss=loss.box,
        smooth_l1_beta=loss.smooth_l1_beta,
        box_weight=loss.box_weight,
        loss_normalize=loss.normalize,
        fg_iou_thresh=model_cfg.fg_iou_thresh,
        bg_iou_thresh=model_cfg.bg_iou_thresh,
        score_thresh=model_cfg.score_thresh,
        topk_candidates=model_cfg.topk_candidates,
        nms_thresh=model_cfg.nms_thresh,
        detections_per_img=model_cfg.detections_per_img,
        box_coder_weights=list(model_cfg.box_coder_weights),
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
