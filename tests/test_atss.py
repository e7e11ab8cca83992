"""ATSS matching: against a per-image, per-box float64 loop written here, hand-checked cases, and a short
training run of RetinaNet with `model.assigner=atss`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from detector.config import ConfigError, ModelConfig, load_config
from detector.models import build_matcher, build_model
from detector.models.anchors import AnchorGrid
from detector.models.atss import ATSSMatcher
from detector.models.matcher import BACKGROUND, BatchMatcher
from detector.models.retinanet_loss import pad_targets


def reference_atss(gt: np.ndarray, anchors: np.ndarray, per_level: list[int], topk: int) -> list[int]:
    """ATSS for one image, one box at a time, in float64: the spec the batched matcher must equal."""
    anchors = anchors.astype(np.float64)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    area_a = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
    best: dict[int, tuple[float, int]] = {}  # anchor -> (IoU, box)
    for j, box in enumerate(gt.astype(np.float64)):
        centre = (box[:2] + box[2:]) / 2
        candidates: list[int] = []
        start = 0
        for count in per_level:
            idx = np.arange(start, start + count)
            d2 = ((centres[idx] - centre) ** 2).sum(axis=1)
            order = sorted(range(count), key=lambda i: (d2[i], i))  # nearest first, ties: lower index
            candidates += [int(idx[i]) for i in order[: min(topk, count)]]
            start += count
        ious = []
        for a in candidates:
            iw = max(0.0, min(box[2], anchors[a, 2]) - max(box[0], anchors[a, 0]))
            ih = max(0.0, min(box[3], anchors[a, 3]) - max(box[1], anchors[a, 1]))
            inter = iw * ih
            ious.append(inter / ((box[2] - box[0]) * (box[3] - box[1]) + area_a[a] - inter))
        mean = sum(ious) / len(ious)
        std = math.sqrt(sum((v - mean) ** 2 for v in ious) / (len(ious) - 1)) if len(ious) > 1 else 0.0
        for a, v in zip(candidates, ious, strict=True):
            cx, cy = centres[a]
            inside = min(cx - box[0], cy - box[1], box[2] - cx, box[3] - cy) > 0.01
            if v >= mean + std - 1e-6 and inside and (a not in best or v > best[a][0]):
                best[a] = (v, j)
    out = [BACKGROUND] * len(anchors)
    for a, (_, j) in best.items():
        out[a] = j
    return out


def random_boxes(rng: np.random.Generator, count: int, size: int, integer: bool) -> np.ndarray:
    xy = rng.uniform(0, size * 0.8, (count, 2))
    wh = rng.uniform(6, size * 0.5, (count, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, size)], axis=1)
    return (np.round(boxes) if integer else boxes).astype(np.float32)


def batch_matches(matcher: ATSSMatcher, images: list[np.ndarray], anchors, per_level) -> torch.Tensor:
    targets = [
        {"boxes": torch.from_numpy(g), "labels": torch.ones(len(g), dtype=torch.int64)} for g in images
    ]
    gt, _, valid = pad_targets(targets, 1, torch.device("cpu"))
    return matcher(gt, valid, anchors, per_level)


@pytest.mark.parametrize(
    ("scales", "ratios", "topk", "integer"),
    [
        ([1.0, 2 ** (1 / 3), 2 ** (2 / 3)], [0.5, 1.0, 2.0], 9, False),
        ([1.0, 2 ** (1 / 3), 2 ** (2 / 3)], [0.5, 1.0, 2.0], 9, True),  # integer boxes: many equal distances
        ([1.0, 2**0.5], [1.0], 5, True),
        ([1.0], [1.0], 9, False),
    ],
)
def test_batched_matches_equal_the_per_box_loop(scales, ratios, topk, integer) -> None:
    rng = np.random.default_rng(7)
    size = 128
    grid = AnchorGrid([16.0, 32.0, 64.0, 128.0, 256.0], scales, ratios)
    anchors, per_level = grid.grid(
        (size, size), [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)], torch.device("cpu")
    )
    images = [random_boxes(rng, n, size, integer) for n in (5, 0, 1, 8)]
    got = batch_matches(ATSSMatcher(topk), images, anchors, per_level)
    positives = 0
    for i, g in enumerate(images):
        expected = (
            reference_atss(g, anchors.numpy(), per_level, topk) if len(g) else [BACKGROUND] * len(anchors)
        )
        assert got[i].tolist() == expected, f"image {i}"
        positives += sum(e >= 0 for e in expected)
    assert positives >= 14  # every box found positives: the comparison is not between two empty results


def test_hand_checked_single_box() -> None:
    anchors = torch.tensor(
        [[0.0, 0, 10, 10], [10, 0, 20, 10], [0, 10, 10, 20], [20, 20, 30, 30]]
    )  # centres (5,5) (15,5) (5,15) (25,25)
    gt, valid = torch.tensor([[[0.0, 0, 12, 12]]]), torch.tensor([[True]])
    matcher = ATSSMatcher(3)
    # nearest 3 to the centre (6, 6): anchors 0, 1, 2 (1 and 2 tie at distance^2 82)
    assert matcher.candidates(gt, anchors, [4])[0, 0].tolist() == [0, 1, 2]
    # IoUs 100/144, 20/224, 20/224: mean 0.291, std 0.349 -> threshold 0.640: anchor 0 alone
    assert matcher(gt, valid, anchors, [4]).tolist() == [[0, -1, -1, -1]]
    # two candidates (0 and, of the tied pair, the lower index 1): mean + std/sqrt(2)... exceeds the best
    # IoU, so nothing is positive with topk=2; the rule is the paper's, the outcome known
    assert ATSSMatcher(2).candidates(gt, anchors, [4])[0, 0].tolist() == [0, 1]
    assert ATSSMatcher(2)(gt, valid, anchors, [4]).tolist() == [[-1, -1, -1, -1]]
    # levels are separate: with [2, 2] each level gives its 1 nearest anchor, 0 and 2
    assert ATSSMatcher(1).candidates(gt, anchors, [2, 2])[0, 0].tolist() == [0, 2]


def test_single_candidate_has_std_zero_and_is_positive() -> None:
    anchors = torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60]])
    gt, valid = torch.tensor([[[1.0, 1, 11, 11]]]), torch.tensor([[True]])
    # two levels, one candidate each: with two candidates mean + std (a/2 + a/sqrt(2)) exceeds the better
    # IoU a, so nothing is positive (mmdetection alike)
    assert ATSSMatcher(1)(gt, valid, anchors, [1, 1]).tolist() == [[-1, -1]]
    matches = ATSSMatcher(1)(gt, valid, anchors[:1], [1])  # one candidate in all: std would be NaN
    assert matches.tolist() == [[0]]


def test_candidate_centre_must_lie_inside_the_box() -> None:
    anchors = torch.tensor([[0.0, 0, 20, 20], [100, 100, 110, 110], [120, 120, 130, 130]])  # centre (10, 10)
    valid = torch.tensor([[True]])
    # IoU 0.45 against candidates of IoU 0: above mean + std (0.41), but the centre x 10 is outside x2 = 9
    assert ATSSMatcher(3)(torch.tensor([[[0.0, 0, 9, 20]]]), valid, anchors, [3]).tolist() == [[-1, -1, -1]]
    assert ATSSMatcher(3)(torch.tensor([[[0.0, 0, 11, 20]]]), valid, anchors, [3]).tolist() == [[0, -1, -1]]
    # within 0.01 px of the edge counts as outside (the reference implementations' margin)
    assert ATSSMatcher(3)(torch.tensor([[[0.0, 0, 10.005, 20]]]), valid, anchors, [3]).tolist() == [
        [-1, -1, -1]
    ]


def test_anchor_positive_for_several_boxes_takes_the_highest_iou() -> None:
    anchors = torch.tensor([[0.0, 0, 10, 10], [100, 100, 110, 110], [120, 120, 130, 130]])
    low, high = [0.0, 0, 12, 12], [0.0, 0, 10, 11]  # IoU 0.69 and 0.91 with anchor 0, both positive on it
    valid = torch.tensor([[True, True]])
    assert ATSSMatcher(3)(torch.tensor([[low, high]]), valid, anchors, [3])[0, 0] == 1
    assert ATSSMatcher(3)(torch.tensor([[high, low]]), valid, anchors, [3])[0, 0] == 0
    assert ATSSMatcher(3)(torch.tensor([[high, high]]), valid, anchors, [3])[0, 0] == 0  # equal: lower index


def test_empty_images_and_padding() -> None:
    grid = AnchorGrid([16.0, 32.0, 64.0, 128.0, 256.0], [1.0, 2**0.5], [0.5, 1.0, 2.0])
    anchors, per_level = grid.grid((64, 64), [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)], torch.device("cpu"))
    rng = np.random.default_rng(3)
    one, many = random_boxes(rng, 1, 64, False), random_boxes(rng, 6, 64, False)
    empty = np.zeros((0, 4), np.float32)
    matcher = ATSSMatcher(9)
    alone = batch_matches(matcher, [one], anchors, per_level)
    batch = batch_matches(matcher, [one, many, empty], anchors, per_level)  # `one` padded to 6 boxes
    assert torch.equal(batch[0], alone[0]) and (alone[0] == 0).sum() >= 1
    assert (batch[2] == BACKGROUND).all() and batch[1].max() <= 5
    none = batch_matches(matcher, [empty, empty], anchors, per_level)  # no box in the batch: G = 0
    assert none.shape == (2, anchors.shape[0]) and (none == BACKGROUND).all()
    with pytest.raises(ValueError, match="anchors per pyramid level"):
        matcher(torch.zeros(1, 1, 4), torch.ones(1, 1, dtype=torch.bool), anchors)
    with pytest.raises(ValueError, match="do not add up"):
        matcher(torch.zeros(1, 1, 4), torch.ones(1, 1, dtype=torch.bool), anchors, [1, 2])
    with pytest.raises(ValueError, match="topk >= 1"):
        ATSSMatcher(0)


def test_low_precision_anchors_match_as_float32() -> None:
    grid = AnchorGrid([16.0, 32.0, 64.0, 128.0, 256.0], [1.0, 2**0.5], [0.5, 1.0, 2.0])
    anchors, per_level = grid.grid(
        (128, 128), [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)], torch.device("cpu")
    )
    images = [random_boxes(np.random.default_rng(5), 6, 128, True)]  # integers: exact in bfloat16 too
    matcher = ATSSMatcher(9)
    expected = batch_matches(matcher, images, anchors, per_level)
    assert torch.equal(batch_matches(matcher, images, anchors.bfloat16(), per_level), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_equal_the_cpu_ones() -> None:
    grid = AnchorGrid([16.0, 32.0, 64.0, 128.0, 256.0], [1.0, 2**0.5], [0.5, 1.0, 2.0])
    anchors, per_level = grid.grid(
        (256, 256), [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)], torch.device("cpu")
    )
    rng = np.random.default_rng(11)
    images = [random_boxes(rng, n, 256, integer) for n, integer in ((7, True), (0, False), (12, False))]
    targets = [
        {"boxes": torch.from_numpy(g), "labels": torch.ones(len(g), dtype=torch.int64)} for g in images
    ]
    gt, _, valid = pad_targets(targets, 1, torch.device("cpu"))
    expected = ATSSMatcher(9)(gt, valid, anchors, per_level)
    got = ATSSMatcher(9)(gt.cuda(), valid.cuda(), anchors.cuda(), per_level)
    assert torch.equal(got.cpu(), expected)


def test_config_selects_the_assigner_and_names_bad_keys() -> None:
    assert type(build_matcher(ModelConfig())) is BatchMatcher  # default: the IoU matcher, as before
    cfg = load_config(None, ["model.assigner=atss", "model.atss_topk=5"])
    matcher = build_matcher(cfg.model)
    assert isinstance(matcher, ATSSMatcher) and matcher.topk == 5
    with pytest.raises(ConfigError, match="model.assigner = 'simota': expected iou or atss"):
        load_config(None, ["model.assigner=simota"])
    with pytest.raises(ConfigError, match="model.atss_topk"):
        load_config(None, ["model.atss_topk=0"])


def test_retinanet_trains_with_atss_and_the_study_labels_are_atss(monkeypatch) -> None:
    from lit_helpers import disable_loss_compile

    from detector.study.anchors import anchor_logits_and_labels

    disable_loss_compile(monkeypatch)
    torch.manual_seed(0)
    cfg = ModelConfig(assigner="atss")
    cfg.backbone.pretrained = False
    cfg.fpn.channels, cfg.head.channels, cfg.head.depth = 32, 32, 1
    model = build_model(cfg, num_classes=2)
    assert isinstance(model.loss.matcher, ATSSMatcher)
    images = torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8)
    targets = [
        {
            "boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0], [40.0, 30.0, 90.0, 80.0]]),
            "labels": torch.tensor([1, 2]),
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    totals = []
    for _ in range(2):
        losses = model.train()(images, targets)
        total = losses["classification"] + losses["bbox_regression"]
        assert torch.isfinite(total) and losses["bbox_regression"] > 0  # ATSS found positives
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(float(total.detach()))
    assert totals[1] < totals[0]
    logits, labels = anchor_logits_and_labels(model, images, targets)
    _, _, anchors, per_level = model.head_outputs(images)
    gt, _, valid = pad_targets(targets, 2, anchors.device)
    expected = model.loss.matcher(gt, valid, anchors, per_level)
    assert torch.equal(labels.view(2, -1) >= 0, expected >= 0)
    assert int((labels == -2).sum()) == 0 and int((labels >= 0).sum()) >= 2  # no ignore band in ATSS


def test_bench_matcher_runs_both_assigners_and_the_reference(capsys) -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / "bench_matcher.py"
    spec = importlib.util.spec_from_file_location("bench_matcher_tool", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert (
        tool.main(["--size", "128", "--batch", "2", "--boxes", "3", "--repeats", "1", "--threads", "1"]) == 0
    )
    out = capsys.readouterr().out
    assert "atss / iou" in out and "iou speed-up" in out and "load at start" in out and "3069 anchors" in out
