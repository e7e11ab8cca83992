"""Pascal VOC average precision, following the official devkit's ``voc_eval`` rules exactly.

Rules (as in the devkit): per class, the detections of all images are sorted by score; IoU uses the +1 pixel
convention for widths, heights and areas; a detection matches the best-overlapping ground truth of its image
when the IoU is strictly above the threshold; a detection whose best ground truth is difficult is neither a
true nor a false positive; a second detection of an already matched ground truth is a false positive;
difficult ground truth does not count toward recall. ``use_07_metric`` selects the VOC2007 11-point AP,
otherwise the area under the monotone precision envelope (VOC2010+). The matching is vectorised per class;
only "first detection of each ground truth wins" needs an order, and that is a ``np.unique`` over the
score-sorted matches.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "DevkitMatch",
    "Detections",
    "GroundTruths",
    "devkit_match",
    "parse_detections",
    "parse_ground_truths",
    "voc_ap",
    "voc_metrics",
    "ap_from_pr",
]

# Elements of one detections x padded-ground-truth IoU block; bounds memory on large evaluations.
_IOU_CHUNK_ELEMENTS = 1 << 21


@dataclass(frozen=True)
class Detections:
    """All detections of an evaluation, concatenated over images (float64 boxes, image index per row)."""

    image: np.ndarray  # int64 [K]
    boxes: np.ndarray  # float64 [K, 4] xyxy
    scores: np.ndarray  # float64 [K]
    labels: np.ndarray  # int64 [K], 1..C
    num_images: int


@dataclass(frozen=True)
class GroundTruths:
    """All ground truth of an evaluation, concatenated over images, in each image's original order."""

    image: np.ndarray  # int64 [G]
    boxes: np.ndarray  # float64 [G, 4] xyxy
    labels: np.ndarray  # int64 [G], 1..C
    difficult: np.ndarray  # bool [G]
    num_images: int


def _to_numpy(value: Any, where: str) -> np.ndarray:
    """Convert a tensor / array / list to a numpy array without copying more than needed."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor, without importing torch here
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.double()
        return value.numpy()
    try:
        return np.asarray(value)
    except Exception as exc:  # pragma: no cover - numpy raises many types here
        raise TypeError(f"{where}: cannot convert {type(value).__name__} to an array ({exc})") from exc


def _field(entry: Any, key: str, where: str, required: bool = True) -> np.ndarray | None:
    if not isinstance(entry, Mapping):
        raise TypeError(f"{where}: expected a dict with tensors or arrays, got {type(entry).__name__}")
    if key not in entry:
        if required:
            raise KeyError(f"{where}: missing key {key!r} (has {sorted(map(str, entry))})")
        return None
    return _to_numpy(entry[key], f"{where}[{key!r}]")


def _boxes(entry: Any, where: str) -> np.ndarray:
    boxes = _field(entry, "boxes", where)
    if boxes.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{where}['boxes'] has shape {tuple(boxes.shape)}, expected [N, 4] (x1, y1, x2, y2)")
    boxes = boxes.astype(np.float64, copy=False)
    if not np.isfinite(boxes).all():
        raise ValueError(f"{where}['boxes'] contains NaN or infinite coordinates")
    bad = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{where}['boxes'][{i}] = {boxes[i].tolist()} is not xyxy (x2 < x1 or y2 < y1)")
    return boxes


def _vector(entry: Any, key: str, n: int, where: str, required: bool = True) -> np.ndarray | None:
    values = _field(entry, key, where, required)
    if values is None:
        return None
    values = values.reshape(-1) if values.size == 0 or values.ndim == 1 else values
    if values.ndim != 1 or values.shape[0] != n:
        raise ValueError(f"{where}[{key!r}] has shape {tuple(values.shape)}, expected [{n}] (one per box)")
    return values


def _labels(entry: Any, n: int, where: str) -> np.ndarray:
    labels = _vector(entry, "labels", n, where)
    if labels.dtype.kind == "f":
        if not np.all(labels == np.round(labels)):
            raise ValueError(f"{where}['labels'] must be integers, got {labels[:5].tolist()}...")
    elif labels.dtype.kind not in "iu":
        raise TypeError(f"{where}['labels'] must be integers, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if n and labels.min() < 1:
        raise ValueError(f"{where}['labels'] must be 1..C (0 is background), got {labels.min()}")
    return labels


def _check_list(items: Any, name: str) -> Sequence:
    if isinstance(items, Mapping) or not isinstance(items, Sequence):
        raise TypeError(f"{name} must be a list with one dict per image, got {type(items).__name__}")
    return items


def parse_detections(detections: Sequence[Mapping[str, Any]]) -> Detections:
    """Validate and concatenate per-image detections (``boxes`` [K,4] xyxy, ``scores``, ``labels`` [K])."""
    detections = _check_list(detections, "detections")
    images, boxes, scores, labels = [], [], [], []
    for i, det in enumerate(detections):
        where = f"detections[{i}]"
        b = _boxes(det, where)
        s = _vector(det, "scores", b.shape[0], where).astype(np.float64)
        if not np.isfinite(s).all():
            raise ValueError(f"{where}['scores'] contains NaN or infinite values")
        lab = _labels(det, b.shape[0], where)
        images.append(np.full(b.shape[0], i, dtype=np.int64))
        boxes.append(b)
        scores.append(s)
        labels.append(lab)
    if not detections:
        return Detections(np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64), 0)
    return Detections(
        np.concatenate(images), np.concatenate(boxes), np.concatenate(scores), np.concatenate(labels),
        len(detections),
    )


def parse_ground_truths(ground_truths: Sequence[Mapping[str, Any]]) -> GroundTruths:
    """Validate and concatenate per-image ground truth (``boxes`` [G,4], ``labels``, ``difficult`` [G])."""
    ground_truths = _check_list(ground_truths, "ground_truths")
    images, boxes, labels, difficult = [], [], [], []
    for i, gt in enumerate(ground_truths):
        where = f"ground_truths[{i}]"
        b = _boxes(gt, where)
        lab = _labels(gt, b.shape[0], where)
        diff = _vector(gt, "difficult", b.shape[0], where, required=False)
        diff = np.zeros(b.shape[0], dtype=bool) if diff is None else diff.astype(bool)
        images.append(np.full(b.shape[0], i, dtype=np.int64))
        boxes.append(b)
        labels.append(lab)
        difficult.append(diff)
    if not ground_truths:
        empty = np.zeros(0, np.int64)
        return GroundTruths(empty, np.zeros((0, 4)), empty, np.zeros(0, bool), 0)
    return GroundTruths(
        np.concatenate(images), np.concatenate(boxes), np.concatenate(labels), np.concatenate(difficult),
        len(ground_truths),
    )


def ap_from_pr(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = False) -> float:
    """AP from a devkit precision/recall curve: 11-point (VOC2007) or area under the monotone envelope."""
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if use_07_metric:
        # Same thresholds as the devkit (np.arange keeps its float rounding, e.g. 0.30000000000000004).
        thresholds = np.arange(0.0, 1.1, 0.1)
        if recall.size == 0:
            return 0.0
        envelope = np.maximum.accumulate(precision[::-1])[::-1]  # max precision at recall >= r_i
        first = np.searchsorted(recall, thresholds, side="left")  # recall is non-decreasing
        best = np.where(first < recall.size, envelope[np.minimum(first, recall.size - 1)], 0.0)
        ap = 0.0
        for p in best:  # summed in the devkit's order so the float result is identical
            ap = ap + p / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _best_overlaps(
    det_image: np.ndarray, det_boxes: np.ndarray, gt_image: np.ndarray, gt_boxes: np.ndarray, num_images: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each detection, its best IoU (+1 convention) with its image's ground truth, and that box's index.

    Detections on images without ground truth get ``-inf`` and index -1. Ties go to the first ground truth in
    the image's order, like ``np.argmax`` in the devkit.
    """
    k = det_boxes.shape[0]
    ovmax = np.full(k, -np.inf)
    jmax = np.full(k, -1, dtype=np.int64)
    if k == 0 or gt_boxes.shape[0] == 0:
        return ovmax, jmax
    counts = np.bincount(gt_image, minlength=num_images)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    gmax = int(counts.max())
    rank = np.arange(gt_image.shape[0]) - starts[gt_image]  # gt_image is sorted (concatenated per image)
    padded = np.zeros((num_images, gmax, 4))
    valid = np.zeros((num_images, gmax), dtype=bool)
    padded[gt_image, rank] = gt_boxes
    valid[gt_image, rank] = True
    step = max(1, _IOU_CHUNK_ELEMENTS // gmax)
    for lo in range(0, k, step):
        img = det_image[lo : lo + step]
        bb = det_boxes[lo : lo + step, None, :]
        g = padded[img]
        # Same operations, in the same order, as the devkit's voc_eval (bit-identical overlaps).
        ixmin = np.maximum(g[..., 0], bb[..., 0])
        iymin = np.maximum(g[..., 1], bb[..., 1])
        ixmax = np.minimum(g[..., 2], bb[..., 2])
        iymax = np.minimum(g[..., 3], bb[..., 3])
        iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
        ih = np.maximum(iymax - iymin + 1.0, 0.0)
        inters = iw * ih
        uni = (
            (bb[..., 2] - bb[..., 0] + 1.0) * (bb[..., 3] - bb[..., 1] + 1.0)
            + (g[..., 2] - g[..., 0] + 1.0) * (g[..., 3] - g[..., 1] + 1.0)
            - inters
        )
        overlaps = np.where(valid[img], inters / uni, -np.inf)
        best = overlaps.argmax(axis=1)
        ov = overlaps[np.arange(overlaps.shape[0]), best]
        has_gt = np.isfinite(ov)
        ovmax[lo : lo + step] = ov
        jmax[lo : lo + step] = np.where(has_gt, starts[img] + best, -1)
    return ovmax, jmax


@dataclass(frozen=True)
class DevkitMatch:
    """The devkit's matching of every detection, in the concatenated order of ``parse_detections``.

    ``outcome``: 1 true positive, 0 false positive, -1 ignored (its best ground truth is difficult).
    ``gt``: index (into the concatenated ground truth) of the detection's best same-class ground truth in its
    image, -1 when there is none; ``iou``: that overlap (+1 convention), ``-inf`` when there is none. A false
    positive with ``iou > iou_threshold`` is a duplicate (its ground truth was taken by a higher score).
    ``num_gt``: non-difficult ground truth per class.
    """

    iou_threshold: float
    outcome: np.ndarray  # int8 [K]
    gt: np.ndarray  # int64 [K]
    iou: np.ndarray  # float64 [K]
    num_gt: dict[int, int]


def _match_class(
    dets: Detections, gts: GroundTruths, cls: int, iou_threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Devkit matching of one class: (detection indices in score order, outcome, best gt, best IoU, npos)."""
    gmask = gts.labels == cls
    gt_index = np.flatnonzero(gmask)
    gt_image, gt_boxes, gt_difficult = gts.image[gmask], gts.boxes[gmask], gts.difficult[gmask]
    npos = int((~gt_difficult).sum())
    dsel = np.flatnonzero(dets.labels == cls)
    order = dsel[np.argsort(-dets.scores[dsel], kind="stable")]
    ovmax, jmax = _best_overlaps(dets.image[order], dets.boxes[order], gt_image, gt_boxes, gts.num_images)

    matched = ovmax > iou_threshold  # False wherever the image has no ground truth (ovmax = -inf, jmax = -1)
    on_difficult = np.zeros_like(matched)
    on_difficult[matched] = gt_difficult[jmax[matched]]
    candidate = np.flatnonzero(matched & ~on_difficult)
    outcome = np.where(on_difficult, -1, 0).astype(np.int8)
    _, first = np.unique(jmax[candidate], return_index=True)  # the first (highest-scoring) match of each gt
    outcome[candidate[first]] = 1
    best_gt = np.full(jmax.shape, -1, dtype=np.int64)
    has_gt = jmax >= 0
    best_gt[has_gt] = gt_index[jmax[has_gt]]
    return order, outcome, best_gt, ovmax, npos


def _evaluate_class(
    dets: Detections, gts: GroundTruths, cls: int, iou_threshold: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """Devkit precision and recall curves of one class, and its number of non-difficult ground truths."""
    _, outcome, _, _, npos = _match_class(dets, gts, cls, iou_threshold)
    tp = np.cumsum(outcome == 1, dtype=np.float64)
    fp = np.cumsum(outcome == 0, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = tp / float(npos)  # npos == 0 gives nan/inf; such a class is left out by the caller
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return precision, recall, npos


def devkit_match(
    dets: Detections, gts: GroundTruths, iou_threshold: float = 0.5, classes: Sequence[int] | None = None
) -> DevkitMatch:
    """Every detection's outcome under the devkit's greedy, score-ordered matching (that of ``voc_ap``).

    The matching is greedy in score order, so the detections scoring at least ``s`` are matched exactly as
    if the others did not exist: counting outcomes above a score threshold gives precision and recall there.
    """
    if not 0.0 <= float(iou_threshold) < 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1), got {iou_threshold}")
    k = dets.labels.shape[0]
    outcome = np.zeros(k, dtype=np.int8)
    best_gt = np.full(k, -1, dtype=np.int64)
    best_iou = np.full(k, -np.inf)
    num_gt: dict[int, int] = {}
    if classes is None:
        classes = np.union1d(dets.labels, gts.labels).tolist()
    for cls in classes:
        order, out, gt, iou, npos = _match_class(dets, gts, int(cls), float(iou_threshold))
        outcome[order], best_gt[order], best_iou[order] = out, gt, iou
        num_gt[int(cls)] = npos
    return DevkitMatch(float(iou_threshold), outcome, best_gt, best_iou, num_gt)


def parse_aligned(
    detections: Sequence[Mapping[str, Any]], ground_truths: Sequence[Mapping[str, Any]]
) -> tuple[Detections, GroundTruths]:
    """Parse both inputs of a metric and check they hold one entry per image, in the same order."""
    dets = parse_detections(detections)
    gts = parse_ground_truths(ground_truths)
    if dets.num_images != gts.num_images:
        raise ValueError(
            f"detections has {dets.num_images} images but ground_truths has {gts.num_images}; "
            "they must be aligned one entry per image"
        )
    return dets, gts


def voc_ap(
    detections: Sequence[Mapping[str, Any]],
    ground_truths: Sequence[Mapping[str, Any]],
    iou_threshold: float = 0.5,
    use_07_metric: bool = False,
    *,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """Pascal VOC AP per class and their mean, following the devkit's ``voc_eval`` rules.

    ``detections``: one dict per image with ``boxes`` [K,4] xyxy, ``scores`` [K], ``labels`` [K] (1..C).
    ``ground_truths``: one dict per image, same order, with ``boxes`` [G,4], ``labels`` [G] and optionally
    ``difficult`` [G] bool. Numpy arrays, torch tensors or lists. ``num_classes`` (optional) checks labels
    against 1..C and reports ``num_gt`` for every class.

    Returns ``{"map", "ap", "precision", "recall", "num_gt"}``: ``ap``, ``precision`` and ``recall`` (the
    devkit's curves, for plots) hold the classes with at least one non-difficult ground truth, which are the
    ones averaged into ``map`` (NaN when there are none); ``num_gt`` counts non-difficult ground truth for
    every class seen.
    """
    if not 0.0 <= float(iou_threshold) < 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1), got {iou_threshold}")
    dets, gts = parse_aligned(detections, ground_truths)
    seen = np.union1d(dets.labels, gts.labels)
    if num_classes is not None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if seen.size and seen.max() > num_classes:
            raise ValueError(f"label {int(seen.max())} is outside 1..{num_classes} (num_classes)")
        classes = np.arange(1, num_classes + 1)
    else:
        classes = seen

    ap: dict[int, float] = {}
    precision: dict[int, np.ndarray] = {}
    recall: dict[int, np.ndarray] = {}
    num_gt: dict[int, int] = {}
    for cls in classes.tolist():
        prec, rec, npos = _evaluate_class(dets, gts, cls, float(iou_threshold))
        num_gt[cls] = npos
        if npos == 0:
            continue  # nothing to recall: AP undefined, left out of the mean (as in the devkit's tables)
        ap[cls] = ap_from_pr(rec, prec, use_07_metric)
        precision[cls] = prec
        recall[cls] = rec
    mean = float(np.mean(list(ap.values()))) if ap else float("nan")
    return {"map": mean, "ap": ap, "precision": precision, "recall": recall, "num_gt": num_gt}


def voc_metrics(
    detections: list[dict], ground_truths: list[dict], num_classes: int | None = None
) -> dict[str, float]:
    """VOC area mAP@0.5 and VOC07 11-point mAP@0.5 (0.0 when there is no ground truth at all)."""
    if not any(len(g["labels"]) for g in ground_truths):
        return {"map": 0.0, "map50_07": 0.0}
    area = float(voc_ap(detections, ground_truths, 0.5, use_07_metric=False, num_classes=num_classes)["map"])
    p11 = float(voc_ap(detections, ground_truths, 0.5, use_07_metric=True, num_classes=num_classes)["map"])
    return {"map": 0.0 if math.isnan(area) else area, "map50_07": 0.0 if math.isnan(p11) else p11}
