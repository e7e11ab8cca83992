"""Flip test-time augmentation: predict on the letterboxed batch and on flipped copies, merge with one NMS.

Each copy flips the image CONTENT of the letterbox (the resized image at the top left), not the padded
square, so a flipped copy looks like the letterbox of the mirrored image; its boxes are mirrored back within
the same content window. Our RetinaNet merges before NMS: the candidates of every view (top-k per level,
decoded, above the score threshold) go through one class-wise NMS at the model's `nms_thresh`, as
mmdetection and detectron2 do for RetinaNet TTA. Other detectors (Faster R-CNN, torchvision's RetinaNet,
an ONNX export) merge their per-view detections after NMS with the same NMS. Both keep `detections_per_img`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torchvision.ops import batched_nms

__all__ = [
    "TTA_FLIPS",
    "content_window",
    "flip_boxes",
    "flip_content",
    "merge_settings",
    "parse_tta",
    "tta_detect",
]

TTA_FLIPS = ("hflip", "vflip", "hvflip")  # horizontal, vertical, both (a 180-degree rotation)
_AXES = {"hflip": (True, False), "vflip": (False, True), "hvflip": (True, True)}  # (mirror x, mirror y)

Window = tuple[int, int, int, int]


def parse_tta(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """The flips of a `--tta` value ("hflip,vflip", a list; ''/None: off), validated, in order, once each.

    Raises ValueError naming the bad value and the allowed ones.
    """
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    flips: list[str] = []
    for raw in items:
        item = str(raw).strip()
        if not item:
            continue
        if item not in TTA_FLIPS:
            raise ValueError(f"--tta: unknown flip {item!r}; allowed: {', '.join(TTA_FLIPS)} (comma list)")
        if item not in flips:
            flips.append(item)
    return tuple(flips)


def content_window(meta: dict[str, Any], size: int) -> Window:
    """Where the image content lies in the `size` x `size` letterbox: (x0, y0, x1, y1) integer pixels.

    `meta` holds `scale` (sx, sy), `pad` (left, top) and `orig_size` (H, W), as `letterbox_batch` metas and
    eval-loader targets do; the letterbox maps original x to x * sx + left.
    """
    sx, sy = (float(v) for v in torch.as_tensor(meta["scale"]).reshape(2).tolist())
    px, py = (float(v) for v in torch.as_tensor(meta["pad"]).reshape(2).tolist())
    height, width = (int(v) for v in torch.as_tensor(meta["orig_size"]).reshape(2).tolist())
    x0, y0 = max(0, round(px)), max(0, round(py))
    x1, y1 = min(size, round(px + width * sx)), min(size, round(py + height * sy))
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"empty letterbox content window {(x0, y0, x1, y1)} (scale {sx, sy}, pad {px, py})")
    return x0, y0, x1, y1


def flip_content(batch: torch.Tensor, windows: Sequence[Window], flip: str) -> torch.Tensor:
    """A copy of the letterboxed batch [B, C, S, S] with each image's content window mirrored (pad kept)."""
    mirror_x, mirror_y = _AXES[flip]
    dims = [d for d, on in ((-1, mirror_x), (-2, mirror_y)) if on]
    out = batch.clone()
    for i, (x0, y0, x1, y1) in enumerate(windows):
        out[i, :, y0:y1, x0:x1] = batch[i, :, y0:y1, x0:x1].flip(dims)
    return out


def flip_boxes(boxes: torch.Tensor, window: Window, flip: str) -> torch.Tensor:
    """Boxes [..., 4] xyxy mirrored within a content window: maps a flipped view's boxes back (involution)."""
    mirror_x, mirror_y = _AXES[flip]
    x0, y0, x1, y1 = window
    b = boxes.unbind(-1)
    bx1, by1, bx2, by2 = b
    if mirror_x:
        bx1, bx2 = (x0 + x1) - b[2], (x0 + x1) - b[0]
    if mirror_y:
        by1, by2 = (y0 + y1) - b[3], (y0 + y1) - b[1]
    return torch.stack((bx1, by1, bx2, by2), dim=-1)


@torch.inference_mode()
def tta_detect(
    model: torch.nn.Module, batch: torch.Tensor, metas: Sequence[dict[str, Any]], flips: Sequence[str]
) -> list[dict[str, torch.Tensor]]:
    """Detections of a letterboxed uint8 batch [B, 3, S, S] merged over the original and its `flips`.

    Same output as `model(batch)`: per image boxes (letterbox frame), scores, labels 1..C, by score; with
    no flips it is `model(batch)`. `metas` gives each image's letterbox geometry (`content_window`).
    """
    flips = parse_tta(flips)
    if not flips:
        return model(batch)
    if batch.shape[-1] != batch.shape[-2] or len(metas) != batch.shape[0]:
        raise ValueError(f"expected a square letterbox batch, one meta per image; got {tuple(batch.shape)}")
    size = int(batch.shape[-1])
    windows = [content_window(m, size) for m in metas]
    nms_thresh, max_dets = merge_settings(model)
    views = [(None, batch), *((f, flip_content(batch, windows, f)) for f in flips)]
    from detector.models.retinanet import RetinaNet

    if isinstance(model, RetinaNet):
        per_view = [_retinanet_candidates(model, x) for _, x in views]
    else:
        per_view = [_detections(model(x)) for _, x in views]
    results = []
    for i, window in enumerate(windows):
        boxes, scores, labels = [], [], []
        for (flip, _), (b, s, c) in zip(views, per_view, strict=True):
            boxes.append(b[i] if flip is None else flip_boxes(b[i], window, flip))
            scores.append(s[i])
            labels.append(c[i])
        merged = _merge(torch.cat(boxes), torch.cat(scores), torch.cat(labels), window, nms_thresh, max_dets)
        results.append(merged)
    return results


def merge_settings(model: torch.nn.Module) -> tuple[float, int]:
    """(NMS IoU, detections kept per image) of a detector: its own (torchvision's RetinaNet: its inner
    detector's), or an ONNX export's stored config."""
    for source in (model, getattr(model, "detector", None)):  # ours, Faster R-CNN; torchvision's RetinaNet
        if hasattr(source, "nms_thresh") and hasattr(source, "detections_per_img"):
            return float(source.nms_thresh), int(source.detections_per_img)
    if hasattr(model, "config"):  # OnnxDetector: post-processing in the graph, its settings in the config
        m = model.config().model
        return float(m.nms_thresh), int(m.detections_per_img)
    raise ValueError(f"--tta needs the model's NMS settings; a {type(model).__name__} has none")


def _retinanet_candidates(
    model: torch.nn.Module, images: torch.Tensor
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Per image, the RetinaNet candidates above the score threshold, before NMS: boxes, scores, labels."""
    cls_logits, box_deltas, anchors, per_level = model.head_outputs(images)
    scores, boxes, classes = model.candidates(
        cls_logits, box_deltas, anchors, per_level, tuple(images.shape[-2:])
    )
    keep = scores > model.score_thresh
    return (
        [b[k] for b, k in zip(boxes, keep, strict=True)],
        [s[k] for s, k in zip(scores, keep, strict=True)],
        [c[k] + 1 for c, k in zip(classes, keep, strict=True)],
    )


def _detections(
    outputs: Sequence[dict[str, torch.Tensor]],
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Per-image (boxes, scores, labels) of a detector's post-NMS outputs, as float/int64 tensors."""
    return (
        [torch.as_tensor(o["boxes"]).float().reshape(-1, 4) for o in outputs],
        [torch.as_tensor(o["scores"]).float().reshape(-1) for o in outputs],
        [torch.as_tensor(o["labels"]).to(torch.int64).reshape(-1) for o in outputs],
    )


def _merge(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    window: Window,
    nms_thresh: float,
    max_dets: int,
) -> dict[str, torch.Tensor]:
    """Boxes of every view clipped to the content window, one class-wise NMS, the top `max_dets` by score."""
    x0, y0, x1, y1 = window
    boxes = torch.stack(
        (
            boxes[:, 0].clamp(x0, x1),
            boxes[:, 1].clamp(y0, y1),
            boxes[:, 2].clamp(x0, x1),
            boxes[:, 3].clamp(y0, y1),
        ),
        dim=1,
    )
    kept = batched_nms(boxes, scores, labels, float(nms_thresh))[:max_dets]
    return {"boxes": boxes[kept], "scores": scores[kept], "labels": labels[kept]}
