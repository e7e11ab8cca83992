"""Tiled prediction: tile grids, the cut-box rule and the merge, batching, coordinates, and the eval path."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from detector.inference.tiling import (
    TiledCollector,
    TileSettings,
    batch_predictor,
    choose_tile,
    collect_tiled,
    merge_tile_detections,
    predict_image,
    predict_tiled,
    suppress_cut_boxes,
    tile_starts,
    tile_windows,
)

# ------------------------------------------------------------------------------------------------ tile grids


def test_tile_starts_are_strided_and_the_last_is_flush_with_the_end():
    assert tile_starts(1000, 400, 0.25) == [0, 300, 600]
    assert tile_starts(1001, 400, 0.25) == [0, 300, 600, 601]
    assert tile_starts(400, 400, 0.25) == [0]
    assert tile_starts(120, 400, 0.25) == [0]  # a small axis: one (shorter) tile
    assert tile_starts(1000, 400, 0.0) == [0, 400, 600]


@settings(max_examples=200, deadline=None)
@given(length=st.integers(1, 5000), tile=st.integers(1, 700), overlap=st.floats(0.0, 0.9, allow_nan=False))
def test_tile_starts_cover_the_axis_without_leaving_it(length, tile, overlap):
    if tile - round(tile * overlap) < 1:
        with pytest.raises(ValueError, match="stride"):
            tile_starts(length, tile, overlap)
        return
    starts = tile_starts(length, tile, overlap)
    ends = [min(s + tile, length) for s in starts]
    assert starts[0] == 0 and ends[-1] == length
    assert all(s >= 0 and e <= length for s, e in zip(starts, ends, strict=True))
    assert starts == sorted(set(starts))
    # consecutive tiles overlap by at least the requested amount (the flush last one by more)
    for (s0, e0), s1 in zip(zip(starts, ends, strict=True), starts[1:], strict=False):
        assert e0 - s1 >= round(tile * overlap)
        assert s1 - s0 <= tile - round(tile * overlap)
    if length > tile:
        assert all(e - s == tile for s, e in zip(starts, ends, strict=True))


def test_tile_windows_are_row_major_and_inside_the_image():
    windows = tile_windows(500, 900, 400, 0.25)
    assert windows == [(0, 0, 400, 400), (300, 0, 700, 400), (500, 0, 900, 400)] + [
        (0, 100, 400, 500),
        (300, 100, 700, 500),
        (500, 100, 900, 500),
    ]


@pytest.mark.parametrize(
    ("h", "w", "tile", "expected"),
    [
        (832, 832, None, 0),  # exactly twice the model size: whole
        (833, 100, None, 416),  # over twice on one side: tiles of the model size
        (5000, 5000, 0, 0),  # --tile 0: never
        (500, 500, 512, 0),  # fits in one tile: whole
        (500, 600, 512, 512),
    ],
)
def test_choose_tile(h, w, tile, expected):
    assert choose_tile(h, w, 416, tile) == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tile": -1}, "--tile"),
        ({"tile": 416, "overlap": 1.0}, "--overlap"),
        ({"tile": 416, "overlap": -0.1}, "--overlap"),
        ({"batch_size": 0}, "batch size"),
    ],
)
def test_bad_tile_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TileSettings(**kwargs).check()


# ------------------------------------------------------------------------------------------------ merge rules

WINDOWS = torch.tensor([[0, 0, 100, 100], [75, 0, 175, 100]], dtype=torch.float32)  # two tiles, 25 px overlap
IMAGE = (100, 175)  # (height, width)


def _suppress(boxes, scores, labels, tiles, **kw):
    return suppress_cut_boxes(
        torch.tensor(boxes, dtype=torch.float32),
        torch.tensor(scores, dtype=torch.float32),
        torch.tensor(labels),
        torch.tensor(tiles),
        WINDOWS,
        IMAGE,
        **kw,
    ).tolist()


def test_a_box_cut_by_an_inner_edge_goes_when_another_tile_has_it_whole():
    # object at x 85..115: tile 0 sees 85..100 (touches its right edge, inner), tile 1 sees it whole
    assert _suppress([[85, 10, 100, 40], [85, 10, 115, 40]], [0.9, 0.6], [1, 1], [0, 1]) == [False, True]


@pytest.mark.parametrize(
    ("cut", "whole", "labels", "tiles", "why"),
    [
        ([85, 10, 100, 40], [85, 10, 115, 40], [1, 2], [0, 1], "another class"),
        ([85, 10, 100, 40], [85, 10, 115, 40], [1, 1], [0, 0], "the same tile"),
        ([85, 10, 100, 40], [90, 30, 130, 90], [1, 1], [0, 1], "covers too little of it"),
        ([0, 10, 20, 40], [0, 10, 30, 40], [1, 1], [0, 1], "the image border is not a cut"),
    ],
)
def test_cut_box_survives(cut, whole, labels, tiles, why):
    assert _suppress([cut, whole], [0.9, 0.6], labels, tiles) == [True, True], why


def test_of_two_cut_parts_the_larger_survives():
    # both tiles cut the object: tile 0 at its right edge, tile 1 at its left edge (x = 75)
    keep = _suppress([[70, 10, 100, 40], [75, 10, 95, 40]], [0.5, 0.9], [1, 1], [0, 1])
    assert keep == [True, False]


def test_edge_tolerance_and_coverage_threshold():
    near = [[85, 10, 97, 40], [85, 10, 115, 40]]  # 3 px short of tile 0's right edge
    assert _suppress(near, [0.9, 0.6], [1, 1], [0, 1], edge_tol=4.0) == [False, True]
    assert _suppress(near, [0.9, 0.6], [1, 1], [0, 1], edge_tol=2.0) == [True, True]
    # intersection over the smaller box: 15 x 30 of the 15 x 30 cut part -> 1.0; a half-covered part -> 0.5
    half = [[85, 10, 100, 40], [85, 25, 115, 70]]
    assert _suppress(half, [0.9, 0.6], [1, 1], [0, 1], edge_ios=0.6) == [True, True]
    assert _suppress(half, [0.9, 0.6], [1, 1], [0, 1], edge_ios=0.4) == [False, True]


def test_the_cut_rule_runs_before_the_nms():
    """The cut part scores higher and overlaps the whole box by IoU 0.67 > 0.5: an NMS alone would keep the
    cut part and drop the whole object."""
    out = merge_tile_detections(
        torch.tensor([[80.0, 10, 100, 40], [80, 10, 110, 40]]),
        torch.tensor([0.95, 0.7]),
        torch.tensor([1, 1]),
        torch.tensor([0, 1]),
        WINDOWS,
        IMAGE,
        nms_thresh=0.5,
    )
    assert out["boxes"].tolist() == [[80, 10, 110, 40]]
    assert out["scores"].tolist() == pytest.approx([0.7])


def test_duplicates_under_the_overlap_are_merged_classwise():
    out = merge_tile_detections(
        torch.tensor([[80.0, 10, 95, 40], [80.5, 10, 95, 40], [80, 10, 95, 40]]),
        torch.tensor([0.8, 0.9, 0.7]),
        torch.tensor([1, 1, 2]),
        torch.tensor([0, 1, 1]),
        WINDOWS,
        IMAGE,
    )
    assert out["labels"].tolist() == [1, 2]
    assert out["scores"].tolist() == pytest.approx([0.9, 0.7])  # by score, the better duplicate kept


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grid_nms_keeps_what_torchvision_keeps(seed):
    from torchvision.ops import batched_nms

    from detector.inference.tiling import grid_nms

    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(3000, 2, generator=g) * 1500
    wh = 5 + torch.rand(3000, 2, generator=g) * torch.tensor([[60.0, 60.0]]) * (1 + 4 * (seed == 2))
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[:10, 2:] = boxes[:10, :2]  # a few zero-area boxes
    scores = torch.randperm(3000, generator=g).float() / 3000  # distinct: no tie-order ambiguity
    labels = torch.randint(1, 4, (3000,), generator=g)
    expected = batched_nms(boxes, scores, labels, 0.5)
    actual = grid_nms(boxes, scores, labels, 0.5)
    assert 500 < len(expected) < 3000
    assert actual.tolist() == expected.tolist()


def test_large_merges_switch_to_the_grid_nms_with_the_same_result(monkeypatch):
    image = _image_with(OBJECTS, 230, 260)
    expected = predict_tiled(BlobDetector(), image, tile=100, overlap=0.3, progress=False)
    monkeypatch.setattr("detector.inference.tiling.GRID_NMS_ABOVE", 0)
    actual = predict_tiled(BlobDetector(), image, tile=100, overlap=0.3, progress=False)
    assert actual["boxes"].tolist() == expected["boxes"].tolist()


# ---------------------------------------------------------------------------------- against a real "detector"


class BlobDetector:
    """A detector for tests: each connected bright blob of a tile is one box (tile pixels, cut by the tile).

    Records every batch it is given, so tests can check the batching and the coordinates.
    """

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []

    def __call__(self, tiles: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        self.batches.append([tuple(t.shape[1:]) for t in tiles])
        results = []
        for tile in tiles:
            assert tile.dtype == torch.uint8 and tile.shape[0] == 3
            mask = tile[0].numpy() > 128
            labelled, n = ndimage.label(mask)
            boxes = []
            for sl in ndimage.find_objects(labelled):
                ys, xs = sl
                boxes.append([xs.start, ys.start, xs.stop, ys.stop])
            boxes_t = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
            # cut parts score higher than whole boxes, the hard case for a plain NMS
            w = boxes_t[:, 2] - boxes_t[:, 0]
            results.append(
                {
                    "boxes": boxes_t,
                    "scores": 0.5 + 0.4 / (1 + w / 100),
                    "labels": torch.ones(n, dtype=torch.int64),
                }
            )
        return results


def _image_with(boxes: list[list[int]], height: int, width: int) -> torch.Tensor:
    image = torch.full((3, height, width), 30, dtype=torch.uint8)
    for x0, y0, x1, y1 in boxes:
        image[:, y0:y1, x0:x1] = 255
    return image


# Tiles of 100 px with overlap 0.3 over 260 x 230 px: x origins 0, 70, 140, 160; y origins 0, 70, 130.
OBJECTS = [
    [20, 20, 40, 45],  # inside the first tile only
    [75, 10, 95, 40],  # under the overlap of tiles x0=0 and x0=70: seen whole twice
    [
        150,
        75,
        190,
        120,
    ],  # across tile edges (x=170 of tile 70, y=100 of tile row 0): cut, and whole elsewhere
    [230, 200, 255, 228],  # at the image corner
]


def test_objects_are_reported_once_at_their_place_in_image_pixels():
    image = _image_with(OBJECTS, 230, 260)
    detector = BlobDetector()
    out = predict_tiled(detector, image, tile=100, overlap=0.3, batch_size=5, progress=False)
    found = sorted(out["boxes"].round().int().tolist())
    assert found == sorted(OBJECTS)
    windows = tile_windows(230, 260, 100, 0.3)
    assert len(windows) == 12
    assert [len(b) for b in detector.batches] == [5, 5, 2]  # never more than batch_size tiles at once
    assert all(h <= 100 and w <= 100 for batch in detector.batches for h, w in batch)


def test_without_the_merge_the_seams_would_duplicate():
    """The same image, each tile's boxes shifted but not merged: the overlap and cut objects come out more
    than once, so the merge is what the previous test checks."""
    image = _image_with(OBJECTS, 230, 260)
    detector = BlobDetector()
    windows = tile_windows(230, 260, 100, 0.3)
    raw = 0
    for x0, y0, x1, y1 in windows:
        raw += len(detector([image[:, y0:y1, x0:x1]])[0]["boxes"])
    assert raw > 2 * len(OBJECTS)


class CountingImage:
    """An image source that counts the tiles read from it (a stand-in for a windowed file reader)."""

    def __init__(self, image: torch.Tensor) -> None:
        self.image, self.shape, self.reads = image, image.shape, 0

    def __getitem__(self, key):
        self.reads += 1
        return self.image[key]


def test_tiles_are_read_lazily_one_batch_at_a_time():
    source = CountingImage(_image_with(OBJECTS, 230, 260))
    reads_at_call = []
    detector = BlobDetector()

    def predict_batch(tiles):
        reads_at_call.append(source.reads)
        return detector(tiles)

    predict_tiled(predict_batch, source, tile=100, overlap=0.3, batch_size=4, progress=False)
    assert reads_at_call == [4, 8, 12]


def test_a_small_image_is_one_whole_tile():
    image = _image_with([[5, 5, 30, 30]], 60, 80)
    detector = BlobDetector()
    out = predict_image(detector, image, model_size=64, settings=TileSettings(tile=None, progress=False))
    assert detector.batches == [[(60, 80)]]
    assert out["boxes"].tolist() == [[5, 5, 30, 30]]


def test_predict_image_tiles_a_large_image_automatically():
    image = _image_with(OBJECTS, 230, 260)  # over twice the model size of 64
    detector = BlobDetector()
    out = predict_image(detector, image, model_size=64, settings=TileSettings(overlap=0.5, progress=False))
    assert all(h <= 64 and w <= 64 for batch in detector.batches for h, w in batch)
    assert sorted(out["boxes"].round().int().tolist()) == sorted(OBJECTS)


def test_progress_bar_goes_to_stderr_when_asked(capsys):
    image = _image_with(OBJECTS, 230, 260)
    predict_tiled(BlobDetector(), image, tile=100, overlap=0.3, progress=True, desc="big.png")
    err = capsys.readouterr().err
    assert "big.png" in err and "0/12 [" in err
    predict_tiled(BlobDetector(), image, tile=100, overlap=0.3, progress=False, desc="big.png")
    predict_tiled(BlobDetector(), image, tile=100, overlap=0.3, desc="big.png")  # stderr is not a terminal
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------------------- the real model path


@pytest.fixture(scope="module")
def tiny_model():
    from lit_helpers import TINY_MODEL

    from detector.config import load_config
    from detector.models import build_model

    torch.manual_seed(0)
    cfg = load_config(None, [*TINY_MODEL, "data.size=64", "model.score_thresh=0.0"])
    return build_model(cfg.model, 2).eval()


@pytest.mark.slow
def test_torch_model_tiles_in_batches_and_boxes_stay_in_the_image(tiny_model):
    seen = []
    forward = tiny_model.forward

    def spy(images, *args, **kwargs):
        seen.append(tuple(images.shape))
        return forward(images, *args, **kwargs)

    tiny_model.forward = spy
    try:
        image = torch.randint(0, 256, (3, 150, 200), dtype=torch.uint8)
        out = predict_tiled(batch_predictor(tiny_model, 64), image, tile=64, overlap=0.25, batch_size=3)
    finally:
        del tiny_model.forward
    n_tiles = len(tile_windows(150, 200, 64, 0.25))
    assert n_tiles == 12
    assert [s[0] for s in seen] == [3, 3, 3, 3]
    assert all(s[1:] == (3, 64, 64) for s in seen)
    boxes = out["boxes"]
    assert len(boxes) > 0
    assert bool((boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 200).all() and (boxes[:, 3] <= 150).all())
    assert bool((out["scores"][:-1] >= out["scores"][1:]).all())


@pytest.mark.slow
def test_the_onnx_backend_tiles_the_same_way(tiny_model, tmp_path):
    pytest.importorskip("onnxruntime")
    from detector.export.onnx import export_onnx
    from detector.export.runtime import OnnxDetector
    from detector.export.verify import calibrate_scores, compare_detections, synthetic_images
    from detector.inference.tiling import batch_predictor

    model = copy.deepcopy(tiny_model)
    model.detection = dataclasses.replace(model.detection, score_thresh=0.05)
    calibrate_scores(model, synthetic_images(64, batch=2, seed=3), above=15)
    path = export_onnx(model, tmp_path / "tiny.onnx", 64, ["a", "b"], dynamic_batch=True)
    image = synthetic_images(200, batch=1, seed=1)[0][:, :150]
    kwargs = {"tile": 64, "overlap": 0.25, "batch_size": 4, "progress": False}
    expected = predict_tiled(batch_predictor(model, 64), image, **kwargs)
    detector = OnnxDetector(path)
    actual = predict_tiled(batch_predictor(detector, detector.size), image, **kwargs)
    assert len(expected["scores"]) > 20
    stats = compare_detections([expected], [actual], score_thresh=0.05)
    assert stats["detections"] >= len(expected["scores"]) - 2


# --------------------------------------------------------------------------------------------- the eval path


def _write_voc(root: Path, images: dict[str, tuple[torch.Tensor, list[list[int]]]]) -> None:
    from PIL import Image

    from detector.data.voc import VOCObject, write_voc_annotation

    (root / "JPEGImages").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for name, (image, boxes) in images.items():
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(root / "JPEGImages" / f"{name}.png")
        write_voc_annotation(
            root / "Annotations" / f"{name}.xml",
            filename=f"{name}.png",
            size=(int(image.shape[1]), int(image.shape[2])),
            objects=[VOCObject("blob", tuple(float(v) for v in b)) for b in boxes],
        )
    (root / "ImageSets" / "Main" / "test.txt").write_text("".join(f"{n}\n" for n in images))


def test_tiled_collection_of_full_size_images_matches_their_annotations(tmp_path):
    from detector.data.voc import VOCDataset
    from detector.evaluation.voc import voc_metrics

    big = _image_with(OBJECTS, 230, 260)
    small = _image_with([[5, 5, 30, 30]], 60, 80)
    _write_voc(tmp_path, {"big": (big, OBJECTS), "small": (small, [[5, 5, 30, 30]])})
    dataset = VOCDataset(tmp_path, "test", classes=["blob"])
    ids, dets, gts = collect_tiled(BlobDetector(), dataset, 64, TileSettings(overlap=0.5, progress=False))
    assert ids == ["big", "small"]
    assert sorted(dets[0]["boxes"].round().astype(int).tolist()) == sorted(OBJECTS)
    assert voc_metrics(dets, gts, 1)["map"] == pytest.approx(1.0)


def test_the_collector_falls_back_to_the_loader_when_nothing_needs_tiles(tmp_path, monkeypatch):
    from detector.data.voc import VOCDataset

    _write_voc(tmp_path, {"small": (_image_with([[5, 5, 30, 30]], 60, 80), [[5, 5, 30, 30]])})

    class Loader:
        dataset = VOCDataset(tmp_path, "test", classes=["blob"])

    calls = []
    monkeypatch.setattr(
        "detector.evaluation.report.collect_predictions", lambda m, ld: calls.append(ld) or ([], [], [])
    )
    collector = TiledCollector(BlobDetector(), 64, TileSettings(progress=False))
    assert collector(None, Loader()) == ([], [], [])
    assert collector.tiled is False and len(calls) == 1
    collector = TiledCollector(BlobDetector(), 32, TileSettings(progress=False))  # 80 > 2 x 32: tiles
    ids, _, _ = collector(None, Loader())
    assert collector.tiled is True and ids == ["small"] and len(calls) == 1
    assert collector.describe()["tile"].startswith("auto (32 px")


def test_tile_count_grows_with_the_image_not_the_batch():
    n = len(tile_windows(10_000, 10_000, 416, 0.25))
    per_axis = math.ceil((10_000 - 416) / (416 - 104)) + 1
    assert n == per_axis**2 == 32**2
    assert np.isfinite(n)


# ------------------------------------------------------------------------------------------------ the tools


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    from tiny_weights import write_tiny_weights

    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    return write_tiny_weights(path, ["blob"], "model.score_thresh=0.0")


def _tool(name):
    from test_tools import load_tool

    return load_tool(name)


@pytest.mark.slow
def test_infer_tiles_a_large_image_and_keeps_boxes_inside_it(tiny_weights, tmp_path):
    from PIL import Image

    path = tmp_path / "big.png"
    Image.fromarray(_image_with(OBJECTS, 230, 260).permute(1, 2, 0).numpy()).save(path)
    counts = {}
    for tile in ("128", "0"):
        out = tmp_path / f"out{tile}"
        argv = ["--weights", str(tiny_weights), str(path), "--out", str(out), "--score", "0", "--tile", tile]
        assert _tool("infer").main([*argv, "--overlap", "0.25", "--no-progress"]) == 0
        dets = json.loads((out / "detections.json").read_text())
        for d in dets:
            x, y, w, h = d["bbox"]
            assert x >= 0 and y >= 0 and x + w <= 260.01 and y + h <= 230.01
        counts[tile] = len(dets)
    # one whole-image forward is capped at detections_per_img (100); nine merged tiles give more
    assert counts["0"] == 100 and counts["128"] > 100


@pytest.mark.parametrize("argv", [["--tile", "-3"], ["--overlap", "1.5"], ["--tile-batch", "0"]])
def test_infer_rejects_bad_tile_flags(tiny_weights, tmp_path, argv, capsys):
    assert _tool("infer").main(["--weights", str(tiny_weights), str(tmp_path), *argv]) == 2
    assert capsys.readouterr().err.startswith("error: ")


@pytest.mark.slow
def test_eval_runs_full_size_images_through_the_tiled_path(tiny_weights, tmp_path):
    big = _image_with(OBJECTS, 230, 260)
    small = _image_with([[5, 5, 30, 30]], 60, 80)
    _write_voc(tmp_path / "voc", {"big": (big, OBJECTS), "small": (small, [[5, 5, 30, 30]])})
    out = tmp_path / "results.json"
    argv = ["--weights", str(tiny_weights), "--fps-iters", "0", "--device", "cpu", "--out", str(out)]
    overrides = [f"data.root={tmp_path / 'voc'}", "data.test_split=test", "data.workers=0"]
    assert _tool("eval").main([*argv, "--tile", "128", *overrides]) == 0
    report = json.loads(out.read_text())
    assert report["tiling"]["tiled"] is True and report["tiling"]["tile"] == 128
    assert report["num_images"] == 2 and report["voc"]["per_class"][0]["num_gt"] == 5
    assert report["voc"]["per_class"][0]["num_det"] > 100  # the 230 x 260 image: nine merged tiles
    assert _tool("eval").main([*argv, "--tile", "0", *overrides]) == 0
    report = json.loads(out.read_text())
    assert report["tiling"]["tiled"] is False and report["voc"]["per_class"][0]["num_det"] <= 200


def test_the_pixel_limit_is_an_overridable_setting(tmp_path):
    from PIL import Image

    from detector.data.images import ImageReadError, read_image

    path = tmp_path / "wide.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(path)
    with pytest.raises(ImageReadError, match=r"1999.*--max-pixels"):
        read_image(path, max_pixels=1999)
    assert read_image(path, max_pixels=2000).shape == (3, 40, 50)
    saved = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = 100  # PIL's global would refuse it (over twice its limit) ...
        with pytest.raises(ImageReadError, match="too large"):
            read_image(path)
        assert read_image(path, max_pixels=0).shape == (3, 40, 50)  # ... an explicit 0 means no limit
        assert Image.MAX_IMAGE_PIXELS == 100  # and the global is left as it was
    finally:
        Image.MAX_IMAGE_PIXELS = saved


@pytest.mark.slow
def test_tree_sources_are_written_whole_for_tiled_evaluation(tmp_path):
    from detector.data.tree_sources import build_tree_sources
    from detector.data.trees import DeepForestNotFoundError
    from detector.data.voc import VOCDataset

    try:
        summary = build_tree_sources(tmp_path)
    except DeepForestNotFoundError as err:
        pytest.skip(str(err))
    assert summary["splits"]["train"]["sizes"] == ["1771x2472"]  # the training source's columns x < 1771
    assert summary["splits"]["val"]["sizes"] == ["400x2472"]  # and x >= 1899
    assert summary["splits"]["test"]["sizes"] == ["1249x1035", "400x400", "400x400"]
    # 574 crowns in the source: 385 kept by the tile rule left of the gap, 130 right of it, 59 in or cut by it
    assert [summary["splits"][s]["boxes"] for s in ("train", "val", "test")] == [385, 130, 377]
    val = VOCDataset(tmp_path, "val", classes=["tree"])
    assert [r.image_id for r in val.records] == ["2019_YELL_2_528000_4978000_image_crop2_x1899_2299"]
    test = VOCDataset(tmp_path, "test", classes=["tree"])
    assert [r.size for r in test.records] == [(1035, 1249), (400, 400), (400, 400)]
    assert sum(len(r.boxes) for r in test.records) == 377
    assert choose_tile(1035, 1249, 416, None) == 416  # the eval tool tiles this one, not the 400 px ones
    assert build_tree_sources(tmp_path)["files_written"] == 0  # idempotent
