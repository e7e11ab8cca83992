"""Precision / recall / F1, best-F1 threshold and false-positive kinds from the devkit's own matching."""

from __future__ import annotations

import numpy as np
import pytest
from test_eval_voc import det, devkit_voc_eval, gt, random_dataset

from detector.evaluation.matching import (
    best_f1,
    confusion,
    error_counts,
    image_results,
    match_records,
    prf_at,
    prf_section,
)
from detector.evaluation.voc import voc_ap

A, B, C = [0, 0, 9, 9], [20, 0, 29, 9], [40, 0, 49, 9]  # 10 x 10 px boxes (+1 convention: area 100)


def case():
    """Image 0: a TP, a duplicate, a localization (IoU exactly 0.5), a wrong class, a background FP and a
    low-scoring TP; image 1: a detection on a difficult box and a missed box of class 2."""
    dets = [
        det(
            [A, A, [20, 0, 24, 9], C, [100, 100, 109, 109], C],
            [0.9, 0.8, 0.7, 0.6, 0.5, 0.2],
            [1, 1, 1, 1, 2, 2],
        ),
        det([A], [0.95], [1]),
    ]
    gts = [gt([A, B, C], [1, 1, 2]), gt([A, [50, 50, 59, 59]], [1, 2], [True, False])]
    return dets, gts


def test_kinds_of_each_detection_follow_the_devkit_rules():
    rec = match_records(*case(), iou_threshold=0.5, num_classes=2)
    kinds = ["tp", "duplicate", "localization", "wrong_class", "background", "tp", "ignored"]
    assert rec.kind.tolist() == kinds
    assert rec.confused_with.tolist() == [0, 0, 0, 2, 0, 0, 0]
    # At IoU 0.4 the half-overlapping box (IoU 0.5) is a true positive for B.
    rec40 = match_records(*case(), iou_threshold=0.4, num_classes=2)
    assert rec40.kind.tolist()[:3] == ["tp", "duplicate", "tp"]


def test_precision_recall_f1_by_hand():
    rec = match_records(*case(), iou_threshold=0.5, num_classes=2)
    at = prf_at(rec, 0.3)
    one, two = at["per_class"][1], at["per_class"][2]
    assert (one["tp"], one["fp"], one["fn"], one["num_gt"]) == (1, 3, 1, 2)
    assert one["precision"] == pytest.approx(0.25) and one["recall"] == pytest.approx(0.5)
    assert one["f1"] == pytest.approx(1 / 3)
    assert (two["tp"], two["fp"], two["fn"]) == (0, 1, 2)
    assert two["precision"] == 0.0 and two["recall"] == 0.0 and two["f1"] == 0.0
    assert (at["tp"], at["fp"], at["fn"]) == (1, 4, 3)
    assert at["precision"] == pytest.approx(0.2) and at["recall"] == pytest.approx(0.25)
    assert at["f1"] == pytest.approx(2 / 9)
    at0 = prf_at(rec, 0.0)
    assert at0["per_class"][2]["f1"] == pytest.approx(0.5)
    at40 = prf_at(match_records(*case(), iou_threshold=0.4, num_classes=2), 0.3)
    assert at40["per_class"][1]["precision"] == pytest.approx(0.5)
    assert at40["per_class"][1]["recall"] == pytest.approx(1.0)


def test_best_f1_threshold_by_hand_highest_score_wins_ties():
    best = best_f1(match_records(*case(), iou_threshold=0.5, num_classes=2))
    assert best["per_class"][1]["best_f1"] == pytest.approx(2 / 3)
    assert best["per_class"][1]["best_f1_score"] == pytest.approx(0.9)
    assert best["per_class"][1]["best_f1_precision"] == 1.0
    assert best["per_class"][2]["best_f1_score"] == pytest.approx(0.2)
    assert best["per_class"][2]["best_f1"] == pytest.approx(0.5)
    # Overall F1 is 0.4 at 0.9 (1 TP of 4) and again at 0.2 (2 TP, 4 FP): the higher threshold is reported.
    assert best["best_f1"] == pytest.approx(0.4)
    assert best["best_f1_score"] == pytest.approx(0.9)


def test_no_detections_and_no_ground_truth():
    rec = match_records([det(np.zeros((0, 4)), [], [])], [gt([A], [1])], num_classes=2)
    sec = prf_section(rec, 0.3, ["a", "b"])
    assert sec["precision"] is None and sec["recall"] == 0.0 and sec["f1"] == 0.0
    assert sec["best_f1"] == 0.0 and sec["best_f1_score"] is None
    b = sec["per_class"][1]
    assert b["class"] == "b" and b["recall"] is None and b["f1"] is None and b["best_f1"] is None


def test_image_results_error_counts_and_confusion_by_hand():
    rec = match_records(*case(), iou_threshold=0.5, num_classes=2)
    img0, img1 = image_results(rec, 0.3)
    assert img0.tp.tolist() == [0] and img0.fp.tolist() == [1, 2, 3, 4]
    assert img0.missed.tolist() == [1, 2]  # B, and C (found only at 0.2)
    assert img0.errors == 6 and img0.f1 == pytest.approx(2 / 8)
    assert img1.tp.size == 0 and img1.fp.size == 0 and img1.missed.tolist() == [4]
    assert img1.ignored_gt.tolist() == [3]
    counts = error_counts(rec, 0.3)
    assert counts[1] == {
        "tp": 1,
        "duplicate": 1,
        "localization": 1,
        "wrong_class": 1,
        "background": 0,
        "fp": 3,
        "missed": 1,
        "ignored": 1,
    }
    assert counts[2]["background"] == 1 and counts[2]["missed"] == 2
    np.testing.assert_array_equal(confusion(rec, 0.3), [[1, 0, 1], [1, 0, 2], [2, 1, 0]])


@pytest.mark.parametrize("seed", range(4))
def test_counts_at_every_threshold_equal_the_loop_based_devkit(seed):
    """TP / FP above a score are the devkit's own counts on the detections above that score, and the
    points of voc_ap's precision/recall curves."""
    rng = np.random.default_rng(seed)
    dets, gts = random_dataset(rng, num_images=30, num_classes=3, grid=seed % 2 == 1)
    for iou in (0.4, 0.5):
        rec = match_records(dets, gts, iou, num_classes=3)
        curves = voc_ap(dets, gts, iou, num_classes=3)
        for score in (0.0, 0.25, 0.5, 0.8):
            at = prf_at(rec, score)
            kept = [{k: v[d["scores"] >= score] for k, v in d.items()} for d in dets]
            for cls in (1, 2, 3):
                if rec.num_gt[cls] == 0:
                    continue
                recall, prec, _, npos = devkit_voc_eval(kept, gts, cls, iou, False)
                mine = at["per_class"][cls]
                assert mine["num_gt"] == npos
                if not recall.size:
                    assert mine["tp"] == mine["fp"] == 0
                    continue
                tp = int(round(recall[-1] * npos))
                assert mine["tp"] == tp
                if tp:  # precision = tp / (tp + fp) gives fp back
                    assert mine["fp"] == int(round(tp / prec[-1])) - tp
                # The same point on voc_ap's curves, after the n highest-scoring detections of the class.
                n = recall.size
                assert curves["recall"][cls][n - 1] == pytest.approx(mine["recall"])
                if tp:
                    assert curves["precision"][cls][n - 1] == pytest.approx(mine["precision"])


def test_f1_and_counts_agree_with_image_results():
    dets, gts = random_dataset(np.random.default_rng(11), num_images=25, num_classes=3)
    rec = match_records(dets, gts, 0.5, num_classes=3)
    at = prf_at(rec, 0.4)
    images = image_results(rec, 0.4)
    assert sum(r.tp.size for r in images) == at["tp"]
    assert sum(r.fp.size for r in images) == at["fp"]
    assert sum(r.missed.size for r in images) == at["fn"]
    assert at["f1"] == pytest.approx(2 * at["precision"] * at["recall"] / (at["precision"] + at["recall"]))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("eval.iou=1.0", "eval.iou"),
        ("eval.iou=0", "eval.iou"),
        ("eval.score=1.5", "eval.score"),
        ("eval.score=-0.1", "eval.score"),
    ],
)
def test_eval_settings_are_checked(override, key):
    from detector.config import ConfigError, load_config

    assert (load_config().eval.iou, load_config().eval.score) == (0.5, 0.3)
    assert load_config(None, ["eval.iou=0.4"]).eval.iou == 0.4
    with pytest.raises(ConfigError, match=key):
        load_config(None, [override])
