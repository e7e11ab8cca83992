"""Per-detection match records from the devkit's own matching, and the numbers read off them.

``match_records`` runs the matching behind ``voc_ap`` (``voc.devkit_match``) once and labels every false
positive with its kind, so precision / recall / F1, the best-F1 threshold, the error counts and the report
page's marks all come from one matching and cannot disagree. The matching is greedy in score order, so the
detections scoring at least ``s`` are matched as if the others did not exist: every number at a score
threshold is a count over the records above it.

Kinds of false positive (the first that applies):
- ``duplicate``: its best same-class ground truth (IoU above the threshold) was taken by a higher score;
- ``wrong_class``: IoU above the threshold with a ground truth of another class;
- ``localization``: best same-class IoU in [0.1, threshold];
- ``background``: none of these.
IoU is the devkit's (+1 pixel convention) and "matched" means strictly above the threshold, as in ``voc_ap``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from detector.evaluation.voc import Detections, GroundTruths, devkit_match, parse_aligned

__all__ = [
    "FP_KINDS",
    "LOCALIZATION_MIN_IOU",
    "ImageResult",
    "MatchRecords",
    "best_f1",
    "confusion",
    "error_counts",
    "image_results",
    "iou_key",
    "match_records",
    "prf_at",
    "prf_by_iou",
    "prf_section",
]

FP_KINDS = ("duplicate", "localization", "wrong_class", "background")
LOCALIZATION_MIN_IOU = 0.1


@dataclass(frozen=True)
class MatchRecords:
    """Every detection's outcome and kind, and the score of the true positive that found each ground truth."""

    iou_threshold: float
    dets: Detections
    gts: GroundTruths
    outcome: np.ndarray  # int8 [K]: 1 TP, 0 FP, -1 ignored (on a difficult / crowd box)
    kind: np.ndarray  # str [K]: "tp", "ignored" or one of FP_KINDS
    confused_with: np.ndarray  # int64 [K]: for wrong_class, the label of the other-class ground truth; else 0
    gt_found_at: np.ndarray  # float64 [G]: score of the true positive that matched it, -inf when none
    num_gt: dict[int, int]  # non-difficult ground truth per class
    classes: tuple[int, ...]  # the classes evaluated (1..C when num_classes is given)


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU between boxes ``a`` [N,4] and ``b`` [M,4] with the devkit's +1 pixel convention."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    iw, ih = np.moveaxis(np.maximum(hi - lo + 1.0, 0.0), -1, 0)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def match_records(
    detections: Sequence[Mapping[str, Any]],
    ground_truths: Sequence[Mapping[str, Any]],
    iou_threshold: float = 0.5,
    num_classes: int | None = None,
) -> MatchRecords:
    """Devkit matching of all detections (inputs as for ``voc_ap``) with each false positive's kind."""
    dets, gts = parse_aligned(detections, ground_truths)
    seen = np.union1d(dets.labels, gts.labels)
    if num_classes is not None:
        if seen.size and seen.max() > num_classes:
            raise ValueError(f"label {int(seen.max())} is outside 1..{num_classes} (num_classes)")
        classes = tuple(range(1, num_classes + 1))
    else:
        classes = tuple(int(c) for c in seen)
    m = devkit_match(dets, gts, iou_threshold, classes)
    thr = m.iou_threshold
    k = dets.labels.shape[0]
    kind = np.full(k, "background", dtype="<U12")  # fixed-width: comparisons run in C
    kind[m.outcome == 1] = "tp"
    kind[m.outcome == -1] = "ignored"
    fp = m.outcome == 0
    kind[fp & (m.iou > thr)] = "duplicate"
    confused = np.zeros(k, dtype=np.int64)
    # Wrong class: an undecided false positive overlapping another class's ground truth above the threshold.
    open_fp = np.flatnonzero(fp & ~(m.iou > thr))
    gt_bounds = _bounds(gts.image, gts.num_images)
    images, first = np.unique(dets.image[open_fp], return_index=True)  # open_fp is sorted by image
    for img, rows in zip(images, np.split(open_fp, first[1:]) if open_fp.size else [], strict=True):
        g = np.arange(gt_bounds[img], gt_bounds[img + 1])
        if g.size == 0:
            continue
        iou = _iou_matrix(dets.boxes[rows], gts.boxes[g])
        iou[dets.labels[rows][:, None] == gts.labels[g][None, :]] = -np.inf
        best = iou.argmax(axis=1)
        hit = iou[np.arange(rows.size), best] > thr
        kind[rows[hit]] = "wrong_class"
        confused[rows[hit]] = gts.labels[g[best[hit]]]
    local = fp & (kind == "background") & (m.iou >= LOCALIZATION_MIN_IOU)
    kind[local] = "localization"
    found = np.full(gts.labels.shape[0], -np.inf)
    tp = np.flatnonzero(m.outcome == 1)
    found[m.gt[tp]] = dets.scores[tp]
    return MatchRecords(thr, dets, gts, m.outcome, kind, confused, found, m.num_gt, classes)


def _bounds(image: np.ndarray, num_images: int) -> np.ndarray:
    """Row ranges per image of a concatenation sorted by image: rows of image i are [b[i], b[i+1])."""
    return np.searchsorted(image, np.arange(num_images + 1), side="left")


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den > 0 else None


def _prf(tp: int, fp: int, num_gt: int) -> dict[str, Any]:
    """Counts and their precision, recall and F1 = 2TP / (2TP + FP + FN) (None where undefined)."""
    fn = num_gt - tp
    return {
        "tp": int(tp),
        "fp": int(fp),
        "fn": int(fn),
        "num_gt": int(num_gt),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, num_gt),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def prf_at(records: MatchRecords, score: float) -> dict[str, Any]:
    """Precision, recall and F1 at score >= ``score``: overall (pooled counts over classes) and per class."""
    above = records.dets.scores >= score
    tp_mask, fp_mask = above & (records.outcome == 1), above & (records.outcome == 0)
    labels = records.dets.labels
    per_class = {
        c: _prf(
            int((tp_mask & (labels == c)).sum()),
            int((fp_mask & (labels == c)).sum()),
            records.num_gt.get(c, 0),
        )
        for c in records.classes
    }
    num_gt = sum(records.num_gt.get(c, 0) for c in records.classes)
    total = _prf(int(tp_mask.sum()), int(fp_mask.sum()), num_gt)
    return {**total, "per_class": per_class}


def _best_f1_of(scores: np.ndarray, outcome: np.ndarray, num_gt: int) -> dict[str, Any]:
    """The score threshold with the highest F1 over these detections (the highest such score on ties)."""
    none = {
        "best_f1": 0.0 if num_gt else None,
        "best_f1_score": None,
        "best_f1_precision": None,
        "best_f1_recall": 0.0 if num_gt else None,
    }
    order = np.argsort(-scores, kind="stable")
    s, o = scores[order], outcome[order]
    if s.size == 0:
        return none
    tp = np.cumsum(o == 1)
    fp = np.cumsum(o == 0)
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # threshold s[i] keeps everything up to the tie's end
    f1 = 2 * tp[last] / np.maximum(tp[last] + fp[last] + num_gt, 1)
    i = int(np.argmax(f1))
    if f1[i] <= 0:
        return none
    j = last[i]
    return {
        "best_f1": float(f1[i]),
        "best_f1_score": float(s[j]),
        "best_f1_precision": _ratio(tp[j], tp[j] + fp[j]),
        "best_f1_recall": _ratio(tp[j], num_gt),
    }


def best_f1(records: MatchRecords) -> dict[str, Any]:
    """The F1-maximizing score threshold overall (all classes at one threshold) and per class."""
    d = records.dets
    total = sum(records.num_gt.get(c, 0) for c in records.classes)
    per_class = {
        c: _best_f1_of(d.scores[d.labels == c], records.outcome[d.labels == c], records.num_gt.get(c, 0))
        for c in records.classes
    }
    return {**_best_f1_of(d.scores, records.outcome, total), "per_class": per_class}


def prf_section(records: MatchRecords, score: float, class_names: Sequence[str]) -> dict[str, Any]:
    """JSON-ready P/R/F1 at (IoU, score) with the best-F1 threshold, overall and per class by name."""
    at, best = prf_at(records, score), best_f1(records)
    per_class = [
        {
            "class": class_names[c - 1] if c <= len(class_names) else str(c),
            **at["per_class"][c],
            **best["per_class"][c],
        }
        for c in records.classes
    ]
    overall = {k: v for k, v in at.items() if k != "per_class"}
    overall.update({k: v for k, v in best.items() if k != "per_class"})
    return {"iou": records.iou_threshold, "score": float(score), **overall, "per_class": per_class}


@dataclass(frozen=True)
class ImageResult:
    """One image's marks at a score threshold: indices into the records' detections and ground truth."""

    index: int
    tp: np.ndarray  # detection indices
    fp: np.ndarray  # detection indices (kind in records.kind)
    missed: np.ndarray  # ground-truth indices (non-difficult, not found at this score)
    ignored_gt: np.ndarray  # difficult / crowd ground-truth indices

    @property
    def errors(self) -> int:
        return int(self.fp.size + self.missed.size)

    @property
    def f1(self) -> float:
        """Per-image F1 (1.0 for an image with nothing to find and nothing found)."""
        den = 2 * self.tp.size + self.errors
        return 1.0 if den == 0 else 2 * self.tp.size / den


def image_results(records: MatchRecords, score: float) -> list[ImageResult]:
    """Per image, the true positives, false positives and missed ground truth at score >= ``score``."""
    d, g = records.dets, records.gts
    above = d.scores >= score
    tp = np.flatnonzero(above & (records.outcome == 1))
    fp = np.flatnonzero(above & (records.outcome == 0))
    missed = np.flatnonzero(~g.difficult & (records.gt_found_at < score))
    ignored = np.flatnonzero(g.difficult)
    n = g.num_images
    # Every index list is sorted and so is the image of each row: split them at the image boundaries.
    split = [
        np.split(idx, np.searchsorted(image[idx], np.arange(1, n)))
        for idx, image in ((tp, d.image), (fp, d.image), (missed, g.image), (ignored, g.image))
    ]
    return [ImageResult(i, *(parts[i] for parts in split)) for i in range(n)]


def error_counts(records: MatchRecords, score: float) -> dict[int, dict[str, int]]:
    """Per class at score >= ``score``: tp, each false-positive kind, fp, missed and ignored detections."""
    d, g = records.dets, records.gts
    above = d.scores >= score
    top = max(records.classes, default=0) + 1

    def per_class(labels: np.ndarray) -> np.ndarray:
        return np.bincount(labels, minlength=top)

    columns = {"tp": per_class(d.labels[above & (records.outcome == 1)])}
    for kind in FP_KINDS:
        columns[kind] = per_class(d.labels[above & (records.kind == kind)])
    columns["fp"] = per_class(d.labels[above & (records.outcome == 0)])
    columns["missed"] = per_class(g.labels[~g.difficult & (records.gt_found_at < score)])
    columns["ignored"] = per_class(d.labels[above & (records.outcome == -1)])
    return {c: {k: int(v[c]) for k, v in columns.items()} for c in records.classes}


def confusion(records: MatchRecords, score: float) -> np.ndarray:
    """[C+1, C+1] counts at score >= ``score``: row = true class (last row: no object), column = predicted
    class (last column: missed). Diagonal: true positives; off-diagonal: wrong-class false positives; last
    row: the other false positives of each predicted class."""
    n = len(records.classes)
    index = {c: i for i, c in enumerate(records.classes)}
    table = np.zeros((n + 1, n + 1), dtype=np.int64)
    d = records.dets
    to_index = np.zeros(max(records.classes, default=0) + 1, dtype=np.int64)
    to_index[list(records.classes)] = np.arange(n)
    above = d.scores >= score
    col = to_index[d.labels]
    tp = above & (records.kind == "tp")
    wrong = above & (records.kind == "wrong_class")
    other = above & (records.outcome == 0) & ~wrong
    np.add.at(table, (col[tp], col[tp]), 1)
    np.add.at(table, (to_index[records.confused_with[wrong]], col[wrong]), 1)
    np.add.at(table, (np.full(int(other.sum()), n), col[other]), 1)
    for c, row in error_counts(records, score).items():
        table[index[c], n] = row["missed"]
    return table


def iou_key(iou: float) -> str:
    """The results-JSON key of an IoU threshold: "0.5", "0.4"."""
    return f"{float(iou):g}"


def prf_by_iou(
    detections: Sequence[Mapping[str, Any]],
    ground_truths: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    score: float,
    ious: Sequence[float] = (0.4, 0.5),
) -> tuple[dict[str, dict[str, Any]], dict[str, MatchRecords]]:
    """P/R/F1 sections (with the VOC AP at that IoU as ``map``) keyed by ``iou_key``, and their records."""
    from detector.evaluation.voc import voc_ap

    sections, records = {}, {}
    n = len(class_names)
    for iou in sorted({float(i) for i in ious}):
        key = iou_key(iou)
        records[key] = match_records(detections, ground_truths, iou, num_classes=n)
        ap = voc_ap(detections, ground_truths, iou, num_classes=n)
        sec = prf_section(records[key], score, class_names)
        sec["map"] = None if np.isnan(ap["map"]) else float(ap["map"])
        for row, c in zip(sec["per_class"], records[key].classes, strict=True):
            row["ap"] = ap["ap"].get(c)
        sections[key] = sec
    return sections, records
