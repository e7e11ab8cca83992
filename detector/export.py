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
what to install.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.ops import nms

from detector.data.transforms import check_letterbox_size
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

    Same arithmetic as `RetinaNet.postprocess` (per-level top-k, sigmoid, score threshold, decode, clip,
    per-class NMS, top `detections_per_img` by score), with fixed-size padded outputs (see module docstring).
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
        self.candidates_per_level = [min(model.topk_candidates, n * self.num_classes) for n in per_level]
        self.num_candidates = sum(self.candidates_per_level)  # a Python int: the tracer must not see a size
        self.max_detections = min(int(model.detections_per_img), self.num_candidates)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """uint8 images [B, 3, S, S] -> boxes [B, D, 4], scores [B, D], labels [B, D], num_detections [B]."""
        m = self.model
        x = m.normalizer(images)
        feats = m.fpn(m.backbone(x))
        cls_logits = m.cls_head(feats)  # [B, A, C]
        box_deltas = m.box_head(feats)  # [B, A, 4]
        batch, num_classes = images.shape[0], self.num_classes

        logits_l, anchor_l, class_l = [], [], []
        start = 0
        for count, k in zip(self.per_level, self.candidates_per_level, strict=True):
            level = cls_logits[:, start : start + count].reshape(batch, count * num_classes)
            top_logits, idx = level.topk(k, dim=1)
            logits_l.append(top_logits)
            anchor_l.append(torch.div(idx, num_classes, rounding_mode="floor") + start)
            class_l.append(idx % num_classes)
            start += count
        scores = torch.sigmoid(torch.cat(logits_l, 1))  # [B, K]
        anchor_idx, classes = torch.cat(anchor_l, 1), torch.cat(class_l, 1)

        deltas = box_deltas.gather(1, anchor_idx.unsqueeze(-1).expand(-1, -1, 4))
        boxes = m.box_coder.decode(deltas.float(), self.anchors[anchor_idx])  # [B, K, 4]
        boxes = torch.stack(
            (
                boxes[..., 0].clamp(0, self.size),
                boxes[..., 1].clamp(0, self.size),
                boxes[..., 2].clamp(0, self.size),
                boxes[..., 3].clamp(0, self.size),
            ),
            dim=-1,
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


class ExportMismatchError(ValueError):
    """The exported model's detections differ from PyTorch's (the message names the first difference)."""


def compare_detections(
    expected: Sequence[Mapping[str, torch.Tensor]],
    actual: Sequence[Mapping[str, torch.Tensor]],
    rtol: float = 1e-3,
    box_atol: float = 1e-2,
    score_atol: float = 1e-5,
    score_thresh: float | None = None,
    max_detections: int | None = None,
) -> dict[str, float]:
    """Check two detectors' outputs agree: same detections in the same order, labels equal, boxes and scores
    close (relative `rtol` plus a small absolute floor, pixels for boxes).

    Detections whose scores tie (within the score tolerance) have no defined order, in PyTorch or in
    onnxruntime, so within a tie they are matched as a set. With `score_thresh`, detections scoring within
    the tolerance of it are left out on both sides: float rounding decides whether they pass. Likewise with
    `max_detections` (the models' detections_per_img), for an image both cut at that many: the detections
    within `score_atol` of the lower cut, which rounding lets in on one side and not the other. Returns the
    numbers of detections, tied ones, ones left out at the threshold (`borderline`) and at the cut
    (`at_cut`), and the largest differences; raises
    `ExportMismatchError` naming the first disagreement.
    """
    if len(expected) != len(actual):
        raise ExportMismatchError(f"{len(expected)} images in the reference, {len(actual)} in the export")
    stats = dict.fromkeys(("detections", "tied", "borderline", "at_cut"), 0)
    stats |= {"max_box_diff": 0.0, "max_score_diff": 0.0}
    for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
        if score_thresh is not None:
            band = score_atol + rtol * score_thresh
            e, a = _clear_of(e, score_thresh, band), _clear_of(a, score_thresh, band)
            stats["borderline"] += e.pop("left_out") + a.pop("left_out")
        sizes = (len(e["scores"]), len(a["scores"]))
        if max_detections is not None and min(sizes) >= max_detections > 0:  # both cut
            cut = min(float(torch.as_tensor(d["scores"]).min()) for d in (e, a)) + score_atol
            e, a = _scored(e, lambda x: x > cut), _scored(a, lambda x: x > cut)  # noqa: B023
            stats["at_cut"] += e.pop("left_out") + a.pop("left_out")
        e_boxes, a_boxes = e["boxes"].float().cpu(), torch.as_tensor(a["boxes"]).float()
        e_scores, a_scores = e["scores"].float().cpu(), torch.as_tensor(a["scores"]).float()
        e_labels, a_labels = e["labels"].cpu().long(), torch.as_tensor(a["labels"]).long()
        if len(e_scores) != len(a_scores):
            raise ExportMismatchError(
                f"image {i}: {len(e_scores)} detections in PyTorch, {len(a_scores)} in ONNX"
            )
        same_score = lambda j, k: _close(a_scores[k], e_scores[j], score_atol, rtol)  # noqa: B023
        same_box = lambda j, k: _close(a_boxes[k], e_boxes[j], box_atol, rtol)  # noqa: B023
        used: set[int] = set()
        for j in range(len(e_scores)):
            if not same_score(j, j):
                raise ExportMismatchError(
                    f"image {i}, detection {j}: score {float(e_scores[j])} vs {float(a_scores[j])}"
                )
            k = j
            if j in used or not (e_labels[j] == a_labels[j] and same_box(j, j)):
                tied = [k for k in range(len(a_scores)) if k not in used and same_score(j, k)]
                match = [k for k in tied if e_labels[j] == a_labels[k] and same_box(j, k)]
                if not match:
                    raise ExportMismatchError(
                        f"image {i}, detection {j}: label {int(e_labels[j])} box {e_boxes[j].tolist()} "
                        f"(score {float(e_scores[j]):.6f}) vs label {int(a_labels[j])} box "
                        f"{a_boxes[j].tolist()}, and no tied detection matches"
                    )
                k = match[0]
                stats["tied"] += 1
            used.add(k)
            stats["max_box_diff"] = max(stats["max_box_diff"], float((a_boxes[k] - e_boxes[j]).abs().max()))
            stats["max_score_diff"] = max(stats["max_score_diff"], abs(float(a_scores[k] - e_scores[j])))
        stats["detections"] += len(e_scores)
    return stats


def model_cut_offs(model: nn.Module) -> dict[str, Any]:
    """The `compare_detections` arguments where a detector cuts its output: its score threshold and its
    detections per image."""
    return {"score_thresh": float(model.score_thresh), "max_detections": int(model.detections_per_img)}


def _clear_of(det: Mapping[str, Any], thresh: float, band: float) -> dict[str, Any]:
    """The detections whose score is not within `band` of `thresh`, plus how many were left out."""
    return _scored(det, lambda scores: (scores - thresh).abs() > band)


def _scored(det: Mapping[str, Any], keep_score: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, Any]:
    """The detections whose score passes `keep_score`, plus how many were left out (`left_out`)."""
    keep = keep_score(torch.as_tensor(det["scores"]).float().cpu())
    out: dict[str, Any] = {k: torch.as_tensor(det[k]).cpu()[keep] for k in ("boxes", "scores", "labels")}
    out["left_out"] = int((~keep).sum())
    return out


def _close(value: torch.Tensor, ref: torch.Tensor, atol: float, rtol: float) -> bool:
    return bool(((value - ref).abs() <= atol + rtol * ref.abs()).all())


def synthetic_images(size: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """Deterministic uint8 images [B, 3, S, S]: smooth blobs on a gradient, so the heads see structure."""
    gen = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    images = []
    for _ in range(batch):
        canvas = torch.stack((xs, ys, (xs + ys) / 2)) / size * 120
        for _ in range(12):
            cx, cy = torch.rand(2, generator=gen) * size
            radius = 8 + torch.rand(1, generator=gen) * size / 8
            color = torch.rand(3, 1, 1, generator=gen) * 255
            blob = torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * radius**2))
            canvas = canvas * (1 - blob) + color * blob
        images.append(canvas.clamp(0, 255).to(torch.uint8))
    return torch.stack(images)


@torch.no_grad()
def calibrate_scores(model: torch.nn.Module, images: torch.Tensor, above: int = 40) -> None:
    """Give an untrained RetinaNet realistic outputs for parity tests and benchmarks.

    Spreads the classifier's logits (std ~1.5 over the anchors of `images`) and shifts its bias so that about
    `above` anchor-class pairs of the first image pass the score threshold, which falls between two of them;
    box deltas get a visible spread too."""
    head = model.cls_head.predictor
    torch.nn.init.normal_(model.box_head.predictor.weight, std=0.03)
    logits = model.head_outputs(images)[0].flatten(1)
    head.weight *= 1.5 / float(logits.std())
    top = model.head_outputs(images)[0].flatten(1).topk(above + 1, dim=1).values
    target = math.log(model.score_thresh / (1 - model.score_thresh))
    head.bias += target - (top[0, -1] + top[0, -2]) / 2


def verify_export(
    model: nn.Module, onnx_path: str | Path, images: torch.Tensor | None = None
) -> dict[str, float]:
    """Run the export with onnxruntime and the PyTorch model on `images` (default: `synthetic_images`) and
    `compare_detections` them; returns the comparison statistics."""
    from detector.onnx_runtime import OnnxDetector

    detector = OnnxDetector(onnx_path)
    if images is None:
        images = synthetic_images(detector.size, batch=1)
    device = next(model.parameters()).device
    with torch.no_grad():
        expected = model.eval()(images.to(device))
    return compare_detections(expected, detector(images), **model_cut_offs(model))
