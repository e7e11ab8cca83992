"""COCO AP: equal to pycocotools called directly (loadRes path), and the edge cases pycocotools trips on."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.evaluation.coco import COCO_METRICS, coco_ap


def det(boxes, scores, labels):
    return {
        "boxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        "scores": np.asarray(scores, dtype=np.float64),
        "labels": np.asarray(labels, dtype=np.int64),
    }


def gt(boxes, labels, difficult=None):
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    difficult = np.zeros(len(boxes), bool) if difficult is None else np.asarray(difficult, bool)
    return {"boxes": boxes, "labels": np.asarray(labels, dtype=np.int64), "difficult": difficult}


def pycocotools_direct(dets, gts, num_classes):
    """The textbook pycocotools recipe: a GT json dict, a results list through loadRes, COCOeval."""
    images, annotations = [], []
    for i, g in enumerate(gts):
        images.append({"id": i + 1})
        for box, label, difficult in zip(g["boxes"], g["labels"], g["difficult"], strict=True):
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(label),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": int(difficult),
                }
            )
    results = []
    for i, d in enumerate(dets):
        for box, score, label in zip(d["boxes"], d["scores"], d["labels"], strict=True):
            x1, y1, x2, y2 = (float(v) for v in box)
            results.append(
                {"image_id": i + 1, "category_id": int(label), "bbox": [x1, y1, x2 - x1, y2 - y1],
                 "score": float(score)}
            )
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": images,
            "categories": [{"id": c, "name": str(c)} for c in range(1, num_classes + 1)],
            "annotations": annotations,
        }
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return dict(zip(COCO_METRICS, evaluator.stats.tolist(), strict=True))


def scaled_dataset(seed, num_images=25, num_classes=3):
    """Jittered copies of random ground truth (plus strays), sizes spanning COCO's small, medium and large."""
    rng = np.random.default_rng(seed)
    dets, gts = [], []
    for _ in range(num_images):
        g = int(rng.integers(0, 6))
        xy = rng.uniform(0, 500, size=(g, 2))
        gboxes = np.concatenate([xy, xy + rng.uniform(10, 150, size=(g, 2))], axis=1)
        glabels = rng.integers(1, num_classes + 1, size=g)
        gts.append({"boxes": gboxes, "labels": glabels, "difficult": rng.random(g) < 0.2})
        k = int(rng.integers(0, 10))
        src = rng.integers(0, max(g, 1), size=k)
        base = gboxes[src] if g else rng.uniform(0, 500, size=(k, 4))
        dboxes = base + rng.normal(0, 8, size=(k, 4))
        dboxes[:, 2:] = np.maximum(dboxes[:, 2:], dboxes[:, :2] + 1)
        labels = rng.integers(1, num_classes + 1, size=k)
        if g:
            labels = np.where(rng.random(k) < 0.8, glabels[src], labels)
        dets.append({"boxes": dboxes, "scores": rng.random(k), "labels": labels})
    return dets, gts


@pytest.mark.parametrize("seed", range(3))
def test_matches_pycocotools_called_directly(seed):
    dets, gts = scaled_dataset(seed)
    ours = coco_ap(dets, gts)
    ref = pycocotools_direct(dets, gts, num_classes=3)
    assert set(ours) == set(COCO_METRICS)
    for key in COCO_METRICS:
        assert ours[key] == pytest.approx(ref[key], abs=1e-12), key
    assert 0.0 < ours["AP"] < ours["AP50"] < 1.0  # a real, imperfect detector


def test_accepts_torch_tensors():
    dets, gts = scaled_dataset(3)
    as_torch = lambda d: {k: torch.as_tensor(v) for k, v in d.items()}
    assert coco_ap([as_torch(d) for d in dets], [as_torch(g) for g in gts]) == coco_ap(dets, gts)


def test_perfect_detections_score_one():
    gts = [gt([[0, 0, 20, 20], [50, 50, 150, 150]], [1, 2]), gt([[10, 10, 60, 70]], [1])]
    dets = [det(g["boxes"], np.linspace(0.9, 0.5, len(g["boxes"])), g["labels"]) for g in gts]
    result = coco_ap(dets, gts)
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        assert result[key] == pytest.approx(1.0), key


def test_no_detections_at_all_gives_zeros_where_there_is_ground_truth():
    # pycocotools' loadRes([]) raises IndexError; coco_ap handles it. Only small and medium objects here,
    # so APl has no ground truth and keeps pycocotools' -1.
    gts = [gt([[0, 0, 20, 20]], [1]), gt([[10, 10, 60, 70]], [2])]
    dets = [det([], [], []), det([], [], [])]
    result = coco_ap(dets, gts)
    assert result["AP"] == result["AP50"] == result["APs"] == result["APm"] == result["AR100"] == 0.0
    assert result["APl"] == -1.0


def test_image_without_detections_counts_its_ground_truth_as_missed():
    # Image 0 found perfectly, image 1 (one object) has no detections: recall 1/2, AP50 = 0.5 (101-point).
    gts = [gt([[0, 0, 40, 40]], [1]), gt([[10, 10, 60, 70]], [1])]
    dets = [det([[0, 0, 40, 40]], [0.9], [1]), det([], [], [])]
    result = coco_ap(dets, gts)
    assert result["AP50"] == pytest.approx(pycocotools_direct(dets, gts, 1)["AP50"])
    assert result["AP50"] == pytest.approx(51 / 101)  # precision 1 at recall thresholds 0, .01, ..., .50
    assert result["AR100"] == pytest.approx(0.5)


def test_difficult_ground_truth_is_neither_missed_nor_a_false_positive_source():
    boxes = [[0, 0, 40, 40], [100, 100, 160, 150]]
    found_both = [det(boxes, [0.9, 0.8], [1, 1])]
    found_first = [det(boxes[:1], [0.9], [1])]
    with_difficult = [gt(boxes, [1, 1], difficult=[False, True])]
    plain = [gt(boxes, [1, 1])]
    assert coco_ap(found_first, with_difficult)["AP"] == pytest.approx(1.0)  # not a false negative
    assert coco_ap(found_both, with_difficult)["AP"] == pytest.approx(1.0)  # its detection is ignored
    # duplicates on a difficult object are ignored too (VOC devkit behaviour)
    dup = [det(boxes + [boxes[1]], [0.9, 0.95, 0.85], [1, 1, 1])]
    assert coco_ap(dup, with_difficult)["AP"] == pytest.approx(1.0)
    assert coco_ap(found_first, plain)["AR100"] == pytest.approx(0.5)  # without the flag it is missed


def test_detections_on_empty_images_are_false_positives():
    gts = [gt([[0, 0, 40, 40]], [1]), gt([], [])]
    dets = [det([[0, 0, 40, 40]], [0.5], [1]), det([[0, 0, 40, 40]], [0.9], [1])]
    result = coco_ap(dets, gts)
    assert result["AP50"] == pytest.approx(pycocotools_direct(dets, gts, 1)["AP50"])
    assert result["AP50"] < 1.0


def test_no_ground_truth_gives_minus_one():
    assert coco_ap([det([], [], [])], [gt([], [])])["AP"] == -1.0
    assert coco_ap([], [])["AP"] == -1.0
    assert coco_ap([det([[0, 0, 5, 5]], [0.9], [1])], [gt([], [])])["AP"] == -1.0


def test_class_names_and_errors():
    gts = [gt([[0, 0, 40, 40]], [2])]
    dets = [det([[0, 0, 40, 40]], [0.9], [2])]
    assert coco_ap(dets, gts, class_names=["cat", "dog"])["AP"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"outside 1..1"):
        coco_ap(dets, gts, class_names=["cat"])
    with pytest.raises(ValueError, match="1 images but ground_truths has 2"):
        coco_ap(dets, gts + gts)


def test_quiet_by_default_and_verbose_on_request(capsys):
    gts = [gt([[0, 0, 40, 40]], [1])]
    dets = [det([[0, 0, 40, 40]], [0.9], [1])]
    coco_ap(dets, gts)
    assert capsys.readouterr().out == ""
    coco_ap(dets, gts, verbose=True)
    assert "Average Precision" in capsys.readouterr().out
