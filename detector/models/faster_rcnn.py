"""The two-stage baseline: torchvision's FasterRCNN on our backbone + FPN, behind the RetinaNet interface.

Images arrive letterboxed uint8 [B, 3, S, S]; we normalize them like RetinaNet and bypass torchvision's
resizing transform. Target labels 1..C map to torchvision's `num_classes = C + 1` (0 is background) unchanged.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from detector.models.backbones import Backbone
from detector.models.fpn import FPN
from detector.models.normalize import ImageNormalizer

LEVEL_NAMES = ("0", "1", "2", "3", "pool")  # P3..P7; RoI pooling reads P3..P6


class BackboneFPN(nn.Module):
    """Backbone + FPN returning an OrderedDict of P3..P7, as torchvision's detectors expect."""

    def __init__(self, backbone: Backbone, channels: int, p6_from: str) -> None:
        super().__init__()
        self.body = backbone
        self.fpn = FPN(backbone.out_channels, channels, p6_from)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return OrderedDict(zip(LEVEL_NAMES, self.fpn(self.body(x)), strict=True))


class PassThroughTransform(GeneralizedRCNNTransform):
    """Batches already-normalized, already-letterboxed images without resizing; postprocess is identity."""

    def __init__(self) -> None:
        super().__init__(min_size=1, max_size=1, image_mean=[0.0] * 3, image_std=[1.0] * 3)

    def forward(self, images, targets=None):  # noqa: ANN001, ANN201 - torchvision's signature
        batch = images if isinstance(images, torch.Tensor) else torch.stack(list(images))
        sizes = [(int(batch.shape[-2]), int(batch.shape[-1]))] * batch.shape[0]
        targets = [dict(t) for t in targets] if targets is not None else None
        return ImageList(batch, sizes), targets

    def postprocess(self, result, image_shapes, original_image_sizes):  # noqa: ANN001, ANN201
        return result


class FasterRCNNDetector(nn.Module):
    """torchvision FasterRCNN (RPN anchors: one size per level P3..P7 x `anchor_ratios`), uint8 images in."""

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        fpn_channels: int = 256,
        p6_from: str = "p5",
        anchor_sizes: Sequence[float] = (32.0, 64.0, 128.0, 256.0, 512.0),
        anchor_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if len(anchor_sizes) != len(LEVEL_NAMES):
            raise ValueError(f"Faster R-CNN needs one anchor size per level P3..P7, got {list(anchor_sizes)}")
        self.num_classes = num_classes
        anchors = AnchorGenerator(
            tuple((float(s),) for s in anchor_sizes), (tuple(anchor_ratios),) * len(anchor_sizes)
        )
        self.detector = FasterRCNN(
            BackboneFPN(backbone, fpn_channels, p6_from),
            num_classes=num_classes + 1,
            rpn_anchor_generator=anchors,
            box_roi_pool=MultiScaleRoIAlign(
                featmap_names=list(LEVEL_NAMES[:4]), output_size=7, sampling_ratio=2
            ),
            box_score_thresh=score_thresh,
            box_nms_thresh=nms_thresh,
            box_detections_per_img=detections_per_img,
        )
        self.detector.transform = PassThroughTransform()
        self.normalizer = ImageNormalizer()

    @property
    def score_thresh(self) -> float:
        """Box-head score threshold (the RetinaNet interface's name for it)."""
        return float(self.detector.roi_heads.score_thresh)

    @property
    def nms_thresh(self) -> float:
        return float(self.detector.roi_heads.nms_thresh)

    @property
    def detections_per_img(self) -> int:
        return int(self.detector.roi_heads.detections_per_img)

    def forward(
        self, images: torch.Tensor, targets: Sequence[dict[str, torch.Tensor]] | None = None
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """Training: dict of RPN and box-head losses. Eval: list of dicts boxes, scores, labels (1..C)."""
        if self.training and targets is None:
            raise ValueError("Faster R-CNN in training mode needs targets")
        x = self.normalizer(images)
        if targets is not None:
            targets = [
                {
                    "boxes": t["boxes"].to(x.device, torch.float32),
                    "labels": t["labels"].to(x.device, torch.int64),
                }
                for t in targets
            ]
        return self.detector(x, targets)
