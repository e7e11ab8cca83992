"""Letterbox and augmentation pipelines: boxes stay inside, stay on their pixels, and map back exactly."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.data.letterbox import boxes_to_original
from detector.data.transforms import PAD_FILL, build_eval_transforms, build_train_transforms

PALETTE = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255)]
FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _cfg(size=64, hflip=True, vflip=True, color_jitter=False, scale_jitter=0.0):
    return SimpleNamespace(
        size=size, hflip=hflip, vflip=vflip, color_jitter=color_jitter, scale_jitter=scale_jitter
    )


@st.composite
def painted_scenes(draw):
    """An image with up to 4 non-overlapping integer boxes, each painted a unique colour on black."""
    height = draw(st.integers(24, 180))
    width = draw(st.integers(24, 180))
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    boxes, labels = [], []
    cell_h, cell_w = height // 2, width // 2
    for cell in range(4):
        if not draw(st.booleans()) and cell:
            continue
        oy, ox = (cell // 2) * cell_h, (cell % 2) * cell_w
        bh = draw(st.integers(max(2, cell_h // 2), cell_h))
        bw = draw(st.integers(max(2, cell_w // 2), cell_w))
        y1 = oy + draw(st.integers(0, cell_h - bh))
        x1 = ox + draw(st.integers(0, cell_w - bw))
        image[:, y1 : y1 + bh, x1 : x1 + bw] = torch.tensor(PALETTE[cell], dtype=torch.uint8)[:, None, None]
        boxes.append([x1, y1, x1 + bw, y1 + bh])
        labels.append(cell + 1)
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "difficult": torch.tensor([lab % 2 == 0 for lab in labels]),
        "image_id": "scene",
        "orig_size": (height, width),
    }
    return image, target


def _interior_checks(image: torch.Tensor, target: dict, scale: float) -> int:
    """Assert each box's interior (away from resampled edges) has its box's colour; return pixels checked."""
    margin = math.ceil(0.5 * scale) + 1
    checked = 0
    for box, label in zip(target["boxes"].tolist(), target["labels"].tolist(), strict=True):
        x1, y1 = math.ceil(box[0]) + margin, math.ceil(box[1]) + margin
        x2, y2 = math.floor(box[2]) - margin, math.floor(box[3]) - margin
        if x2 <= x1 or y2 <= y1:
            continue
        region = image[:, y1:y2, x1:x2].to(torch.int32)
        colour = torch.tensor(PALETTE[label - 1], dtype=torch.int32)[:, None, None]
        assert (region - colour).abs().max() <= 2, f"box {box} (label {label}) is not on its pixels"
        checked += region[0].numel()
    return checked


def _check_boxes_valid(out_image: torch.Tensor, out: dict, size: int, target: dict) -> None:
    assert out_image.shape == (3, size, size) and out_image.dtype == torch.uint8
    boxes = out["boxes"]
    assert boxes.dtype == torch.float32 and boxes.shape[1:] == (4,)
    assert out["labels"].dtype == torch.int64 and out["difficult"].dtype == torch.bool
    assert len(boxes) == len(out["labels"]) == len(out["difficult"])
    assert (boxes >= 0).all() and (boxes <= size).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    # labels are unique per box here, so each kept box must still carry its own difficult flag
    flag = dict(zip(target["labels"].tolist(), target["difficult"].tolist(), strict=True))
    for lab, dif in zip(out["labels"].tolist(), out["difficult"].tolist(), strict=True):
        assert flag[lab] == dif
    assert out["image_id"] == target["image_id"] and out["orig_size"] == target["orig_size"]
    assert out["scale"].dtype == torch.float32 and out["scale"].shape == (2,)
    assert out["pad"].dtype == torch.float32 and out["pad"].shape == (2,)


@FAST
@given(scene=painted_scenes(), size=st.sampled_from([64, 128]), seed=st.integers(0, 2**16))
def test_train_boxes_stay_on_their_pixels_through_flips(scene, size, seed):
    image, target = scene
    transform = build_train_transforms(_cfg(size=size, hflip=True, vflip=True), seed=seed)
    out_image, out = transform(image, target)
    _check_boxes_valid(out_image, out, size, target)
    assert len(out["boxes"]) == len(target["boxes"])  # no crop without scale jitter: nothing is lost
    _interior_checks(out_image, out, float(out["scale"][0]))


def test_flips_happen_and_the_colour_check_sees_them():
    """The property above is not vacuous: flips do occur, and boxes are checked on many pixels."""
    image = torch.zeros(3, 60, 80, dtype=torch.uint8)
    image[:, 5:25, 10:40] = torch.tensor(PALETTE[0], dtype=torch.uint8)[:, None, None]
    target = {
        "boxes": torch.tensor([[10.0, 5.0, 40.0, 25.0]]),
        "labels": torch.tensor([1]),
        "difficult": torch.tensor([False]),
        "image_id": "f",
        "orig_size": (60, 80),
    }
    transform = build_train_transforms(_cfg(size=64, hflip=True, vflip=True), seed=0)
    seen = set()
    for _ in range(20):
        out_image, out = transform(image, target)
        assert _interior_checks(out_image, out, float(out["scale"][0])) >= 100
        seen.add(tuple(out["boxes"][0].round().tolist()))
        moved = out["boxes"].clone()
        moved[:, 0::2] = 64 - moved[:, [2, 0]]  # mirror the box but not the pixels: must be caught
        with pytest.raises(AssertionError, match="not on its pixels"):
            _interior_checks(out_image, {"boxes": moved, "labels": out["labels"]}, float(out["scale"][0]))
    assert len(seen) == 4  # identity, h-flip, v-flip, both


@FAST
@given(scene=painted_scenes(), seed=st.integers(0, 2**16))
def test_scale_jitter_keeps_boxes_inside_and_aligned(scene, seed):
    image, target = scene
    transform = build_train_transforms(_cfg(size=64, scale_jitter=0.5), seed=seed)
    out_image, out = transform(image, target)
    _check_boxes_valid(out_image, out, 64, target)
    _interior_checks(out_image, out, float(out["scale"][0]))


@FAST
@given(scene=painted_scenes(), seed=st.integers(0, 2**16))
def test_full_train_pipeline_keeps_boxes_valid(scene, seed):
    image, target = scene
    transform = build_train_transforms(_cfg(size=96, color_jitter=True, scale_jitter=0.3), seed=seed)
    out_image, out = transform(image, target)
    _check_boxes_valid(out_image, out, 96, target)


@FAST
@given(
    height=st.integers(8, 400),
    width=st.integers(8, 400),
    size=st.sampled_from([32, 64, 416]),
    raw=st.lists(st.tuples(*[st.floats(0, 1)] * 4), min_size=0, max_size=6),
)
def test_eval_letterbox_maps_back_within_one_pixel(height, width, size, raw):
    boxes = []
    for a, b, c, d in raw:
        x1, x2 = sorted((a * width, c * width))
        y1, y2 = sorted((b * height, d * height))
        if x2 - x1 > 0.05 and y2 - y1 > 0.05:
            boxes.append([x1, y1, x2, y2])
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.ones(len(boxes), dtype=torch.int64),
        "difficult": torch.zeros(len(boxes), dtype=torch.bool),
        "image_id": "x",
        "orig_size": (height, width),
    }
    image = torch.full((3, height, width), 200, dtype=torch.uint8)
    out_image, out = build_eval_transforms(size)(image, target)
    assert out["pad"].tolist() == [0.0, 0.0]
    assert len(out["boxes"]) == len(boxes)  # a pure resize loses no box
    assert (out["boxes"] >= 0).all() and (out["boxes"] <= size).all()
    back = boxes_to_original(out["boxes"], out["scale"], out["pad"], out["orig_size"])
    assert torch.allclose(back, target["boxes"], atol=1.0)
    # the content fills [0, new_w) x [0, new_h); the rest is mean-grey padding
    new_w = round(float(out["scale"][0]) * width)
    new_h = round(float(out["scale"][1]) * height)
    assert max(new_w, new_h) == size
    assert (out_image[:, :new_h, :new_w] == 200).all()
    fill = torch.tensor(PAD_FILL, dtype=torch.uint8)[:, None, None]
    assert (out_image[:, new_h:, :] == fill).all() and (out_image[:, :, new_w:] == fill).all()


def test_scale_jitter_crop_maps_back_inside_the_originals():
    g = torch.Generator().manual_seed(0)
    image = torch.zeros(3, 120, 90, dtype=torch.uint8)
    xy = torch.rand(30, 2, generator=g) * torch.tensor([80.0, 110.0])
    wh = 2 + torch.rand(30, 2, generator=g) * 30
    boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([90.0, 120.0]))], 1)
    target = {"boxes": boxes, "labels": torch.arange(1, 31), "difficult": torch.zeros(30, dtype=torch.bool)}
    transform = build_train_transforms(_cfg(size=64, hflip=False, vflip=False, scale_jitter=0.6), seed=3)
    cropped = 0
    for _ in range(30):
        _, out = transform(image, target)
        cropped += bool((out["pad"] < 0).any())
        back = boxes_to_original(out["boxes"], out["scale"], out["pad"], (120, 90))
        orig = boxes[out["labels"] - 1]
        # a kept box maps back inside its original; one away from the crop window's edges maps back onto it
        assert (back[:, :2] >= orig[:, :2] - 1).all() and (back[:, 2:] <= orig[:, 2:] + 1).all()
        inner = ((out["boxes"] > 0.5) & (out["boxes"] < 63.5)).all(1)
        assert torch.allclose(back[inner], orig[inner], atol=1.0)
    assert cropped > 0  # the jitter did enlarge and crop some of the time


def test_degenerate_boxes_are_dropped_with_their_labels_and_flags():
    image = torch.zeros(3, 50, 100, dtype=torch.uint8)
    target = {
        "boxes": torch.tensor([[10, 10, 10, 30], [5, 5, 40, 45], [120, 10, 150, 20], [0, 0, 100, 50.0001]]),
        "labels": torch.tensor([1, 2, 3, 4]),
        "difficult": torch.tensor([True, True, False, False]),
        "image_id": "d",
        "orig_size": (50, 100),
    }
    for transform in (build_eval_transforms(64), build_train_transforms(_cfg(size=64, color_jitter=True))):
        _, out = transform(image, target)
        assert out["labels"].tolist() == [2, 4]
        assert out["difficult"].tolist() == [True, False]
        assert (out["boxes"] <= 64).all()


def test_eval_without_target_records_geometry():
    image = torch.zeros(3, 30, 60, dtype=torch.uint8)
    out_image, out = build_eval_transforms(64)(image, None)
    assert out_image.shape == (3, 64, 64)
    assert torch.allclose(out["scale"], torch.tensor([64 / 60, 32 / 30])) and out["pad"].tolist() == [0, 0]
    assert out["orig_size"] == (30, 60) and "boxes" not in out


def test_empty_target_boxes():
    image = torch.zeros(3, 40, 40, dtype=torch.uint8)
    target = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "difficult": torch.zeros(0, dtype=torch.bool),
        "image_id": "e",
        "orig_size": (40, 40),
    }
    _, out = build_train_transforms(_cfg(size=32, color_jitter=True, scale_jitter=0.2), seed=0)(image, target)
    assert out["boxes"].shape == (0, 4) and out["labels"].shape == (0,) and out["difficult"].shape == (0,)


def test_seeded_train_transforms_are_reproducible():
    g = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, 70, 50), dtype=torch.uint8, generator=g)
    target = {
        "boxes": torch.tensor([[5.0, 5.0, 30.0, 40.0]]),
        "labels": torch.tensor([1]),
        "difficult": torch.tensor([False]),
    }
    cfg = _cfg(size=64, color_jitter=True, scale_jitter=0.4)
    a, b, c = (build_train_transforms(cfg, seed=s) for s in (7, 7, 8))
    runs = [[t(image, target) for _ in range(6)] for t in (a, b, c)]
    for (ia, ta), (ib, tb) in zip(runs[0], runs[1], strict=True):
        assert torch.equal(ia, ib) and torch.equal(ta["boxes"], tb["boxes"])
    assert any(not torch.equal(ia, ic) for (ia, _), (ic, _) in zip(runs[0], runs[2], strict=True))
    a.reseed(8)
    assert all(torch.equal(a(image, target)[0], ic) for _, (ic, _) in zip(range(6), runs[2], strict=False))


def test_boxes_to_original_clips_and_accepts_sequences():
    boxes = torch.tensor([[-5.0, 0.0, 70.0, 10.0]])
    back = boxes_to_original(boxes, (0.5, 0.5), (0.0, 0.0), (20, 30))
    assert back.tolist() == [[0.0, 0.0, 30.0, 20.0]]
    back = boxes_to_original(
        torch.tensor([[0.0, 0.0, 10.0, 10.0]]),
        torch.tensor([2.0, 2.0]),
        torch.tensor([-4.0, -6.0]),
        (100, 100),
    )
    assert back.tolist() == [[2.0, 3.0, 7.0, 8.0]]


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="multiple of 32"):
        build_eval_transforms(100)
    with pytest.raises(ValueError, match="scale_jitter"):
        build_train_transforms(_cfg(scale_jitter=1.5))
    with pytest.raises(ValueError, match=r"uint8 image tensor \[3, H, W\]"):
        build_eval_transforms(32)(torch.zeros(3, 10, 10), None)
    with pytest.raises(ValueError, match="2 boxes but 1 labels"):
        build_eval_transforms(32)(
            torch.zeros(3, 10, 10, dtype=torch.uint8),
            {"boxes": torch.zeros(2, 4), "labels": torch.ones(1, dtype=torch.int64), "image_id": "q"},
        )
    assert np.array_equal(PAD_FILL, (124, 116, 104))
