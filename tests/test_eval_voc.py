"""VOC AP: hand-computed cases for each devkit rule, and a cross-check against a loop-based devkit copy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detector.evaluation.voc import ap_from_pr, voc_ap


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


# Two overlapping ground truths of class 1 used by several cases.
G1 = [0, 0, 10, 10]
G2 = [2, 0, 12, 10]


def test_duplicate_is_false_positive_even_when_another_gt_overlaps():
    # d1 matches G1 (TP). d2's best overlap is G1 (IoU .913; .76 with free G2) -> already matched -> FP.
    # d3 matches G2 (TP). tp=[1,1,2], fp=[0,1,1]; recall=[.5,.5,1], precision=[1,.5,2/3].
    # Area: envelope 1 up to recall .5, 2/3 up to 1 -> .5*1 + .5*2/3 = 5/6.
    # 11-point: t in {0,..,.5} (6 points) -> 1; t in {.6,..,1} (5 points) -> 2/3; (6 + 10/3) / 11 = 28/33.
    dets = [det([G1, [0.5, 0, 10.5, 10], G2], [0.9, 0.8, 0.7], [1, 1, 1])]
    gts = [gt([G1, G2], [1, 1])]
    area = voc_ap(dets, gts)
    assert area["ap"][1] == pytest.approx(5 / 6)
    assert area["map"] == pytest.approx(5 / 6)
    np.testing.assert_allclose(area["recall"][1], [0.5, 0.5, 1.0])
    np.testing.assert_allclose(area["precision"][1], [1.0, 0.5, 2 / 3])
    assert voc_ap(dets, gts, use_07_metric=True)["ap"][1] == pytest.approx(28 / 33)


def test_difficult_matches_are_neither_tp_nor_fp_and_do_not_count_toward_recall():
    # G2 is difficult, so npos = 1. d1 hits G2 -> ignored; d2 is a plain FP; d3 hits G1 -> TP.
    # tp=[0,0,1], fp=[0,1,1]: recall=[0,0,1], precision=[0,0,.5] -> AP .5 (both metrics).
    # (Were G2 not difficult: d1 TP, d2 FP, d3 TP -> 5/6; were d1 a FP: 1/3.)
    dets = [det([G2, [50, 50, 60, 60], G1], [0.9, 0.8, 0.7], [1, 1, 1])]
    gts = [gt([G1, G2], [1, 1], difficult=[False, True])]
    result = voc_ap(dets, gts)
    assert result["num_gt"] == {1: 1}
    assert result["ap"][1] == pytest.approx(0.5)
    assert voc_ap(dets, gts, use_07_metric=True)["ap"][1] == pytest.approx(0.5)
    gts_plain = [gt([G1, G2], [1, 1])]
    assert voc_ap(dets, gts_plain)["ap"][1] == pytest.approx(5 / 6)


def test_detection_whose_best_gt_is_difficult_is_ignored_even_if_it_overlaps_a_normal_gt():
    # d1 = G2 exactly: IoU 1 with difficult G2 and .69 with G1 (inter 9*11=99, union 143). The best is the
    # difficult one -> ignored, and G1 stays free. d2 = G1 -> TP. recall=[0,1], precision=[0,1] -> AP 1.
    dets = [det([G2, G1], [0.9, 0.5], [1, 1])]
    gts = [gt([G1, G2], [1, 1], difficult=[False, True])]
    assert voc_ap(dets, gts)["ap"][1] == pytest.approx(1.0)
    # Several detections on a difficult object are all ignored (the devkit never marks a difficult gt found).
    dets = [det([G2, G2, G2, G1], [0.9, 0.8, 0.7, 0.6], [1, 1, 1, 1])]
    assert voc_ap(dets, gts)["ap"][1] == pytest.approx(1.0)


def test_iou_uses_plus_one_convention_and_strictly_greater_threshold():
    # With +1 widths: gt [0,0,9,9] has area 10*10=100, det [0,0,9,4] has area 10*5=50 inside it: IoU = .5.
    # Without the +1 the IoU would be 4*9/81 = .444. At threshold .5 the match needs > .5 -> FP -> AP 0.
    dets = [det([[0, 0, 9, 4]], [0.9], [1])]
    gts = [gt([[0, 0, 9, 9]], [1])]
    assert voc_ap(dets, gts, iou_threshold=0.5)["ap"][1] == 0.0
    assert voc_ap(dets, gts, iou_threshold=0.49)["ap"][1] == pytest.approx(1.0)
    assert voc_ap(dets, gts, iou_threshold=0.45)["ap"][1] == pytest.approx(1.0)  # .444 would fail this


def test_empty_classes_and_class_with_detections_but_no_ground_truth():
    # Image 0: class 1 found perfectly (AP 1). Class 2 has ground truth but no detection (AP 0, in the mean).
    # Class 3 has detections but no ground truth: left out. Class 4 has only a difficult gt: left out.
    # Class 5 (num_classes=5) has nothing: left out. mAP = (1 + 0) / 2.
    dets = [det([G1, [30, 30, 40, 40]], [0.9, 0.8], [1, 3]), det([], [], [])]
    gts = [gt([G1, [20, 20, 30, 30]], [1, 2]), gt([[5, 5, 15, 15]], [4], difficult=[True])]
    result = voc_ap(dets, gts, num_classes=5)
    assert result["ap"] == {1: pytest.approx(1.0), 2: 0.0}
    assert result["map"] == pytest.approx(0.5)
    assert result["num_gt"] == {1: 1, 2: 1, 3: 0, 4: 0, 5: 0}
    assert result["precision"][2].size == 0 and result["recall"][2].size == 0
    assert set(result["precision"]) == {1, 2}


def test_detections_on_image_without_ground_truth_are_false_positives():
    # Image 1 has no gt. d(.9) on image 1 is FP, d(.8) on image 0 is TP: recall [0,1], precision [0,.5] -> .5.
    dets = [det([G1], [0.8], [1]), det([G1], [0.9], [1])]
    gts = [gt([G1], [1]), gt([], [])]
    assert voc_ap(dets, gts)["ap"][1] == pytest.approx(0.5)


def test_no_ground_truth_at_all_gives_nan_map():
    result = voc_ap([det([G1], [0.9], [1])], [gt([], [])])
    assert np.isnan(result["map"]) and result["ap"] == {}


def test_torch_tensors_and_numpy_agree():
    rng = np.random.default_rng(0)
    dets, gts = random_dataset(rng, num_images=6, num_classes=3)
    as_torch = lambda d: {k: torch.as_tensor(v) for k, v in d.items()}
    a = voc_ap(dets, gts)
    b = voc_ap([as_torch(d) for d in dets], [as_torch(g) for g in gts])
    assert a["ap"] == b["ap"]
    # float32 tensors (as models return) work too
    f32 = [{k: (v.float() if v.is_floating_point() else v) for k, v in as_torch(d).items()} for d in dets]
    assert voc_ap(f32, gts)["map"] == pytest.approx(a["map"], abs=1e-3)


def test_ground_truth_without_difficult_key_means_not_difficult():
    gts = [{"boxes": np.array([G1], float), "labels": np.array([1])}]
    assert voc_ap([det([G1], [0.9], [1])], gts)["ap"][1] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("dets", "gts", "message"),
    [
        ([det([G1], [0.9], [1])], [], "1 images but ground_truths has 0"),
        ([{"boxes": np.zeros((1, 3)), "scores": [0.9], "labels": [1]}], [gt([G1], [1])], r"\[N, 4\]"),
        ([det([G1], [0.9, 0.8], [1])], [gt([G1], [1])], "scores"),
        ([det([G1], [0.9], [0])], [gt([G1], [1])], "1..C"),
        ([det([[5, 0, 1, 10]], [0.9], [1])], [gt([G1], [1])], "not xyxy"),
        ([{"boxes": np.zeros((0, 4)), "labels": []}], [gt([G1], [1])], "missing key 'scores'"),
        ([det([G1], [0.9], [1])], [{"boxes": np.array([G1], float), "labels": np.array([1.5])}], "integers"),
        ([det([G1], [float("nan")], [1])], [gt([G1], [1])], "NaN"),
    ],
)
def test_bad_input_gives_clear_errors(dets, gts, message):
    with pytest.raises((ValueError, KeyError, TypeError), match=message):
        voc_ap(dets, gts)


def test_bad_arguments():
    with pytest.raises(ValueError, match="iou_threshold"):
        voc_ap([], [], iou_threshold=1.0)
    with pytest.raises(ValueError, match="outside 1..2"):
        voc_ap([det([G1], [0.9], [3])], [gt([G1], [1])], num_classes=2)
    with pytest.raises(TypeError, match="list"):
        voc_ap(det([G1], [0.9], [1]), [gt([G1], [1])])


# ------------------------------------------------------------------------------------------------------------
# Cross-check: a straight copy of the devkit's voc_eval logic (py-faster-rcnn's voc_eval.py), loops and all.


def devkit_ap(rec, prec, use_07_metric):
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def devkit_voc_eval(dets, gts, cls, ovthresh, use_07_metric):
    class_recs = {}
    npos = 0
    for i, g in enumerate(gts):
        keep = g["labels"] == cls
        difficult = g["difficult"][keep].astype(bool)
        class_recs[i] = {"bbox": g["boxes"][keep], "difficult": difficult, "det": [False] * int(keep.sum())}
        npos = npos + sum(~difficult)
    image_ids, confidence, boxes = [], [], []
    for i, d in enumerate(dets):
        for k in np.flatnonzero(d["labels"] == cls):
            image_ids.append(i)
            confidence.append(d["scores"][k])
            boxes.append(d["boxes"][k])
    confidence = np.array(confidence)
    BB = np.array(boxes).reshape(-1, 4)
    sorted_ind = np.argsort(-confidence, kind="stable")  # the devkit's argsort; scores here are distinct
    BB = BB[sorted_ind, :]
    image_ids = [image_ids[x] for x in sorted_ind]
    nd = len(image_ids)
    tp = np.zeros(nd)
    fp = np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = BB[d, :].astype(float)
        ovmax = -np.inf
        BBGT = R["bbox"].astype(float)
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
            ih = np.maximum(iymax - iymin + 1.0, 0.0)
            inters = iw * ih
            uni = (
                (bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                + (BBGT[:, 2] - BBGT[:, 0] + 1.0) * (BBGT[:, 3] - BBGT[:, 1] + 1.0)
                - inters
            )
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > ovthresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.0
                    R["det"][jmax] = 1
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp = np.cumsum(fp)
    tp = np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return rec, prec, devkit_ap(rec, prec, use_07_metric), npos


def random_dataset(rng, num_images, num_classes, grid=False):
    """Clustered boxes so that matches, duplicates, near misses and difficult hits all occur."""
    dets, gts = [], []
    for _ in range(num_images):
        g = int(rng.integers(0, 6))
        xy = rng.uniform(0, 200, size=(g, 2))
        wh = rng.uniform(8, 60, size=(g, 2))
        gboxes = np.concatenate([xy, xy + wh], axis=1)
        if grid:
            gboxes = np.round(gboxes / 4) * 4  # coarse coordinates: exact IoU ties and equal boxes occur
        glabels = rng.integers(1, num_classes + 1, size=g)
        difficult = rng.random(g) < 0.2
        gts.append({"boxes": gboxes, "labels": glabels, "difficult": difficult})
        k = int(rng.integers(0, 10))
        src = rng.integers(0, max(g, 1), size=k)
        base = gboxes[src] if g else rng.uniform(0, 200, size=(k, 4))
        jitter = rng.normal(0, 6, size=(k, 4))
        dboxes = base + jitter
        if grid:
            dboxes = np.round(dboxes / 4) * 4
        dboxes[:, 2:] = np.maximum(dboxes[:, 2:], dboxes[:, :2])
        labels = np.where(rng.random(k) < 0.8, glabels[src] if g else 1, rng.integers(1, num_classes + 1, k))
        dets.append({"boxes": dboxes, "scores": rng.random(k), "labels": labels.astype(np.int64)})
    return dets, gts


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("use_07_metric", [False, True])
def test_matches_loop_based_devkit_on_random_data(seed, use_07_metric):
    rng = np.random.default_rng(seed)
    num_classes = 4
    dets, gts = random_dataset(rng, num_images=40, num_classes=num_classes, grid=seed % 2 == 1)
    for thr in (0.5, 0.3, 0.7):
        result = voc_ap(dets, gts, iou_threshold=thr, use_07_metric=use_07_metric, num_classes=num_classes)
        aps = []
        for cls in range(1, num_classes + 1):
            if sum(int((~g["difficult"][g["labels"] == cls]).sum()) for g in gts) == 0:
                assert cls not in result["ap"]
                continue
            rec, prec, ap, npos = devkit_voc_eval(dets, gts, cls, thr, use_07_metric)
            assert result["num_gt"][cls] == npos
            assert result["ap"][cls] == ap  # bit-identical: same operations in the same order
            np.testing.assert_array_equal(result["recall"][cls], rec)
            np.testing.assert_array_equal(result["precision"][cls], prec)
            aps.append(ap)
        assert result["map"] == pytest.approx(np.mean(aps))


def test_iou_chunking_gives_the_same_result(monkeypatch):
    import detector.evaluation.voc as voc

    dets, gts = random_dataset(np.random.default_rng(7), num_images=30, num_classes=2)
    full = voc_ap(dets, gts)
    monkeypatch.setattr(voc, "_IOU_CHUNK_ELEMENTS", 3)
    assert voc_ap(dets, gts)["ap"] == full["ap"]


def test_ap_from_pr_edge_cases():
    # Perfect curve: AP 1 for both metrics; empty curve: 0.
    assert ap_from_pr(np.array([0.5, 1.0]), np.array([1.0, 1.0])) == pytest.approx(1.0)
    assert ap_from_pr(np.array([0.5, 1.0]), np.array([1.0, 1.0]), use_07_metric=True) == pytest.approx(1.0)
    assert ap_from_pr(np.array([]), np.array([])) == 0.0
    assert ap_from_pr(np.array([]), np.array([]), use_07_metric=True) == 0.0
    # Recall reaching only .25 with precision 1: area .25; 11-point: t in {0, .1, .2} -> 3/11.
    assert ap_from_pr(np.array([0.25]), np.array([1.0])) == pytest.approx(0.25)
    assert ap_from_pr(np.array([0.25]), np.array([1.0]), use_07_metric=True) == pytest.approx(3 / 11)


def linear_scores(n):
    return np.linspace(1.0, 0.5, n)


def test_perfect_detections_and_image_order_invariance():
    dets, gts = random_dataset(np.random.default_rng(11), num_images=20, num_classes=3)
    perfect = [{**g, "scores": linear_scores(len(g["boxes"]))} for g in gts]
    result = voc_ap(perfect, gts)
    assert result["ap"] and all(v == pytest.approx(1.0) for v in result["ap"].values())
    # shuffling the images (scores are distinct) does not change any AP
    order = np.random.default_rng(1).permutation(len(gts))
    shuffled = voc_ap([dets[i] for i in order], [gts[i] for i in order])
    assert shuffled["ap"] == pytest.approx(voc_ap(dets, gts)["ap"])


def test_plain_python_lists_are_accepted():
    dets = [{"boxes": [[0, 0, 10, 10]], "scores": [0.9], "labels": [1]}]
    gts = [{"boxes": [[0, 0, 10, 10]], "labels": [1], "difficult": [False]}]
    assert voc_ap(dets, gts)["map"] == pytest.approx(1.0)
