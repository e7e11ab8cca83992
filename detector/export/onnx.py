"""ONNX export of both detectors: one self-contained graph from uint8 pixels to final detections.

The RetinaNet graph holds normalization, backbone, FPN, heads, anchor decoding, the score threshold, per-class
NMS (the ONNX `NonMaxSuppression` op) and the top detections per image, so a client needs only onnxruntime.
The Faster R-CNN baseline exports through torchvision's own export-aware code (RPN proposals, RoIAlign, box
head, per-class NMS), with a fixed batch: torchvision's RPN and RoI heads loop over the images of the traced
batch. Both give the same inputs and outputs (D = `detections_per_img`, padded):

- `images`: uint8 [B, 3, S, S] RGB, letterboxed like `build_eval_transforms(S)` (S fixed at export time;
  B fixed, or dynamic for the RetinaNet);
- `boxes` float32 [B, D, 4] xyxy in the S x S frame, `scores` float32 [B, D] (descending),
  `labels` int64 [B, D] (1..C), `num_detections` int64 [B]: the first `num_detections[b]` rows of image b
  are its detections; the rest is padding with score 0, label 0 and a zero box.

Class names, input size, thresholds and the full config travel in the model's `metadata_props`
(`focaldet.*` keys, see `METADATA_KEYS`). onnx is imported lazily; without it `OnnxNotInstalledError` says
what to install. Running an export: `detector.export.runtime`; checking it: `detector.export.verify`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.ops import nms

from detector.data.letterbox import check_letterbox_size
from detector.models.faster_rcnn import FasterRCNNDetector
from detector.models.retinanet import RetinaNet

__all__ = [
    "INSTALL_HINT",
    "METADATA_KEYS",
    "OUTPUT_NAMES",
    "FasterRCNNExport",
    "OnnxNotInstalledError",
    "RetinaNetExport",
    "export_onnx",
    "require_onnx",
    "set_metadata",
    "unpad",
]

INSTALL_HINT = "pip install 'focaldet[onnx]'  (or: pip install onnx onnxruntime)"
OUTPUT_NAMES = ("boxes", "scores", "labels", "num_detections")
DEFAULT_OPSET = 17
METADATA_KEYS = (
    "focaldet.format",
    "focaldet.class_names",
    "focaldet.input_size",
    "focaldet.score_thresh",
    "focaldet.nms_thresh",
    "focaldet.detections_per_img",
    "focaldet.model",
    "focaldet.config",
)
FORMAT_VERSION = "focaldet-onnx-1"


class OnnxNotInstalledError(ImportError):
    """onnx / onnxruntime are missing; the message says how to install them."""


def require_onnx(*modules: str) -> None:
    """Raise `OnnxNotInstalledError` naming what to install unless every module in `modules` imports."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise OnnxNotInstalledError(f"{', '.join(missing)} not installed; install with: {INSTALL_HINT}")


class _NonMaxSuppression(torch.autograd.Function):
    """Eager version and ONNX symbolic of `NonMaxSuppression` (center_point_box=0).

    Inputs boxes [B, N, 4], scores [B, C, N]; returns selected [M, 3] int64 (batch, class, box) of the boxes
    kept by a greedy NMS per (batch, class) among those with score > `score_threshold`.
    """

    @staticmethod
    def forward(ctx, boxes, scores, max_per_class: int, iou_threshold: float, score_threshold: float):
        selected = []
        for b in range(scores.shape[0]):
            for c in range(scores.shape[1]):
                candidates = torch.nonzero(scores[b, c] > score_threshold).flatten()
                keep = candidates[nms(boxes[b, candidates], scores[b, c, candidates], iou_threshold)]
                keep = keep[:max_per_class]
                selected.append(
                    torch.stack((torch.full_like(keep, b), torch.full_like(keep, c), keep), dim=1)
                )
        if not selected:
            return torch.zeros((0, 3), dtype=torch.int64, device=boxes.device)
        return torch.cat(selected)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class: int, iou_threshold: float, score_threshold: float):
        max_out = g.op("Constant", value_t=torch.tensor([max_per_class], dtype=torch.int64))
        iou = g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float32))
        score = g.op("Constant", value_t=torch.tensor([score_threshold], dtype=torch.float32))
        return g.op("NonMaxSuppression", boxes, scores, max_out, iou, score, center_point_box_i=0)


class RetinaNetExport(nn.Module):
    """`RetinaNet` inference with the post-processing written in export-friendly, fixed-shape ops.

    The candidates come from `RetinaNet.candidates` (per-level top-k, sigmoid, decode, clip), as in
    `RetinaNet.postprocess`; the score threshold, per-class NMS and top `detections_per_img` are written in
    export-friendly fixed-shape ops, with padded outputs (see module docstring).
    Its eager forward is the reference the exported graph is checked against.
    """

    def __init__(self, model: RetinaNet, size: int) -> None:
        super().__init__()
        self.size = check_letterbox_size(int(size))
        self.model = model.eval()
        with torch.no_grad():
            probe = torch.zeros(1, 3, size, size, dtype=torch.uint8, device=model.normalizer.device)
            feats = model.fpn(model.backbone(model.normalize(probe)))
            grids = [tuple(f.shape[-2:]) for f in feats]
        anchors, per_level = model.anchors.grid((size, size), grids, probe.device, torch.float32)
        self.register_buffer("anchors", anchors.clone(), persistent=False)
        self.per_level = list(per_level)
        self.num_classes = model.num_classes
        # a Python int: the tracer must not see a size
        self.num_candidates = sum(min(model.topk_candidates, n * self.num_classes) for n in per_level)
        self.max_detections = min(int(model.detections_per_img), self.num_candidates)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """uint8 images [B, 3, S, S] -> boxes [B, D, 4], scores [B, D], labels [B, D], num_detections [B]."""
        m = self.model
        x = m.normalizer(images)
        feats = m.fpn(m.backbone(x))
        cls_logits = m.cls_head(feats)  # [B, A, C]
        box_deltas = m.box_head(feats)  # [B, A, 4]
        batch, num_classes = images.shape[0], self.num_classes
        scores, boxes, classes = m.candidates(
            cls_logits, box_deltas, self.anchors, self.per_level, (self.size, self.size)
        )
        # per-class score planes [B, C, K]: a candidate scores only in its own class, -1 elsewhere
        one_hot = classes.unsqueeze(1) == torch.arange(num_classes, device=classes.device).view(1, -1, 1)
        planes = torch.where(one_hot, scores.unsqueeze(1), torch.full_like(scores.unsqueeze(1), -1.0))
        total = self.num_candidates
        selected = _NonMaxSuppression.apply(boxes, planes, total, float(m.nms_thresh), float(m.score_thresh))
        kept = torch.zeros_like(scores).reshape(-1)
        flat = selected[:, 0] * total + selected[:, 2]
        kept = kept.scatter(0, flat, torch.ones_like(flat, dtype=kept.dtype)).reshape(batch, total)
        final = scores * kept  # NMS survivors keep their score, everything else 0
        top_scores, order = final.topk(self.max_detections, dim=1)  # by score, desc
        valid = top_scores > 0
        out_boxes = boxes.gather(1, order.unsqueeze(-1).expand(-1, -1, 4)) * valid.unsqueeze(-1)
        out_labels = (classes.gather(1, order) + 1) * valid
        return out_boxes, top_scores, out_labels, valid.sum(dim=1)


class FasterRCNNExport(nn.Module):
    """`FasterRCNNDetector` inference (torchvision's tracing-aware RPN and RoI heads) with its variable-length
    detections padded to D rows per image, the layout of `RetinaNetExport`.

    torchvision already sorts each image's detections by descending score and keeps the top
    `detections_per_img`; padding appends zero rows (score 0, label 0) and keeps the first D.
    """

    def __init__(self, model: FasterRCNNDetector, size: int) -> None:
        super().__init__()
        self.size = check_letterbox_size(int(size))
        self.model = model.eval()
        self.max_detections = model.detections_per_img

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """uint8 images [B, 3, S, S] -> boxes [B, D, 4], scores [B, D], labels [B, D], num_detections [B]."""
        limit = self.max_detections

        def pad(rows: torch.Tensor) -> torch.Tensor:  # append zero rows, keep the first D
            return torch.cat((rows, rows.new_zeros((limit, *rows.shape[1:]))))[:limit]

        detections = self.model(images)
        boxes, scores, labels = (
            torch.stack([pad(d[key]) for d in detections]) for key in ("boxes", "scores", "labels")
        )
        return boxes, scores, labels, (scores > 0).sum(dim=1)


def unpad(boxes: Any, scores: Any, labels: Any, num_detections: Any) -> list[dict[str, torch.Tensor]]:
    """Padded export outputs (tensors or numpy) -> the detector interface: one dict per image."""
    boxes, scores = torch.as_tensor(boxes, dtype=torch.float32), torch.as_tensor(scores, dtype=torch.float32)
    labels, counts = torch.as_tensor(labels, dtype=torch.int64), torch.as_tensor(num_detections).tolist()
    return [
        {"boxes": boxes[i, :n], "scores": scores[i, :n], "labels": labels[i, :n]}
        for i, n in enumerate(counts)
    ]


def export_onnx(
    model: nn.Module,
    out_path: str | Path,
    size: int,
    class_names: Sequence[str],
    config_yaml: str = "",
    dynamic_batch: bool = False,
    opset: int = DEFAULT_OPSET,
    batch_size: int = 1,
) -> Path:
    """Export `model` to `out_path` for S = `size` inputs, check it with `onnx.checker`, add the metadata.

    Uses the TorchScript-based exporter (`dynamo=False`): it maps the custom NMS symbolic straight onto
    `NonMaxSuppression`, and the dynamo exporter needs onnxscript, which the `onnx` extra does not pull in.
    """
    require_onnx("onnx")
    import onnx

    if isinstance(model, FasterRCNNDetector):
        if dynamic_batch:
            raise ValueError(
                "--dynamic-batch is not supported for the Faster R-CNN baseline: torchvision's RPN and RoI "
                "heads loop over the images of the traced batch, so its batch size is fixed at export "
                "(use --batch N for another fixed size)"
            )
        wrapper: nn.Module = FasterRCNNExport(model, size).eval()
        kind = "faster_rcnn"
    elif isinstance(model, RetinaNet):
        wrapper = RetinaNetExport(model, size).eval()
        kind = "retinanet"
    else:
        raise TypeError(f"can export a focaldet RetinaNet or Faster R-CNN, got {type(model).__name__}")
    if len(class_names) != model.num_classes:
        raise ValueError(f"{len(class_names)} class names for a model with {model.num_classes} classes")
    if opset < 11:
        raise ValueError(f"NonMaxSuppression needs opset >= 11, got {opset}")
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    device = model.normalizer.device
    example = torch.zeros(batch_size, 3, size, size, dtype=torch.uint8, device=device)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {name: {0: "batch"} for name in ("images", *OUTPUT_NAMES)}
    tmp = out_path.with_name(out_path.name + ".tmp")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer / deprecation chatter about the TorchScript exporter
        torch.onnx.export(
            wrapper,
            (example,),
            str(tmp),
            input_names=["images"],
            output_names=list(OUTPUT_NAMES),
            opset_version=opset,
            dynamic_axes=dynamic_axes,
            dynamo=False,
            do_constant_folding=True,
        )
    proto = onnx.load(str(tmp))
    metadata = {
        "focaldet.format": FORMAT_VERSION,
        "focaldet.class_names": json.dumps(list(class_names)),
        "focaldet.input_size": str(int(size)),
        "focaldet.score_thresh": repr(float(model.score_thresh)),
        "focaldet.nms_thresh": repr(float(model.nms_thresh)),
        "focaldet.detections_per_img": str(wrapper.max_detections),
        "focaldet.model": kind,
        "focaldet.config": config_yaml,
    }
    set_metadata(proto, metadata)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(tmp))
    tmp.replace(out_path)
    return out_path


def set_metadata(proto: Any, metadata: Mapping[str, str]) -> None:
    """Replace the `metadata_props` entries named in `metadata` (others are kept)."""
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in metadata.items():
        entry = existing.get(key) or proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
