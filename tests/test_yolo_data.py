"""YOLODataset: records from generated and real (solaris) YOLO labels, and a clear error per bad line."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from format_writers import solid_image, write_yolo_split
from PIL import Image

from detector.data.coco import COCODataset
from detector.data.images import ImageReadError
from detector.data.records import BoxFixWarning
from detector.data.yolo import YOLODataset, YOLOFileNotFoundError, YOLOFormatError, read_yolo_names

SIZE = (50, 100)  # (H, W)


def _records(ds: YOLODataset) -> dict[str, object]:
    return {rec.image_id: rec for rec in ds.records}


def test_boxes_are_denormalized_by_the_image_size(tmp_path: Path) -> None:
    write_yolo_split(
        tmp_path,
        "train",
        {
            "a.jpg": (SIZE, "0 0.5 0.5 0.2 0.4\n1 0.25 0.2 0.1 0.2\n"),
            "sub/b.png": ((40, 40), "\n1 0.5 0.5 1 1\n\n"),  # blank lines are skipped; subfolders searched
            "empty.png": (SIZE, ""),  # empty label file: no objects
            "nolabel.png": (SIZE, None),  # missing label file: no objects
            "seg.png": (SIZE, "0 0.1 0.2 0.3 0.2 0.3 0.6 0.1 0.6\n"),  # a segment: its bounding box
        },
    )
    ds = YOLODataset(tmp_path, "train")
    assert ds.class_names == ("cat", "dog") and len(ds) == 5
    recs = _records(ds)
    assert sorted(recs) == ["a", "empty", "nolabel", "seg", "sub/b"]
    a = recs["a"]
    assert a.size == SIZE and a.annotation_path == tmp_path / "labels" / "train" / "a.txt"
    np.testing.assert_allclose(a.boxes, [[40, 15, 60, 35], [20, 5, 30, 15]], atol=1e-5)
    assert a.labels.tolist() == [1, 2] and a.difficult.tolist() == [False, False]
    assert recs["sub/b"].boxes.tolist() == [[0, 0, 40, 40]]
    assert recs["sub/b"].annotation_path == tmp_path / "labels" / "train" / "sub" / "b.txt"
    for neg in ("empty", "nolabel"):
        assert recs[neg].boxes.shape == (0, 4) and recs[neg].labels.shape == (0,)
    np.testing.assert_allclose(recs["seg"].boxes, [[10, 10, 30, 30]], atol=1e-5)
    image, target = ds[sorted(recs).index("a")]
    assert image.shape == (3, *SIZE) and image.dtype == torch.uint8
    assert target["boxes"].shape == (2, 4) and target["image_id"] == "a"


def test_names_from_a_dict_and_given_classes(tmp_path: Path) -> None:
    write_yolo_split(
        tmp_path,
        "val",
        {"a.png": (SIZE, "2 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.1 0.1\n")},
        names={0: "cat", 1: "dog", 2: "bird"},
    )
    assert read_yolo_names(tmp_path) == ["cat", "dog", "bird"]
    assert YOLODataset(tmp_path, "val").records[0].labels.tolist() == [3, 1]
    # Given classes select and order data.yaml's names by name.
    assert YOLODataset(tmp_path, "val", classes=["bird", "cat"]).records[0].labels.tolist() == [1, 2]
    with pytest.raises(YOLOFormatError, match=r"a\.txt: line 1: class 2 \('bird'\) is not in data.classes"):
        YOLODataset(tmp_path, "val", classes=["cat", "dog"])
    with pytest.raises(YOLOFormatError, match=r"data\.yaml: class\(es\) 'zebra' of data.classes are not in"):
        YOLODataset(tmp_path, "val", classes=["zebra"])


def test_without_data_yaml_classes_name_the_indices(tmp_path: Path) -> None:
    write_yolo_split(tmp_path, "train", {"a.png": (SIZE, "1 0.5 0.5 0.2 0.2\n")}, names=None)
    with pytest.raises(YOLOFileNotFoundError, match="no data.yaml with names: .*set data.classes"):
        YOLODataset(tmp_path, "train")
    ds = YOLODataset(tmp_path, "train", classes=["x", "y"])
    assert ds.class_names == ("x", "y") and ds.records[0].labels.tolist() == [2]


def test_clipped_and_degenerate_boxes_are_counted_in_one_warning(tmp_path: Path) -> None:
    text = "0 0.05 0.5 0.2 0.2\n0 0.5 0.5 0.0 0.2\n0 1.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n"
    write_yolo_split(tmp_path, "train", {"a.png": (SIZE, text)})
    with pytest.warns(BoxFixWarning, match=r"clipped 1 box.*a\.txt.*dropped 2 degenerate.*a\.txt"):
        ds = YOLODataset(tmp_path, "train")
    np.testing.assert_allclose(ds.records[0].boxes, [[0, 20, 15, 30], [40, 20, 60, 30]], atol=1e-5)


BAD_LINES = [
    ("0 0.5 0.5 0.2", r"line 2: expected 'class cx cy w h' .*got 4 field\(s\)"),
    ("0 0.5 0.5 0.2 0.2 0.9", r"line 2: expected 'class cx cy w h'"),  # a prediction line with a score
    ("0 0.5 abc 0.2 0.2", r"line 2: field 3 is not a number: 'abc'"),
    ("0 0.5 0.5 nan 0.2", r"line 2: field 4 is not finite: 'nan'"),
    ("0 0.5 0.5 -0.2 0.2", r"line 2: negative width or height \(w=-0.2, h=0.2\)"),
    ("5 0.5 0.5 0.2 0.2", r"line 2: unknown class 5; the dataset has 2 class\(es\), 0\.\.1"),
    ("-1 0.5 0.5 0.2 0.2", r"line 2: unknown class -1"),
    ("0.5 0.5 0.5 0.2 0.2", r"line 2: class '0.5' is not a whole number"),
    ("cat 0.5 0.5 0.2 0.2", r"line 2: class is not a number: 'cat'"),
]


@pytest.mark.parametrize(("line", "message"), BAD_LINES)
def test_bad_lines_name_the_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    write_yolo_split(tmp_path, "train", {"a.png": (SIZE, f"0 0.5 0.5 0.1 0.1\n{line}\n")})
    with pytest.raises(YOLOFormatError, match=rf"labels/train/a\.txt: {message}"):
        YOLODataset(tmp_path, "train")


def test_bad_files_and_folders(tmp_path: Path) -> None:
    write_yolo_split(tmp_path, "train", {"a.png": (SIZE, ""), "a.jpg": (SIZE, "")})
    with pytest.raises(
        YOLOFormatError, match=r"duplicate image id 'a': .*a\.jpg and .*a\.png share the label"
    ):
        YOLODataset(tmp_path, "train")
    (tmp_path / "images" / "train" / "a.jpg").unlink()
    (tmp_path / "labels" / "train" / "a.txt").write_bytes(b"0 0.5 0.5 0.1 0.1 \xff\n")
    with pytest.raises(YOLOFormatError, match=r"a\.txt: label file is not UTF-8 text"):
        YOLODataset(tmp_path, "train")
    with pytest.raises(
        YOLOFileNotFoundError,
        match=r"images/test: YOLO images folder of split 'test' not found; "
        r"splits under .*images: train",
    ):
        YOLODataset(tmp_path, "test")
    (tmp_path / "images" / "val").mkdir()
    with pytest.raises(YOLOFileNotFoundError, match=r"images/val: no images"):
        YOLODataset(tmp_path, "val")


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("names: [a, b\n", r"cannot read as YAML"),
        ("- a\n- b\n", r"expected a mapping"),
        ("names:\n  0: a\n  2: b\n", r"names as a dict must have the keys 0\.\.1"),
        ("names: []\n", r"names must be a non-empty list"),
        ("names: [a, a]\n", r"names contain duplicates"),
        ("nc: 3\nnames: [a, b]\n", r"nc: 3 but names lists 2 classes"),
        ("names: [a, null]\n", r"class 1 has no usable name"),
    ],
)
def test_bad_data_yaml(tmp_path: Path, yaml_text: str, message: str) -> None:
    write_yolo_split(tmp_path, "train", {"a.png": (SIZE, "")}, names=None)
    (tmp_path / "data.yaml").write_text(yaml_text)
    with pytest.raises(YOLOFormatError, match=rf"data\.yaml: {message}"):
        YOLODataset(tmp_path, "train")


def test_unreadable_image_is_named_when_the_dataset_is_built(tmp_path: Path) -> None:
    write_yolo_split(tmp_path, "train", {"a.png": (SIZE, "0 0.5 0.5 0.1 0.1\n")})
    (tmp_path / "images" / "train" / "a.png").write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError, match=r"images/train/a\.png: not a recognised image file"):
        YOLODataset(tmp_path, "train")


def test_exif_rotated_jpeg_is_denormalized_by_its_displayed_size(tmp_path: Path) -> None:
    """Labels are normalized to the image as shown (EXIF rotation applied), as the loader returns it."""
    write_yolo_split(tmp_path, "train", {"r.jpg": ((10, 10), "0 0.5 0.25 1 0.5\n")})
    stored = Image.new("RGB", (100, 50), (90, 90, 90))  # stored 100 wide x 50 high; orientation 6 = rotate 90
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "images" / "train" / "r.jpg", exif=exif.tobytes())
    ds = YOLODataset(tmp_path, "train")
    assert ds.records[0].size == (100, 50)
    np.testing.assert_allclose(ds.records[0].boxes, [[0, 0, 50, 50]], atol=1e-5)
    image, _ = ds[0]
    assert image.shape == (3, 100, 50)  # the size check at load agrees


def test_image_replaced_after_the_dataset_was_built(tmp_path: Path) -> None:
    write_yolo_split(tmp_path, "train", {"a.png": (SIZE, "")})
    ds = YOLODataset(tmp_path, "train")
    solid_image(tmp_path / "images" / "train" / "a.png", (20, 20))
    with pytest.raises(YOLOFormatError, match=r"a\.png: the image header said 100x50 .* decodes to 20x20"):
        ds[0]


def test_solaris_geotiff_yolo_labels_match_its_coco_file(tmp_path: Path) -> None:
    """solaris==0.4.0 ships the same 43 building boxes of one 900 x 900 GeoTIFF as YOLO txt and as COCO JSON:
    read by the two readers, the boxes agree."""
    spec = importlib.util.find_spec("solaris")  # located, never imported
    if spec is None or spec.origin is None:
        pytest.skip("solaris is not installed (pip install --no-deps solaris==0.4.0; see the Makefile)")
    data = Path(spec.origin).parent / "data"
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    (tmp_path / "images" / "train" / "sample_geotiff.tif").symlink_to(data / "sample_geotiff.tif")
    (tmp_path / "labels" / "train" / "sample_geotiff.txt").write_bytes(
        (data / "sample_geotiff.tif.txt").read_bytes()
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yolo = YOLODataset(tmp_path, "train", classes=["building"])
    rec = yolo.records[0]
    assert rec.size == (900, 900) and len(rec.boxes) == 43 and set(rec.labels.tolist()) == {1}
    (tmp_path / "ann.json").write_text(json.dumps(json.loads((data / "coco_sample_2.json").read_text())))
    (tmp_path / "sample_geotiff.tif").symlink_to(data / "sample_geotiff.tif")
    coco = COCODataset(tmp_path, "ann.json").records[0]

    def order(boxes: np.ndarray) -> np.ndarray:
        return boxes[np.lexsort((boxes[:, 1], boxes[:, 0]))]

    np.testing.assert_allclose(order(rec.boxes), order(coco.boxes), atol=1e-3)
    image, target = yolo[0]
    assert image.shape == (3, 900, 900) and len(target["boxes"]) == 43
