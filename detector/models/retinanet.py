"""RetinaNet: backbone + FPN + class/box subnets, assembled from its parts, with batched post-processing.

The criterion (matching, focal or OHEM classification, box loss) is its own object, `RetinaNetLoss`. After
the heads, the batch stays whole: per-level top-k over the flattened scores of every image at once, one
decode, then one class-wise NMS per image (the candidate selection is shared with the ONNX export).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops import batched_nms

from detector.models.anchors import AnchorGrid
from detector.models.backbones import Backbone
from detector.models.box_coder import BoxCoder
from detector.models.fpn import FPN
from detector.models.normalize import ImageNormalizer
from detector.models.retinanet_loss import RetinaNetLoss

HEAD_NORMS = ("none", "group")


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
        if norm not in HEAD_NORMS:
            raise ValueError(f"head norm must be one of {HEAD_NORMS}, got {norm!r}")
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


@dataclass(frozen=True)
class DetectionSettings:
    """Post-processing: candidates per level, score threshold, NMS IoU, detections kept per image."""

    score_thresh: float = 0.05
    topk_candidates: int = 1000
    nms_thresh: float = 0.5
    detections_per_img: int = 100


class RetinaNet(nn.Module):
    """One-stage detector with torchvision's interface; images uint8 [B, 3, H, W], normalized inside.

    Use `.train()` / `.eval()` (not `.training = ...`) to switch modes: they also switch the memory format.
    """

    def __init__(
        self,
        backbone: Backbone,
        fpn: FPN,
        cls_head: Subnet,
        box_head: Subnet,
        anchors: AnchorGrid,
        box_coder: BoxCoder,
        loss: RetinaNetLoss,
        detection: DetectionSettings | None = None,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        if cls_head.outputs < 1 or box_head.outputs != 4:
            raise ValueError(
                f"the class head needs >= 1 output per anchor and the box head 4, got {cls_head.outputs}, "
                f"{box_head.outputs}"
            )
        self.num_classes = cls_head.outputs
        self.backbone, self.fpn, self.cls_head, self.box_head = backbone, fpn, cls_head, box_head
        self.anchors, self.box_coder, self.loss = anchors, box_coder, loss
        self.detection = detection or DetectionSettings()
        self.channels_last = channels_last
        self.normalizer = ImageNormalizer()
        self.train()

    # the post-processing settings, read by the ONNX export and the tools
    score_thresh = property(lambda self: self.detection.score_thresh)
    nms_thresh = property(lambda self: self.detection.nms_thresh)
    topk_candidates = property(lambda self: self.detection.topk_candidates)
    detections_per_img = property(lambda self: self.detection.detections_per_img)

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
            return self.loss(cls_logits, box_deltas, anchors, targets, per_level)
        return self.postprocess(cls_logits, box_deltas, anchors, per_level, tuple(images.shape[-2:]))

    def candidates(
        self,
        cls_logits: torch.Tensor,
        box_deltas: torch.Tensor,
        anchors: torch.Tensor,
        per_level: Sequence[int],
        image_size: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The fixed-size candidates of every image: the top `topk_candidates` (anchor, class) scores per
        level, their boxes decoded and clipped to the image. (scores [B, K], boxes [B, K, 4], classes [B, K]
        0-based); shared by `postprocess` and the ONNX export, so both select and decode alike."""
        batch, num_classes = cls_logits.shape[0], self.num_classes
        scores_l, anchor_l, class_l = [], [], []
        start = 0
        for count in per_level:
            logits = cls_logits[:, start : start + count].reshape(batch, count * num_classes)
            top_logits, idx = logits.topk(min(self.topk_candidates, count * num_classes), dim=1)
            scores_l.append(torch.sigmoid(top_logits))
            anchor_l.append(torch.div(idx, num_classes, rounding_mode="floor") + start)
            class_l.append(idx % num_classes)
            start += count
        scores, anchor_idx, classes = torch.cat(scores_l, 1), torch.cat(anchor_l, 1), torch.cat(class_l, 1)
        deltas = box_deltas.gather(1, anchor_idx.unsqueeze(-1).expand(-1, -1, 4))
        boxes = self.box_coder.decode(deltas.float(), anchors[anchor_idx].float())
        height, width = image_size
        boxes = torch.stack(
            (
                boxes[..., 0].clamp(0, width),
                boxes[..., 1].clamp(0, height),
                boxes[..., 2].clamp(0, width),
                boxes[..., 3].clamp(0, height),
            ),
            dim=-1,
        )
        return scores, boxes, classes

    @torch.no_grad()
    def postprocess(
        self,
        cls_logits: torch.Tensor,
        box_deltas: torch.Tensor,
        anchors: torch.Tensor,
        per_level: Sequence[int],
        image_size: tuple[int, int],
    ) -> list[dict[str, torch.Tensor]]:
        """Candidates above the score threshold, then a class-wise NMS per image and its top detections."""
        scores, boxes, classes = self.candidates(cls_logits, box_deltas, anchors, per_level, image_size)
        keep = scores > self.score_thresh  # [B, K]
        # NMS image by image, over its (class) groups. One NMS over the whole batch would grow with the square
        # of the batch's candidates, and past a size torchvision's batched_nms runs one kernel per (image,
        # class) group instead, each a device sync on a GPU.
        counts = keep.sum(dim=1).tolist()
        boxes, scores, classes = boxes[keep], scores[keep], classes[keep]  # row-major: image by image
        detections = []
        for b, s, c in zip(boxes.split(counts), scores.split(counts), classes.split(counts), strict=True):
            kept = batched_nms(b, s, c, self.nms_thresh)[: self.detections_per_img]  # by score, desc
            detections.append({"boxes": b[kept], "scores": s[kept], "labels": c[kept] + 1})
        return detections
