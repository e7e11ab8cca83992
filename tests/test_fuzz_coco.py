"""Fuzzing the COCO reader: every annotation file ends in clean records or a COCOFormatError naming the file.

Random and mutated bytes (no other exception type may leak), and generated files, with every field drawn from
good and bad values of every JSON type, checked against a small independent oracle: which files must be
refused, and what the records of the others hold (boxes clipped to the stated size, degenerate ones dropped).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from detector.data.coco import COCODataset, COCOFormatError
from detector.data.images import ImageReadError
from detector.data.records import BoxFixWarning

H, W = 24, 32
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
VALID = {
    "images": [{"id": 1, "file_name": "a.png", "width": W, "height": H}, {"id": 2, "file_name": "b.png"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 5, "bbox": [2, 3, 10, 8], "iscrowd": 0},
        {"id": 2, "image_id": 2, "category_id": 9, "bbox": [20.5, 1, 30, 4], "iscrowd": 1},
    ],
    "categories": [{"id": 9, "name": "dog"}, {"id": 5, "name": "cat"}],
}
VALID_BYTES = json.dumps(VALID).encode()


def _images(root: Path) -> None:
    for name in ("a.png", "b.png"):
        if not (root / name).exists():
            Image.new("RGB", (W, H), (90, 90, 90)).save(root / name)


def check_loads_clean_or_fails_clearly(root: Path, data: bytes):
    """Build the dataset over ``root/ann.json`` and read every item: ``(dataset, items)`` or the error, which
    must be a COCOFormatError naming the file or an ImageReadError naming an image; only BoxFixWarnings."""
    _images(root)
    path = root / "ann.json"
    path.write_bytes(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = COCODataset(root, "ann.json")
        except COCOFormatError as err:
            assert str(path) in str(err), f"error does not name the file: {err}"
            return err
        items = []
        for i in range(len(ds)):
            try:
                items.append(ds[i])
            except (COCOFormatError, ImageReadError) as err:
                assert str(path) in str(err) or ".png" in str(err), err
                items.append(err)
    for w in caught:
        assert issubclass(w.category, BoxFixWarning), f"unexpected {w.category.__name__}: {w.message}"
    for rec in ds.records:
        assert rec.boxes.dtype == np.float32 and rec.boxes.shape == (len(rec.labels), 4)
        assert np.isfinite(rec.boxes).all() and rec.labels.dtype == np.int64
        assert ((rec.labels >= 1) & (rec.labels <= len(ds.class_names))).all()
    return ds, items


@pytest.mark.timeout(60)
@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes(tmp_path: Path, data: bytes) -> None:
    check_loads_clean_or_fails_clearly(tmp_path, data)


@pytest.mark.timeout(60)
@FUZZ
@given(
    cut=st.none() | st.floats(0, 1),
    edits=st.lists(
        st.tuples(
            st.integers(0, len(VALID_BYTES)),
            st.binary(min_size=1, max_size=3)
            | st.sampled_from(
                [b"NaN", b"-Infinity", b"1e400", b"null", b"[]", b"{}", b'"', b"\\u0000", b"\xff"]
            ),
            st.booleans(),
        ),
        max_size=5,
    ),
)
def test_truncated_and_mutated_json(tmp_path: Path, cut: float | None, edits) -> None:
    data = bytearray(VALID_BYTES)
    for where, patch, insert in edits:
        data[where : where + (0 if insert else len(patch))] = patch
    if cut is not None:
        data = data[: int(cut * len(data))]
    check_loads_clean_or_fails_clearly(tmp_path, bytes(data))


def test_valid_seed_is_clean(tmp_path: Path) -> None:
    ds, items = check_loads_clean_or_fails_clearly(tmp_path, VALID_BYTES)
    assert ds.class_names == ("dog", "cat")
    assert [r.labels.tolist() for r in ds.records] == [[2], [1]]
    assert items[1][1]["boxes"].tolist() == [[20.5, 1, 32, 5]] and items[1][1]["difficult"].tolist() == [True]


# ------------------------------------------------------------------------------ generated files + oracle

ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=2),
    max_leaves=4,
)
NUMBER = (
    st.integers(-10, 60) | st.floats(-10, 60) | st.sampled_from([0, 0.0, math.nan, math.inf, -math.inf, 1e30])
)
MISSING = object()


def _obj(**fields) -> dict:
    return {k: v for k, v in fields.items() if v is not MISSING}


GOOD_XY = st.integers(-5, 30) | st.floats(-5, 30)
GOOD_WH = st.integers(0, 20) | st.floats(0, 20)


@st.composite
def gen_file(draw) -> dict:
    """Mostly consistent files (the clean path is exercised as much as the errors); with probability
    ``bad_pct`` percent a field is replaced by any JSON value or left out."""
    bad_pct = draw(st.sampled_from([0, 0, 3, 10, 40]))

    def field(good, bad=ANY_JSON | NUMBER):
        if draw(st.sampled_from(range(100, 0, -1))) <= bad_pct:  # shrinks towards the good value
            return draw(st.one_of(bad, st.just(MISSING)))
        return draw(good)

    cat_ids = draw(st.lists(st.sampled_from([5, 9, 70]), unique=True, min_size=1, max_size=3))
    names = draw(st.permutations(["cat", "dog", 1.0]))
    cats = [_obj(id=field(st.just(c)), name=field(st.just(n))) for c, n in zip(cat_ids, names, strict=False)]
    image_ids = draw(st.lists(st.sampled_from([1, 2, 3, "x"]), unique=True, min_size=1, max_size=3))
    images = []
    for iid in image_ids:
        size = draw(st.sampled_from([(W, H), (W, H), (H, W), (MISSING, MISSING)]))
        images.append(
            _obj(
                id=field(st.just(iid)),
                file_name=field(
                    st.sampled_from(["a.png", "b.png"]), st.sampled_from(["gone.png", "", 3, None])
                ),
                width=field(st.just(size[0]), st.sampled_from([0, 31.5, -1, math.nan, "32", MISSING])),
                height=field(st.just(size[1]), st.sampled_from([0, 23.5, -1, math.inf, None, MISSING])),
            )
        )
    anns = []
    for k in range(draw(st.sampled_from([2, 3, 4, 1, 0]))):
        anns.append(
            _obj(
                id=k + 1,
                image_id=field(st.sampled_from(image_ids) if image_ids else st.just(1)),
                category_id=field(st.sampled_from(cat_ids), st.sampled_from([6, 5.0, "5", None, True])),
                bbox=field(
                    st.tuples(GOOD_XY, GOOD_XY, GOOD_WH, GOOD_WH).map(list),
                    st.lists(NUMBER, max_size=5) | ANY_JSON,
                ),
                iscrowd=field(
                    st.sampled_from([0, 1, True, False, MISSING]), st.sampled_from([2, -1, "1", None])
                ),
            )
        )
    return {"images": images, "annotations": anns, "categories": cats}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def expected(doc: dict):
    """None when the file must be refused, else per image (in order): (id, size, boxes, labels, crowd)."""
    cat_label, names = {}, []
    for cat in doc["categories"]:
        name = cat.get("name")
        ok_name = (isinstance(name, str) and name.strip()) or (_is_num(name) and math.isfinite(name))
        if not _is_int(cat.get("id")) or not ok_name:
            return None
        text = name.strip() if isinstance(name, str) else str(name)
        if cat["id"] in cat_label or text in names:
            return None
        names.append(text)
        cat_label[cat["id"]] = len(names)
    if not names:
        return None
    images = {}
    for img in doc["images"]:
        iid = img.get("id")
        if not (_is_int(iid) or isinstance(iid, str)) or iid in images:
            return None
        images[iid] = img
    per_image = {iid: ([], [], []) for iid in images}
    for ann in doc["annotations"]:
        iid, cid, bbox, crowd = (
            ann.get("image_id"),
            ann.get("category_id"),
            ann.get("bbox"),
            ann.get("iscrowd", 0),
        )
        if isinstance(iid, bool) or not isinstance(iid, (int, str)) or iid not in images:
            return None
        if not _is_int(cid) or cid not in cat_label:
            return None
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_num(v) for v in bbox):
            return None
        x, y, w, h = (float(v) for v in bbox)
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w < 0 or h < 0:
            return None
        if crowd not in (0, 1):
            return None
        per_image[iid][0].append((x, y, x + w, y + h))
        per_image[iid][1].append(cat_label[cid])
        per_image[iid][2].append(bool(crowd))
    out = []
    for iid, img in images.items():
        fname = img.get("file_name")
        if not isinstance(fname, str) or not fname.strip() or fname not in ("a.png", "b.png"):
            return None
        width, height = img.get("width"), img.get("height")
        size = None
        if width is not None or height is not None:
            if not all(
                _is_num(v) and math.isfinite(v) and v > 0 and float(v).is_integer() for v in (width, height)
            ):
                return None
            size = (int(height), int(width))
        boxes = np.asarray(per_image[iid][0], dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(per_image[iid][1], dtype=np.int64)
        crowd = np.asarray(per_image[iid][2], dtype=bool)
        if size is not None:
            boxes[:, 0::2] = boxes[:, 0::2].clip(0, size[1])
            boxes[:, 1::2] = boxes[:, 1::2].clip(0, size[0])
            b32 = boxes.astype(np.float32)
            keep = (b32[:, 2] > b32[:, 0]) & (b32[:, 3] > b32[:, 1])
            boxes, labels, crowd = boxes[keep], labels[keep], crowd[keep]
        out.append((str(iid), size, boxes.astype(np.float32), labels, crowd))
    return out


@pytest.mark.timeout(90)
@settings(FUZZ, max_examples=300)
@given(doc=gen_file())
def test_generated_files_match_the_oracle(tmp_path: Path, doc: dict) -> None:
    outcome = check_loads_clean_or_fails_clearly(tmp_path, json.dumps(doc).encode())
    want = expected(doc)
    if want is None:
        assert isinstance(outcome, COCOFormatError), f"accepted a file the oracle refuses: {doc}"
        return
    assert not isinstance(outcome, Exception), f"refused ({outcome}) a file the oracle accepts: {doc}"
    ds, items = outcome
    assert len(ds.records) == len(want)
    for rec, item, (iid, size, boxes, labels, crowd) in zip(ds.records, items, want, strict=True):
        assert rec.image_id == iid and rec.size == size
        np.testing.assert_array_equal(rec.boxes, boxes)
        np.testing.assert_array_equal(rec.labels, labels)
        np.testing.assert_array_equal(rec.difficult, crowd)
        if size is not None and size != (H, W):
            assert isinstance(item, COCOFormatError) and "width/height say" in str(item)
        else:
            _, target = item
            assert (target["boxes"][:, 2] <= W).all() and (target["boxes"][:, 3] <= H).all()
            assert (target["boxes"][:, 2] > target["boxes"][:, 0]).all()


def test_deeply_nested_json_is_a_clear_error(tmp_path: Path) -> None:
    outcome = check_loads_clean_or_fails_clearly(tmp_path, b"[" * 100_000 + b"]" * 100_000)
    assert isinstance(outcome, COCOFormatError)
