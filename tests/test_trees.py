"""The bundled tree dataset: the tiling rule, recomputed independently, determinism and the CLI."""

from __future__ import annotations

import importlib.util
import shutil
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detector.data import trees
from detector.data.trees import (
    DeepForestNotFoundError,
    build_trees_dataset,
    find_deepforest_data,
    tile_boxes,
    tile_origins,
)
from detector.data.voc import VOCDataset

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["2019_YELL_2_528000_4978000_image_crop2"]
TEST = ["2019_YELL_2_541000_4977000_image_crop", "OSBS_029", "SOAP_061"]
# the training orthophoto's columns [x0, x1) each split takes (2299 px wide): a 128 px gap in between
COLUMNS = {"train": (0, 1771), "val": (1899, 2299)}


def _load_tool():
    spec = importlib.util.spec_from_file_location("prepare_trees", ROOT / "tools" / "prepare_trees.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------- the rule, by hand


def test_tile_origins() -> None:
    assert tile_origins(400) == [0]
    assert tile_origins(401) == [0, 1]
    assert tile_origins(800) == [0, 400]
    assert tile_origins(801) == [0, 400, 401]
    assert tile_origins(1249) == [0, 400, 800, 849]
    assert tile_origins(2299) == [0, 400, 800, 1200, 1600, 1899]
    with pytest.raises(ValueError, match="smaller than the 400 px tile"):
        tile_origins(399)


def test_tile_boxes_keep_rule() -> None:
    boxes = np.array(
        [
            [10, 10, 50, 50],  # inside
            [380, 10, 430, 50],  # 20 of 50 px wide inside: 40% of the area -> dropped
            [370, 10, 420, 50],  # 30 of 50 px inside: 60% -> kept, clipped
            [398.5, 10, 420, 50],  # 1.5 px wide after clipping -> dropped
            [398, 10, 399, 14],  # 1 px wide, entirely inside -> dropped (width < 2)
            [500, 500, 520, 520],  # elsewhere
            [390, 10, 410, 50],  # exactly 50% -> kept
        ],
        dtype=float,
    )
    clipped, keep = tile_boxes(boxes, 0, 0)
    assert keep.tolist() == [True, False, True, False, False, False, True]
    np.testing.assert_array_equal(clipped[keep], [[10, 10, 50, 50], [370, 10, 400, 50], [390, 10, 400, 50]])
    shifted, keep = tile_boxes(np.array([[500.0, 500, 520, 520]]), 400, 450)
    assert keep.tolist() == [True] and shifted.tolist() == [[100, 50, 120, 70]]


# ------------------------------------------------------------------------------ the built dataset (real data)


def _source_dir() -> Path:
    try:
        return find_deepforest_data()
    except DeepForestNotFoundError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    _source_dir()
    out = tmp_path_factory.mktemp("trees") / "trees"
    return out, build_trees_dataset(out)


def _source_objects(xml_path: Path) -> list[tuple[float, float, float, float]]:
    """Source boxes in 0-based continuous coordinates, read with plain ElementTree (independent code)."""
    boxes = []
    for obj in ET.parse(xml_path).getroot().iter("object"):
        bb = obj.find("bndbox")
        xmin, ymin, xmax, ymax = (float(bb.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append((xmin - 1, ymin - 1, xmax, ymax))
    return boxes


def _expected_tile_boxes(source_boxes, ox: int, oy: int) -> list[tuple[float, float, float, float]]:
    """The rule written out plainly, box by box."""
    kept = []
    for x1, y1, x2, y2 in source_boxes:
        cx1, cy1 = min(max(x1 - ox, 0), 400), min(max(y1 - oy, 0), 400)
        cx2, cy2 = min(max(x2 - ox, 0), 400), min(max(y2 - oy, 0), 400)
        w, h = cx2 - cx1, cy2 - cy1
        if w >= 2 and h >= 2 and w * h >= 0.5 * (x2 - x1) * (y2 - y1):
            kept.append((cx1, cy1, cx2, cy2))
    return kept


def _origins_plain(size: int) -> list[int]:
    origins, o = [], 0
    while o < size - 400:
        origins.append(o)
        o += 400
    return origins + [size - 400]


def _written_boxes(xml_path: Path) -> list[tuple[float, float, float, float]]:
    root = ET.parse(xml_path).getroot()
    assert root.find("size/width").text == "400" and root.find("size/height").text == "400"
    out = []
    for obj in root.iter("object"):
        assert obj.find("name").text == "tree" and obj.find("difficult").text == "0"
        bb = obj.find("bndbox")
        texts = [bb.find(t).text for t in ("xmin", "ymin", "xmax", "ymax")]
        assert all(t.lstrip("-").isdigit() for t in texts)  # integer coordinates, as documented
        xmin, ymin, xmax, ymax = (int(t) for t in texts)
        out.append((xmin - 1, ymin - 1, xmax, ymax))
    return out


def test_splits_and_counts_follow_the_rule(built) -> None:
    out, summary = built
    src = _source_dir()
    for split, sources in (("train", TRAIN), ("val", TRAIN), ("test", TEST)):
        expected_ids, expected_boxes = [], 0
        for name in sources:
            width, height = Image.open(src / f"{name}.png").size
            x0, x1 = COLUMNS.get(split, (0, width))
            boxes = _source_objects(src / f"{name}.xml")
            for oy in _origins_plain(height):
                for ox in (x0 + o for o in _origins_plain(x1 - x0)):
                    kept = _expected_tile_boxes(boxes, ox, oy)
                    if split != "train" or kept:
                        expected_ids.append(f"{name}_x{ox:04d}_y{oy:04d}")
                        expected_boxes += len(kept)
        ids = (out / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
        assert ids == expected_ids
        assert (
            summary["splits"][split]["tiles"] == len(ids)
            and summary["splits"][split]["boxes"] == expected_boxes
        )
    assert summary["splits"]["test"]["tiles"] == 4 * 3 + 1 + 1  # 1249x1035 -> 4x3 tiles; two 400 px images
    assert summary["splits"]["train"]["tiles"] < 5 * 7  # 1771x2472 -> 5x7 tiles, empty ones dropped
    assert summary["splits"]["val"]["tiles"] == 7  # 400x2472 -> one column of 7 tiles


def test_summary_statistics_recomputed_from_the_written_files(built) -> None:
    """Median crown side and mean luma of each split, recomputed from the PNG and XML files written."""
    out, summary = built
    for split in ("train", "val", "test"):
        ids = (out / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
        sides, lumas = [], []
        for tile_id in ids:
            for x0, y0, x1, y1 in _written_boxes(out / "Annotations" / f"{tile_id}.xml"):
                sides.append(((x1 - x0) * (y1 - y0)) ** 0.5)
            rgb = np.asarray(
                Image.open(out / "JPEGImages" / f"{tile_id}.png").convert("RGB"), dtype=np.float64
            )
            lumas.append((0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]).mean())
        info = summary["splits"][split]
        assert info["crown_px"] == pytest.approx(float(np.median(sides)))
        assert info["luma"] == pytest.approx(float(np.mean(lumas)))
    rows = trees.summary_rows(summary)
    assert rows[0][4] == f"{summary['splits']['train']['boxes'] / summary['splits']['train']['tiles']:.1f}"
    assert rows[-1][:4] == ("total", 5, 54, sum(i["boxes"] for i in summary["splits"].values()))


def test_no_crown_is_seen_by_both_train_and_val(built) -> None:
    out, _ = built
    boxes = np.array(_source_objects(_source_dir() / f"{TRAIN[0]}.xml"), dtype=np.float64)
    seen = {}
    for split in ("train", "val"):
        ids = (out / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
        hit = np.zeros(len(boxes), dtype=bool)
        for tile_id in ids:
            _, xs, ys = tile_id.rsplit("_", 2)
            ox, oy = int(xs[1:]), int(ys[1:])
            inside_x = (boxes[:, 2] > ox) & (boxes[:, 0] < ox + 400)
            hit |= inside_x & (boxes[:, 3] > oy) & (boxes[:, 1] < oy + 400)
        seen[split] = hit
    assert seen["train"].sum() > 300 and seen["val"].sum() > 100
    assert not (seen["train"] & seen["val"]).any()  # not even a sliver of one crown in both


def test_a_gap_narrower_than_a_crown_is_refused(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(trees, "SPLIT_COLUMNS", {"train": (0, 1880), "val": (1899, None)})
    with pytest.raises(ValueError, match="reaches into more than one of the splits"):
        build_trees_dataset(tmp_path / "t", _source_dir())
    assert not (tmp_path / "t").exists()  # checked before anything is written


@pytest.mark.parametrize(
    "tile_id",
    [
        "2019_YELL_2_528000_4978000_image_crop2_x1899_y2072",  # both last (shifted) origins
        "2019_YELL_2_528000_4978000_image_crop2_x0400_y0800",
        "2019_YELL_2_541000_4977000_image_crop_x0849_y0635",
        "2019_YELL_2_541000_4977000_image_crop_x0400_y0000",
        "OSBS_029_x0000_y0000",
    ],
)
def test_tiles_recomputed_independently(built, tile_id: str) -> None:
    out, _ = built
    src = _source_dir()
    name, xs, ys = tile_id.rsplit("_", 2)
    ox, oy = int(xs[1:]), int(ys[1:])
    source = np.asarray(Image.open(src / f"{name}.png").convert("RGB"))
    tile = np.asarray(Image.open(out / "JPEGImages" / f"{tile_id}.png"))
    np.testing.assert_array_equal(tile, source[oy : oy + 400, ox : ox + 400])  # lossless PNG
    expected = _expected_tile_boxes(_source_objects(src / f"{name}.xml"), ox, oy)
    assert sorted(_written_boxes(out / "Annotations" / f"{tile_id}.xml")) == sorted(expected)
    assert expected  # these tiles do hold trees


def test_reads_back_as_a_voc_dataset(built) -> None:
    out, summary = built
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every written box is inside its tile: nothing to clip or drop
        test = VOCDataset(out, "test", classes=("tree",))
    assert len(test) == summary["splits"]["test"]["tiles"]
    assert sum(len(r.labels) for r in test.records) == summary["splits"]["test"]["boxes"]
    image, target = test[len(test) - 1]  # SOAP_061
    assert image.shape == (3, 400, 400) and target["image_id"] == "SOAP_061_x0000_y0000"
    assert (target["labels"] == 1).all() and not target["difficult"].any()


@pytest.mark.slow
def test_rerun_through_the_tool_is_byte_identical(built, capsys) -> None:
    out, summary = built
    snapshot = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert len(snapshot) == 2 * sum(s["tiles"] for s in summary["splits"].values()) + 3
    shutil.rmtree(out / "Annotations")  # rebuilt from scratch: must come back byte for byte
    (out / "ImageSets" / "Main" / "train.txt").unlink()
    assert _load_tool().main(["--out", str(out)]) == 0
    after = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert after.keys() == snapshot.keys()
    assert all(after[k] == snapshot[k] for k in snapshot)
    printed = capsys.readouterr().out
    n_tiles = sum(s["tiles"] for s in summary["splits"].values())
    assert f"; {n_tiles + 1} file(s) written)" in printed  # every XML and the train split file, no PNG
    for split in ("train", "val", "test"):
        info = summary["splits"][split]
        line = next(line for line in printed.splitlines() if line.startswith(split))
        assert line.split() == [
            split,
            str(len(info["sources"])),
            str(info["tiles"]),
            str(info["boxes"]),
            f"{info['boxes'] / info['tiles']:.1f}",
            f"{info['crown_px']:.1f}",
            f"{info['luma']:.0f}",
        ]


# ------------------------------------------------------------------------------------------------ failures


def test_missing_deepforest_says_what_to_install(monkeypatch, tmp_path: Path, capsys) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        trees.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "deepforest" else real_find_spec(name, *a),
    )
    with pytest.raises(DeepForestNotFoundError, match=r"pip install --no-deps deepforest==2\.1\.0"):
        build_trees_dataset(tmp_path / "out")
    assert _load_tool().main(["--out", str(tmp_path / "out")]) == 2
    assert "pip install --no-deps deepforest==2.1.0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_source_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(
        DeepForestNotFoundError, match=r"2019_YELL_2_528000_4978000_image_crop2\.xml: tree source"
    ):
        build_trees_dataset(tmp_path / "out", source_dir=tmp_path)


def test_source_size_mismatch(tmp_path: Path) -> None:
    src = _source_dir()
    fake = tmp_path / "src"
    fake.mkdir()
    name = TRAIN[0]
    shutil.copy(src / f"{name}.xml", fake / f"{name}.xml")
    Image.new("RGB", (500, 400)).save(fake / f"{name}.png")
    with pytest.raises(ValueError, match=rf"{name}\.xml: <size> 2299x2472 does not match"):
        build_trees_dataset(tmp_path / "out", source_dir=fake)
