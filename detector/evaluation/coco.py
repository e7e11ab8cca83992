"""COCO-style AP (AP, AP50, AP75, APs, APm, APl, and the ARs) through pycocotools, built in memory.

Boxes become COCO ``xywh`` without the VOC +1, areas are box areas ``w * h``. Difficult ground truth is
marked ``iscrowd=1``: pycocotools' ``COCOeval._prepare`` overwrites any ``ignore`` field with ``iscrowd``,
so ``iscrowd`` is the only flag it honours. A crowd box is neither a true positive nor a false negative, and
detections on it (matched by intersection over the detection's area, as COCO does for crowds) are ignored,
duplicates included, like the VOC devkit's difficult objects. Both COCO objects are built directly (not with
``loadRes``, which fails on an empty result list), so no detections give 0 where there is ground truth.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.evaluation.voc import Detections, GroundTruths, parse_aligned

__all__ = ["COCO_METRICS", "coco_ap", "to_coco"]

# The order of COCOeval.stats for bounding boxes.
COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _xywh(boxes: np.ndarray) -> np.ndarray:
    out = boxes.copy()
    out[:, 2:] -= out[:, :2]
    return out


def to_coco(
    dets: Detections, gts: GroundTruths, class_names: Sequence[str] | None = None
) -> tuple[COCO, COCO]:
    """Ground-truth and detection ``COCO`` objects: image ids 1..N, category id = label, ann ids from 1."""
    num_classes = len(class_names) if class_names is not None else 0
    top = int(max(dets.labels.max(initial=0), gts.labels.max(initial=0)))
    if class_names is not None and top > num_classes:
        raise ValueError(f"label {top} is outside 1..{num_classes} (len(class_names)={num_classes})")
    num_classes = max(num_classes, top)
    names = list(class_names) if class_names is not None else [str(c) for c in range(1, num_classes + 1)]
    categories = [{"id": c, "name": names[c - 1]} for c in range(1, num_classes + 1)]
    images = [{"id": i + 1} for i in range(gts.num_images)]

    gt_xywh = _xywh(gts.boxes)
    gt_anns = [
        {
            "id": k + 1,  # COCOeval treats a matched id of 0 as "unmatched": ids start at 1
            "image_id": int(gts.image[k]) + 1,
            "category_id": int(gts.labels[k]),
            "bbox": gt_xywh[k].tolist(),
            "area": float(gt_xywh[k, 2] * gt_xywh[k, 3]),
            "iscrowd": int(gts.difficult[k]),
        }
        for k in range(gt_xywh.shape[0])
    ]
    det_xywh = _xywh(dets.boxes)
    det_anns = [
        {
            "id": k + 1,
            "image_id": int(dets.image[k]) + 1,
            "category_id": int(dets.labels[k]),
            "bbox": det_xywh[k].tolist(),
            "area": float(det_xywh[k, 2] * det_xywh[k, 3]),
            "score": float(dets.scores[k]),
            "iscrowd": 0,
        }
        for k in range(det_xywh.shape[0])
    ]
    coco_gt, coco_dt = COCO(), COCO()
    coco_gt.dataset = {"images": images, "categories": categories, "annotations": gt_anns}
    coco_dt.dataset = {"images": list(images), "categories": list(categories), "annotations": det_anns}
    coco_gt.createIndex()
    coco_dt.createIndex()
    return coco_gt, coco_dt


def coco_ap(
    detections: Sequence[Mapping[str, Any]],
    ground_truths: Sequence[Mapping[str, Any]],
    class_names: Sequence[str] | None = None,
    *,
    verbose: bool = False,
) -> dict[str, float]:
    """COCO box metrics of per-image detections against ground truth (same inputs as ``voc_ap``).

    Returns ``AP`` (IoU .50:.95), ``AP50``, ``AP75``, ``APs``/``APm``/``APl`` (box area < 32^2, < 96^2,
    larger) and the average recalls ``AR1``, ``AR10``, ``AR100``, ``ARs``, ``ARm``, ``ARl`` (at most 100
    detections per image). As in pycocotools, a metric is -1 when no ground truth falls in its area range.
    ``verbose`` lets pycocotools print its usual summary; otherwise its output is captured.
    """
    dets, gts = parse_aligned(detections, ground_truths)
    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with sink:
        coco_gt, coco_dt = to_coco(dets, gts, class_names)
        if gts.num_images == 0 or not coco_gt.getCatIds():
            return dict.fromkeys(COCO_METRICS, -1.0)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) for name, value in zip(COCO_METRICS, evaluator.stats, strict=True)}
