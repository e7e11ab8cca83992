"""Stronger training augmentation (data.rot90, data.crop_scale, data.mosaic): boxes stay on the pixels they
cover, items are a function of (seed, epoch, index), the options off change nothing, bad values are clear."""

from __future__ import annotations

import math
from types import SimpleNamespace

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from lit_helpers import disable_loss_compile, make_data, tiny_config
from torch.utils.data import Dataset

from detector.config import ConfigError, DataConfig, load_config
from detector.data.datamodule import DetectionDataModule, SeededAugmentation, _reseed_transforms, item_seed
from detector.data.letterbox import boxes_to_original
from detector.data.transforms import (
    MIN_CROP_VISIBILITY,
    DetectionTransform,
    _bbox_params,
    build_train_transforms,
)

# Saturated colours, far from black (the background) and from the letterbox grey.
PALETTE = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255)]


def _cfg(size=64, hflip=False, vflip=False, rot90=False, crop_scale=(), color_jitter=False, scale_jitter=0.0):
    return SimpleNamespace(
        size=size,
        hflip=hflip,
        vflip=vflip,
        rot90=rot90,
        crop_scale=list(crop_scale),
        color_jitter=color_jitter,
        scale_jitter=scale_jitter,
    )


def _grid_scene(height, width, cell, rng, colour_of=lambda k: k % len(PALETTE) + 1, box=None):
    """Black image with one solid box per `cell` x `cell` grid cell (2 px clear of the cell's edges, so boxes
    never touch); box k is painted PALETTE[label - 1], label = colour_of(k). `box` = (h, w) fixes the size."""
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    boxes, labels = [], []
    k = 0
    for oy in range(0, height - cell + 1, cell):
        for ox in range(0, width - cell + 1, cell):
            bh, bw = (
                box if box is not None else (int(rng.integers(8, cell - 3)), int(rng.integers(8, cell - 3)))
            )
            y = oy + 2 + int(rng.integers(0, cell - 4 - bh + 1))
            x = ox + 2 + int(rng.integers(0, cell - 4 - bw + 1))
            label = colour_of(k)
            image[:, y : y + bh, x : x + bw] = torch.tensor(PALETTE[label - 1], dtype=torch.uint8)[
                :, None, None
            ]
            boxes.append([x, y, x + bw, y + bh])
            labels.append(label)
            k += 1
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "difficult": torch.zeros(len(labels), dtype=torch.bool),
        "image_id": "scene",
        "orig_size": (height, width),
    }
    return image, target


def _check_paint(image, target, full_area, tol=0.01, colour_tol=8, band=(0.25, 0.35)):
    """Every painted blob that shows more than band[1] of its box has exactly one output box of its colour on
    its extent (within `tol` px), none shows one under band[0], and every output box sits on such a blob.
    `full_area(blob_xyxy)` is the area the blob's whole box has in the output. Returns the blobs checked."""
    pixels = image.permute(1, 2, 0).numpy().astype(np.int32)
    boxes, labels = target["boxes"].numpy(), target["labels"].numpy()
    matched: set[int] = set()
    blobs = 0
    for label, colour in enumerate(PALETTE, 1):
        mask = (np.abs(pixels - np.array(colour)).max(-1) <= colour_tol).astype(np.uint8)
        _, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
        for x, y, w, h, area in stats[1:]:
            blob = np.array([x, y, x + w, y + h], np.float64)
            hits = [
                j for j in range(len(boxes)) if labels[j] == label and np.abs(boxes[j] - blob).max() <= tol
            ]
            visible = area / full_area(blob)
            if visible > band[1]:
                assert len(hits) == 1, (
                    f"blob {blob.tolist()} (colour {label}, {visible:.0%} visible) has boxes {hits}"
                )
            elif visible < band[0]:
                assert not hits, f"blob {blob.tolist()} ({visible:.0%} visible) kept box(es) {hits}"
            matched.update(hits)
            blobs += 1
    stray = sorted(set(range(len(boxes))) - matched)
    assert not stray, f"boxes {[boxes[j].tolist() for j in stray]} are not on pixels of their colour"
    return blobs


# ------------------------------------------------------------------------------------------------ rot90


def test_rot90_turns_boxes_with_the_pixels_through_all_four_angles():
    # 64 x 48 at size 64: no resampling, so the boxes must match the paint exactly.
    image, target = _grid_scene(64, 48, 16, np.random.default_rng(0))
    transform = build_train_transforms(_cfg(rot90=True, hflip=True, vflip=True), seed=3)
    boxes = target["boxes"]
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    largest = float(areas.max())
    shapes = set()
    for _ in range(24):
        out_image, out = transform(image, target)
        assert out_image.shape == (3, 64, 64)
        assert len(out["boxes"]) == len(target["boxes"])  # rotating loses nothing
        assert _check_paint(out_image, out, lambda blob: largest, band=(0.0, 0.0)) == len(areas)
        shapes.add("wide" if (out["boxes"][:, 2] > 48).any() else "tall")  # turned: content 48 x 64
        # the isotropic resize scale survives a 90-degree turn of a non-square image
        assert torch.allclose(out["scale"], torch.ones(2))
    assert shapes == {"wide", "tall"}  # both orientations occur
    # the check can fail: boxes turned without their pixels are caught
    out_image, out = transform(image, target)
    wrong = dict(out, boxes=out["boxes"][:, [1, 0, 3, 2]])
    with pytest.raises(AssertionError):
        _check_paint(out_image, wrong, lambda blob: 1.0)


def test_rot90_draws_all_four_angles():
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    image[:, 2:6, 2:10] = 255  # a marker in the top-left corner, wider than tall
    target = {"boxes": torch.tensor([[2.0, 2.0, 10.0, 6.0]]), "labels": torch.tensor([1])}
    transform = build_train_transforms(_cfg(size=32, rot90=True), seed=0)
    seen = {tuple(transform(image, target)[1]["boxes"][0].tolist()) for _ in range(40)}
    assert seen == {
        (2.0, 2.0, 10.0, 6.0),
        (2.0, 22.0, 6.0, 30.0),
        (22.0, 26.0, 30.0, 30.0),
        (26.0, 2.0, 30.0, 10.0),
    }


# ------------------------------------------------------------------------------------------- crop_scale


@pytest.mark.parametrize("seed", range(12))
def test_random_resized_crop_keeps_boxes_on_their_pixels_and_maps_back(seed):
    image, target = _grid_scene(96, 128, 32, np.random.default_rng(seed))
    transform = build_train_transforms(_cfg(crop_scale=[0.2, 1.0]), seed=seed)
    out_image, out = transform(image, target)
    sx, sy = (float(v) for v in out["scale"])
    assert out_image.shape == (3, 64, 64) and math.isclose(sx, sy, rel_tol=0.05)  # letterboxed: no stretch
    back = boxes_to_original(torch.tensor([[0.0, 0.0, 64.0, 64.0]]), out["scale"], out["pad"], (96, 128))[0]
    window_area = float((back[2] - back[0]) * (back[3] - back[1])) / (96 * 128)
    assert 0.2 - 0.05 <= window_area <= 1.0

    orig = target["boxes"]

    def full_area(blob):  # the area of the blob's whole box, scaled into the output
        centre = boxes_to_original(torch.from_numpy(blob[None]).float(), out["scale"], out["pad"], (96, 128))
        cx, cy = float(centre[0, 0::2].mean()), float(centre[0, 1::2].mean())
        inside = (orig[:, 0] <= cx) & (cx <= orig[:, 2]) & (orig[:, 1] <= cy) & (cy <= orig[:, 3])
        box = orig[inside][0]
        return float((box[2] - box[0]) * (box[3] - box[1])) * sx * sy

    tol = math.ceil(sx) + 1.5
    _check_paint(out_image, out, full_area, tol=tol, colour_tol=60, band=(0.15, 0.5))
    # kept boxes map back onto their original boxes (clipped to the window)
    mapped = boxes_to_original(out["boxes"], out["scale"], out["pad"], (96, 128))
    slack = 1.0 / sx + 0.5
    for box, label in zip(mapped, out["labels"], strict=True):
        same = orig[target["labels"] == label]
        inside = (box[:2] >= same[:, :2] - slack).all(1) & (box[2:] <= same[:, 2:] + slack).all(1)
        assert inside.any(), f"box {box.tolist()} maps back onto no original box of label {int(label)}"


def test_random_resized_crop_draws_windows_across_the_scale_range():
    image, target = _grid_scene(96, 128, 32, np.random.default_rng(0))
    transform = build_train_transforms(_cfg(crop_scale=[0.3, 1.0]), seed=0)
    fractions, ratios = [], []
    for _ in range(60):
        _, out = transform(image, target)
        back = boxes_to_original(torch.tensor([[0.0, 0.0, 64.0, 64.0]]), out["scale"], out["pad"], (96, 128))[
            0
        ]
        w, h = float(back[2] - back[0]), float(back[3] - back[1])
        fractions.append(w * h / (96 * 128))
        ratios.append(w / h)
    assert min(fractions) < 0.45 and max(fractions) > 0.8
    assert all(0.3 - 0.03 <= f <= 1.0 for f in fractions)
    assert all(3 / 4 - 0.03 <= r <= 4 / 3 + 0.03 for r in ratios)


def test_crop_visibility_rule_is_the_transforms_constant():
    assert MIN_CROP_VISIBILITY == 0.3  # the rule _check_paint's bands are set around


# ---------------------------------------------------------------------------------------------- mosaic


class PaintedTiles(Dataset):
    """`n` tiles of `size` x `size`, tile k painted only in PALETTE[k] (label k + 1), 16 x 12 boxes on a grid;
    items go through `transforms` like a RecordDataset's."""

    def __init__(self, n: int, size: int, transforms) -> None:
        self.transforms = transforms
        self.items = [
            _grid_scene(
                size, size, 32, np.random.default_rng(k), colour_of=lambda _, k=k: k + 1, box=(12, 16)
            )
            for k in range(n)
        ]
        for k, (_, target) in enumerate(self.items):
            target["image_id"] = f"tile{k}"

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        image, target = self.items[index]
        return self.transforms(image.clone(), dict(target))


def _mosaic_data(p=1.0, seed=0, n=6, **cfg):
    cfg = {"size": 64, "hflip": True, "vflip": True, "rot90": True, **cfg}
    return SeededAugmentation(
        PaintedTiles(n, 64, build_train_transforms(_cfg(**cfg), seed=seed)), seed, mosaic=p
    )


def test_mosaic_boxes_stay_on_the_pixels_of_their_tiles_at_their_scale():
    data = _mosaic_data(p=1.0)
    tiles_seen, blobs = set(), 0
    for index in range(len(data)):
        for epoch in range(3):
            image, target = data[(epoch, index)]
            assert image.shape == (3, 64, 64) and image.dtype == torch.uint8
            assert len(target["mosaic_ids"]) == 4 and target["mosaic_ids"][0] == f"tile{index}"
            assert f"tile{index}" not in target["mosaic_ids"][1:]  # the 3 others are other items
            # no shrinking: a whole 16 x 12 box (turned or not) keeps its size; exact, as no tile is resampled
            blobs += _check_paint(image, target, lambda blob: 12 * 16)
            sides = (target["boxes"][:, 2:] - target["boxes"][:, :2]).tolist()
            assert all(max(s) <= 16 and min(s) <= 12 for s in sides)
            assert [16, 12] in sides or [12, 16] in sides
            tiles_seen.update(target["labels"].tolist())
    assert blobs >= 80 and tiles_seen == set(range(1, 7))  # many checks, every tile's colour took part


def test_mosaic_keeps_the_items_own_boxes_mapping_back():
    data = _mosaic_data(p=1.0, hflip=False, vflip=False, rot90=False)
    for index in range(len(data)):
        image, target = data[(0, index)]
        own = target["labels"] == index + 1
        back = boxes_to_original(target["boxes"][own], target["scale"], target["pad"], (64, 64))
        orig = data.dataset.items[index][1]["boxes"]
        for box in back:  # each of the item's boxes in the window lies on (a clipped part of) an original
            inside = (box[:2] >= orig[:, :2] - 1e-4).all(1) & (box[2:] <= orig[:, 2:] + 1e-4).all(1)
            assert inside.any()


def test_mosaic_probability_and_determinism_per_seed_epoch_and_index():
    first, again, other = _mosaic_data(p=0.5), _mosaic_data(p=0.5), _mosaic_data(p=0.5, seed=1)
    keys = [(epoch, index) for epoch in range(4) for index in range(6)]
    mosaics = 0
    for key in keys:
        (a, ta), (b, tb) = first[key], again[key]
        assert (
            torch.equal(a, b)
            and torch.equal(ta["boxes"], tb["boxes"])
            and torch.equal(ta["labels"], tb["labels"])
        )
        assert ("mosaic_ids" in ta) == ("mosaic_ids" in tb)
        mosaics += "mosaic_ids" in ta
    assert 4 <= mosaics <= 20  # p = 0.5 of 24 items (fixed seeds: not flaky)
    # the same key in any order gives the same item; another seed or epoch another one
    assert torch.equal(first[(2, 3)][0], first[(2, 3)][0])
    assert not all(torch.equal(first[k][0], other[k][0]) for k in keys)
    assert not torch.equal(first[(0, 1)][0], first[(1, 1)][0])


def test_mosaic_of_a_single_item_dataset_uses_it_four_times():
    data = _mosaic_data(p=1.0, n=1)
    image, target = data[(0, 0)]
    assert target["mosaic_ids"] == ("tile0",) * 4
    _check_paint(image, target, lambda blob: 12 * 16)


# ------------------------------------------------------------------------------------------- off = before


def test_options_off_add_no_random_draw():
    """With rot90, crop_scale and mosaic off the pipeline is the one built before they existed."""
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 70, 90), dtype=torch.uint8, generator=g)
    target = {"boxes": torch.tensor([[5.0, 5.0, 60.0, 40.0]]), "labels": torch.tensor([1])}
    cfg = _cfg(hflip=True, vflip=True, color_jitter=True, scale_jitter=0.3)
    sizes = sorted({max(32, int(round(s))) for s in np.linspace(64 * 0.7, 64 * 1.3, 11)})
    steps = [
        A.LongestMaxSize(max_size=sizes),
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.8),
    ]
    before = DetectionTransform(64, A.Compose(steps, bbox_params=_bbox_params()), seed=5)
    now = build_train_transforms(cfg, seed=5)
    defaults = build_train_transforms(DataConfig(size=64, vflip=True, scale_jitter=0.3), seed=5)
    for _ in range(8):
        (a, ta), (b, tb), (c, tc) = before(image, target), now(image, target), defaults(image, target)
        assert torch.equal(a, b) and torch.equal(a, c)
        assert torch.equal(ta["boxes"], tb["boxes"]) and torch.equal(ta["pad"], tc["pad"])


def test_color_strength_scales_the_jitter_ranges():
    """data.color_strength = 2 is ColorJitter with every range doubled, and changes the images."""
    g = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=g)
    target = {"boxes": torch.tensor([[5.0, 5.0, 60.0, 40.0]]), "labels": torch.tensor([1])}
    steps = [
        A.LongestMaxSize(max_size=64),
        A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.04, p=0.8),
    ]
    doubled = DetectionTransform(64, A.Compose(steps, bbox_params=_bbox_params()), seed=5)
    strong = build_train_transforms(DataConfig(size=64, hflip=False, color_strength=2.0), seed=5)
    plain = build_train_transforms(DataConfig(size=64, hflip=False), seed=5)
    differs = 0
    for _ in range(6):
        (a, _), (b, _), (c, _) = doubled(image, target), strong(image, target), plain(image, target)
        assert torch.equal(a, b)
        differs += int(not torch.equal(b, c))
    assert differs >= 3  # p = 0.8 per draw: the same draws scaled differently give other pixels


def test_mosaic_off_loads_the_item_as_before():
    data = _mosaic_data(p=0.0, crop_scale=[0.5, 1.0])
    plain = PaintedTiles(
        6, 64, build_train_transforms(_cfg(hflip=True, vflip=True, rot90=True, crop_scale=[0.5, 1.0]))
    )
    for epoch, index in [(0, 0), (1, 4), (3, 2)]:
        image, target = data[(epoch, index)]
        _reseed_transforms(plain, item_seed(0, epoch, index))
        ref, ref_target = plain[index]
        assert torch.equal(image, ref) and torch.equal(target["boxes"], ref_target["boxes"])
        assert "mosaic_ids" not in target


# ------------------------------------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.crop_scale=[0.5]", "data.crop_scale"),
        ("data.crop_scale=[0.0,1.0]", "data.crop_scale"),
        ("data.crop_scale=[0.8,0.5]", "data.crop_scale"),
        ("data.crop_scale=[0.5,1.5]", "data.crop_scale"),
        ("data.crop_scale=[0.2,0.5,1.0]", "data.crop_scale"),
        ("data.mosaic=-0.1", "data.mosaic"),
        ("data.mosaic=1.5", "data.mosaic"),
        ("data.rot90=sometimes", "rot90"),
    ],
)
def test_bad_values_are_config_errors_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_good_values_load():
    cfg = load_config(None, ["data.crop_scale=[0.3,1.0]", "data.mosaic=0.5", "data.rot90=true"])
    assert cfg.data.crop_scale == [0.3, 1.0] and cfg.data.mosaic == 0.5 and cfg.data.rot90 is True
    assert load_config(None).data.crop_scale == [] and load_config(None).data.mosaic == 0.0


def test_bad_values_built_directly_are_value_errors_naming_the_key():
    with pytest.raises(ValueError, match=r"data\.crop_scale = \[0\.9, 0\.1\]"):
        build_train_transforms(_cfg(crop_scale=[0.9, 0.1]))
    with pytest.raises(ValueError, match=r"data\.mosaic = 2"):
        SeededAugmentation(PaintedTiles(1, 64, build_train_transforms(_cfg())), 0, mosaic=2)


# ----------------------------------------------------------------------------------- datamodule and fit


def test_datamodule_train_loader_with_all_three_is_reproducible(tiny_voc):
    root = tiny_voc(n_images=5, image_size=(90, 120), split="train", seed=1)
    tiny_voc(n_images=2, image_size=(90, 120), split="val", root=root, seed=2)

    def batches():
        cfg = DataConfig(
            root=str(root),
            classes=["cat", "dog"],
            train_split="train",
            val_split="val",
            test_split="val",
            size=64,
            batch_size=2,
            workers=0,
            rot90=True,
            crop_scale=[0.3, 1.0],
            mosaic=0.5,
        )
        dm = DetectionDataModule(cfg, seed=4)
        dm.setup("fit")
        return list(dm.train_dataloader())

    first, second = batches(), batches()
    assert len(first) == 2
    for (ia, ta), (ib, tb) in zip(first, second, strict=True):
        assert ia.shape == (2, 3, 64, 64) and torch.equal(ia, ib)
        for a, b in zip(ta, tb, strict=True):
            assert torch.equal(a["boxes"], b["boxes"]) and ((a["boxes"] >= 0) & (a["boxes"] <= 64)).all()
    assert any("mosaic_ids" in t for _, ts in first for t in ts)


@pytest.mark.slow
def test_fit_two_steps_with_rot90_crops_and_mosaic(tiny_voc, tmp_path, monkeypatch):
    from conftest import write_tiny_voc

    from detector.lit import fit

    disable_loss_compile(monkeypatch)
    data = make_data(write_tiny_voc, tmp_path / "voc")
    cfg = tiny_config(data, tmp_path, "data.rot90=true", "data.crop_scale=[0.3,1.0]", "data.mosaic=1.0")
    assert cfg.data.mosaic == 1.0
    result = fit(cfg)
    assert result.steps == 2 and result.skipped_steps == 0
    assert all(math.isfinite(v) for v in result.history["train_loss"])


@pytest.mark.slow
def test_mosaic_items_do_not_depend_on_the_worker_count():
    from detector.data.datamodule import EpochSeededSampler, collate_detection

    def epoch(workers: int, number: int) -> list[torch.Tensor]:
        data = _mosaic_data(p=0.7, crop_scale=[0.5, 1.0])
        sampler = EpochSeededSampler(data.dataset, 0)
        sampler.set_epoch(number)
        loader = torch.utils.data.DataLoader(
            data, sampler=sampler, batch_size=2, num_workers=workers, collate_fn=collate_detection
        )
        return [images for images, _ in loader]

    for number in (0, 1):
        one, two = epoch(0, number), epoch(2, number)
        assert len(one) == 3 and all(torch.equal(a, b) for a, b in zip(one, two, strict=True))
