"""COCODataset: records from generated and real (solaris) COCO files, and a clear error per bad input."""

from __future__ import annotations

import importlib.util
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from format_writers import solid_image, tiny_coco, write_coco_file

from detector.data.coco import (
    COCOBoxWarning,
    COCODataset,
    COCOFileNotFoundError,
    COCOFormatError,
    coco_class_names,
)
from detector.data.images import ImageReadError
from detector.data.records import BoxFixWarning


def _by_name(ds: COCODataset) -> dict[str, object]:
    return {rec.image_path.name: rec for rec in ds.records}


def test_non_contiguous_ids_crowd_and_empty_images(tmp_path: Path) -> None:
    expected = tiny_coco(tmp_path)
    ds = COCODataset(tmp_path, "annotations/train.json")
    assert ds.class_names == ("cat", "dog", "bird")  # the order of `categories`, ids 7, 3, 42
    assert coco_class_names(tmp_path / "annotations/train.json") == ["cat", "dog", "bird"]
    assert len(ds) == 3  # the image without annotations is kept, as a negative
    recs = _by_name(ds)
    assert recs["b.png"].image_path == tmp_path / "images" / "b.png"  # found under root/images/
    assert recs["a.png"].image_path == tmp_path / "a.png"  # found relative to root first
    for name, exp in expected.items():
        rec = recs[name]
        assert rec.image_id == exp["image_id"] and rec.size == (60, 80)
        np.testing.assert_array_equal(rec.boxes, exp["boxes"])  # [x, y, w, h] -> x, y, x + w, y + h
        np.testing.assert_array_equal(rec.labels, exp["labels"])
        np.testing.assert_array_equal(rec.difficult, exp["crowd"])  # iscrowd = the ignore flag
        assert rec.annotation_path == tmp_path / "annotations/train.json"
        assert rec.annotation_ref == f"image id {int(exp['image_id'])}"
    image, target = ds[[r.image_path.name for r in ds.records].index("b.png")]
    assert image.shape == (3, 60, 80) and image.dtype == torch.uint8
    assert target["difficult"].tolist() == [True, False] and target["labels"].tolist() == [2, 1]
    assert target["boxes"].tolist() == [[10, 10, 40, 40], [0, 0, 5, 5]]
    _, empty = ds[[r.image_path.name for r in ds.records].index("empty.png")]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)


def test_given_classes_choose_the_order_by_name(tmp_path: Path) -> None:
    tiny_coco(tmp_path)
    ds = COCODataset(tmp_path, "annotations/train.json", classes=["bird", "dog", "cat"])
    assert _by_name(ds)["a.png"].labels.tolist() == [3, 1]  # cat -> 3, bird -> 1
    with pytest.raises(
        COCOFormatError, match=r"train\.json: annotation id 1: category 'cat' \(id 7\) is not in"
    ):
        COCODataset(tmp_path, "annotations/train.json", classes=["bird", "dog"])
    with pytest.raises(COCOFormatError, match=r"class\(es\) 'zebra' of data.classes are not categories"):
        COCODataset(tmp_path, "annotations/train.json", classes=["cat", "zebra"])


def test_coco_2017_layout_and_missing_sizes(tmp_path: Path) -> None:
    """instances_val2017.json, images in root/val2017/; no width/height: clipped when the image is read."""
    solid_image(tmp_path / "val2017" / "0001.jpg", (30, 40))
    write_coco_file(
        tmp_path / "annotations" / "instances_val2017.json",
        [{"id": 1, "file_name": "0001.jpg"}],
        [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [30, 20, 50, 50]}],
        [{"id": 1, "name": "person"}],
    )
    ds = COCODataset(tmp_path, "annotations/instances_val2017.json")
    assert ds.records[0].image_path == tmp_path / "val2017" / "0001.jpg" and ds.records[0].size is None
    with pytest.warns(COCOBoxWarning, match=r"clipped 1 box.*instances_val2017\.json \(image id 1\)"):
        _, target = ds[0]
    assert target["boxes"].tolist() == [[30, 20, 40, 30]]


def test_clipped_and_degenerate_boxes_are_counted_in_one_warning(tmp_path: Path) -> None:
    solid_image(tmp_path / "a.png", (20, 20))
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [-5, 2, 10, 10]},  # clipped
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [15, 15, 10, 10]},  # clipped
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [3, 3, 0, 5]},  # zero width: dropped
        {"id": 4, "image_id": 1, "category_id": 1, "bbox": [30, 30, 5, 5]},  # wholly outside: dropped
    ]
    write_coco_file(
        tmp_path / "a.json",
        [{"id": 1, "file_name": "a.png", "width": 20, "height": 20}],
        anns,
        [{"id": 1, "name": "x"}],
    )
    with pytest.warns(BoxFixWarning, match=r"clipped 2 box.*dropped 2 degenerate.*a\.json \(image id 1\)"):
        ds = COCODataset(tmp_path, "a.json")
    assert ds.records[0].boxes.tolist() == [[0, 2, 5, 12], [15, 15, 20, 20]]


def _one_image(tmp_path: Path, **image) -> dict:
    solid_image(tmp_path / "a.png", (20, 30))
    return {"id": 1, "file_name": "a.png", "width": 30, "height": 20, **image}


def _ann(**kw) -> dict:
    return {"id": 9, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "iscrowd": 0, **kw}


BAD_ANNOTATIONS = [
    (_ann(category_id=5), r"annotation id 9: unknown category_id 5; categories: 1 \('x'\)"),
    (_ann(bbox=[1, 2, float("nan"), 4]), r"annotation id 9: bbox \[1, 2, nan, 4\] is not finite"),
    (_ann(bbox=[1, 2, float("inf"), 4]), r"annotation id 9: bbox .* is not finite"),
    (_ann(bbox=[1, 2, -3, 4]), r"annotation id 9: bbox \[1, 2, -3, 4\] has a negative width or height"),
    (_ann(bbox=[1, 2, 3]), r"annotation id 9: bbox must be a list of 4 numbers"),
    (_ann(bbox=[1, 2, "3", 4]), r"annotation id 9: bbox must be a list of 4 numbers"),
    (_ann(bbox=None), r"annotation id 9: bbox must be a list of 4 numbers"),
    (_ann(image_id=2), r"annotation id 9: image_id 2 is not an id in 'images'"),
    (_ann(image_id=[1]), r"annotation id 9: image_id \[1\] is not an id in 'images'"),
    (_ann(iscrowd=2), r"annotation id 9: iscrowd must be 0 or 1, got 2"),
    ({"image_id": 1, "category_id": 1, "bbox": None}, r"annotation #0: bbox must be"),
    ("not an object", r"annotation #0 is not an object"),
]


@pytest.mark.parametrize(("ann", "message"), BAD_ANNOTATIONS)
def test_bad_annotations_name_the_file_and_id(tmp_path: Path, ann: object, message: str) -> None:
    path = write_coco_file(tmp_path / "bad.json", [_one_image(tmp_path)], [ann], [{"id": 1, "name": "x"}])
    with pytest.raises(COCOFormatError, match=rf"{path}: {message}"):
        COCODataset(tmp_path, "bad.json")


def test_bad_files_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "cut.json").write_text('{"images": [{"id": 1,\n "file_name": ')
    with pytest.raises(COCOFormatError, match=r"cut\.json: malformed JSON at line 2 column"):
        COCODataset(tmp_path, "cut.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(COCOFormatError, match=r"list\.json: expected a JSON object"):
        COCODataset(tmp_path, "list.json")
    (tmp_path / "nocats.json").write_text('{"images": [], "annotations": []}')
    with pytest.raises(COCOFormatError, match=r"nocats\.json: 'categories' must be a list"):
        COCODataset(tmp_path, "nocats.json")
    (tmp_path / "latin.json").write_bytes(b'{"images": [], "categories": [{"id": 1, "name": "caf\xe9"}]}')
    with pytest.raises(COCOFormatError, match=r"latin\.json: cannot read as JSON"):
        COCODataset(tmp_path, "latin.json")
    with pytest.raises(COCOFileNotFoundError, match=r"absent\.json: COCO annotation file not found"):
        COCODataset(tmp_path, "absent.json")
    with pytest.raises(FileNotFoundError, match="COCO dataset folder not found"):
        COCODataset(tmp_path / "nowhere", "a.json")


@pytest.mark.parametrize(
    ("images", "categories", "message"),
    [
        (
            [{"id": 1, "file_name": "a.png"}, {"id": 1, "file_name": "a.png"}],
            None,
            r": duplicate image id 1 \(images #0 and #1\)",
        ),
        (
            [{"id": 1, "file_name": "gone.png"}],
            None,
            r" \(image id 1\): image 'gone.png' not found; looked for: .*gone\.png, .*images/gone\.png",
        ),
        ([{"id": 1}], None, r" \(image id 1\): needs a non-empty 'file_name'"),
        ([{"file_name": "a.png"}], None, r": image #0 needs an integer 'id'"),
        (
            [{"id": 1, "file_name": "a.png", "width": 0, "height": 5}],
            None,
            r" \(image id 1\): width and height must be positive whole numbers",
        ),
        (
            [{"id": 1, "file_name": "a.png", "width": 30.5, "height": 20}],
            None,
            r" \(image id 1\): width and height must be positive whole numbers",
        ),
        ([], [{"id": 1, "name": "x"}, {"id": 1, "name": "y"}], r": duplicate category id 1"),
        ([], [{"id": 1, "name": "x"}, {"id": 2, "name": "x"}], r": duplicate category name 'x'"),
        ([], [{"id": 1, "name": ""}], r": category id 1 needs a non-empty 'name'"),
        ([], [{"id": "1", "name": "x"}], r": category #0 needs an integer 'id'"),
        ([], [], r": 'categories' is empty"),
    ],
)
def test_bad_images_and_categories(tmp_path: Path, images, categories, message: str) -> None:
    solid_image(tmp_path / "a.png", (20, 30))
    cats = categories if categories is not None else [{"id": 1, "name": "x"}]
    path = write_coco_file(tmp_path / "bad.json", images, [], cats)
    with pytest.raises(COCOFormatError, match=rf"{path}{message}"):
        COCODataset(tmp_path, "bad.json")


def test_size_disagreeing_with_the_image_and_unreadable_images(tmp_path: Path) -> None:
    image = _one_image(tmp_path, width=20, height=30)  # the file is 30 x 20 (W x H): swapped
    write_coco_file(tmp_path / "a.json", [image], [], [{"id": 1, "name": "x"}])
    ds = COCODataset(tmp_path, "a.json")
    with pytest.raises(
        COCOFormatError,
        match=r"a\.json \(image id 1\): width/height say 20x30 but image .*a\.png "
        r"is 30x20 \(sizes swapped",
    ):
        ds[0]
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(ImageReadError, match=r"a\.png: "):
        ds[0]


def test_numeric_category_names_become_text(tmp_path: Path) -> None:
    """solaris' coco_sample_2.json names its categories 1.0 and 0.0 (numbers); they are read as text."""
    solid_image(tmp_path / "a.png", (20, 30))
    write_coco_file(
        tmp_path / "a.json",
        [{"id": 1, "file_name": "a.png"}],
        [],
        [{"id": 1, "name": 1.0}, {"id": 2, "name": 0}],
    )
    assert COCODataset(tmp_path, "a.json").class_names == ("1.0", "0")


# ----------------------------------------------------------------------------------------- real files


def _package_data(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # located, never imported
    if spec is None or spec.origin is None:
        pytest.skip(f"{name} is not installed (pip install --no-deps {name})")
    return Path(spec.origin).parent / "data"


def test_solaris_geotiff_coco_file(tmp_path: Path) -> None:
    """solaris' real 900 x 900 GeoTIFF with its 43 building footprints as COCO JSON (solaris==0.4.0)."""
    data = _package_data("solaris")
    (tmp_path / "annotations").mkdir()
    shutil.copy(data / "coco_sample_2.json", tmp_path / "annotations" / "train.json")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "sample_geotiff.tif").symlink_to(data / "sample_geotiff.tif")
    raw = json.loads((data / "coco_sample_2.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every footprint box lies inside the image: nothing clipped
        ds = COCODataset(tmp_path, "annotations/train.json")
    assert ds.class_names == ("1.0", "0.0") and len(ds) == 1
    rec = ds.records[0]
    assert rec.size == (900, 900) and len(rec.boxes) == 43 and not rec.difficult.any()
    expected = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in raw["annotations"])])
    np.testing.assert_allclose(rec.boxes, expected, atol=1e-4)
    cat = {1: 1, 2: 2}
    assert rec.labels.tolist() == [cat[a["category_id"]] for a in raw["annotations"]]
    image, target = ds[0]  # a one-band 16-bit GeoTIFF tagged PlanarConfiguration=2: it decodes
    assert image.shape == (3, 900, 900) and len(target["boxes"]) == 43
    assert int(image.max()) > int(image.min())
