"""Checking an ONNX export against the PyTorch model it came from, and the inputs to do it with.

`verify_export` runs both on the same images and `compare_detections` matches their detections within float
tolerances (ties and threshold/cut borderline cases handled); `synthetic_images` are deterministic structured
inputs for that check, and `calibrate_scores` gives an untrained RetinaNet realistic score spreads so the
check and `tools/bench_onnx.py` exercise the threshold, NMS and top-k paths.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "ExportMismatchError",
    "calibrate_scores",
    "compare_detections",
    "model_cut_offs",
    "synthetic_images",
    "verify_export",
]


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
    from detector.export.runtime import OnnxDetector

    detector = OnnxDetector(onnx_path)
    if images is None:
        images = synthetic_images(detector.size, batch=1)
    device = next(model.parameters()).device
    with torch.no_grad():
        expected = model.eval()(images.to(device))
    return compare_detections(expected, detector(images), **model_cut_offs(model))
