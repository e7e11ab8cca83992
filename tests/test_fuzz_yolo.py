"""Fuzzing the YOLO reader: every label file and data.yaml ends in clean records or a YOLOFormatError naming
the file (and the line).

Random bytes, and generated label lines (field counts, odd numbers, class tokens) checked against a small
independent oracle: which lines make the file invalid, and what the clean records hold after denormalizing by
the image size and clipping to it.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from detector.data.records import BoxFixWarning
from detector.data.yolo import YOLODataset, YOLOFormatError

H, W = 24, 32
CLASSES = ("cat", "dog")
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def write_split(root: Path, label: bytes, yaml_text: str = "names: [cat, dog]\n") -> Path:
    (root / "images" / "train").mkdir(parents=True, exist_ok=True)
    (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
    image = root / "images" / "train" / "a.png"
    if not image.exists():
        Image.new("RGB", (W, H), (90, 90, 90)).save(image)
    (root / "labels" / "train" / "a.txt").write_bytes(label)
    (root / "data.yaml").write_text(yaml_text)
    return root / "labels" / "train" / "a.txt"


def check_loads_clean_or_fails_clearly(root: Path, named: Path):
    """The dataset and its one item, or a YOLOFormatError naming ``named``; only BoxFixWarnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = YOLODataset(root, "train")
            outcome = ds, ds[0]
        except YOLOFormatError as err:
            assert str(named) in str(err), f"error does not name {named}: {err}"
            outcome = err
    for w in caught:
        assert issubclass(w.category, BoxFixWarning), f"unexpected {w.category.__name__}: {w.message}"
    if not isinstance(outcome, Exception):
        rec = outcome[0].records[0]
        assert rec.boxes.dtype == np.float32 and np.isfinite(rec.boxes).all()
        assert (rec.boxes[:, 2] > rec.boxes[:, 0]).all() and (rec.boxes[:, 3] > rec.boxes[:, 1]).all()
        assert (rec.boxes[:, 0::2] >= 0).all() and (rec.boxes[:, 0::2] <= W).all()
    return outcome


@pytest.mark.timeout(60)
@FUZZ
@given(data=st.binary(max_size=200))
def test_random_bytes_as_a_label_file(tmp_path: Path, data: bytes) -> None:
    label = write_split(tmp_path, data)
    check_loads_clean_or_fails_clearly(tmp_path, label)


@pytest.mark.timeout(60)
@FUZZ
@given(text=st.text(max_size=80))
def test_random_text_as_data_yaml(tmp_path: Path, text: str) -> None:
    """Names, or an error naming data.yaml (or, when it names no classes, the root and data.classes)."""
    write_split(tmp_path, b"0 0.5 0.5 0.2 0.2\n", yaml_text=text)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            ds = YOLODataset(tmp_path, "train")
        except YOLOFormatError as err:
            named = str(tmp_path / "data.yaml") in str(err)
            assert named or (
                f"{tmp_path}: no data.yaml with names:" in str(err) and "data.classes" in str(err)
            )
            return
    assert len(ds.class_names) >= 1 and ds.records[0].labels.tolist() == [1]


# ------------------------------------------------------------------------------ generated lines + oracle

GOOD = st.floats(-0.2, 1.2, allow_nan=False).map(lambda v: f"{v:.4f}") | st.sampled_from(
    ["0", "1", "0.5", ".25"]
)
ODD = st.sampled_from(["nan", "-inf", "inf", "1e400", "-0.3", "abc", "0x1", "1,5", "", "\u0663", "5e-324"])
CLASS = st.sampled_from(["0", "1", "0", "1", "2", "-1", "1.0", "0.5", "cat", "1e400", "nan"])


@st.composite
def gen_line(draw) -> str:
    if draw(st.integers(0, 3)):
        return " ".join([draw(st.sampled_from(["0", "1"])), *(draw(GOOD) for _ in range(4))])
    n = draw(st.sampled_from([0, 3, 4, 4, 5, 6, 7, 8]))
    sep = draw(st.sampled_from([" ", "\t", "  "]))
    return sep.join([draw(CLASS), *(draw(GOOD | ODD) for _ in range(n))])


def _num(token: str) -> float | None:
    try:
        value = float(token)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def expected(lines: list[str]):
    """None when the file must be refused, else (boxes float64 [G, 4] in pixels, clipped, kept; labels)."""
    boxes, labels = [], []
    for line in lines:
        tokens = line.split()
        if not tokens:
            continue
        n = len(tokens) - 1
        if n != 4 and (n < 6 or n % 2):
            return None
        cls = _num(tokens[0])
        if cls is None or not cls.is_integer() or not 0 <= cls < len(CLASSES):
            return None
        values = [_num(t) for t in tokens[1:]]
        if any(v is None for v in values):
            return None
        if n == 4:
            cx, cy, w, h = values
            if w < 0 or h < 0:
                return None
            x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        else:
            x1, x2, y1, y2 = min(values[0::2]), max(values[0::2]), min(values[1::2]), max(values[1::2])
        box = np.clip([x1 * W, y1 * H, x2 * W, y2 * H], 0, [W, H, W, H])
        b32 = box.astype(np.float32)
        if b32[2] > b32[0] and b32[3] > b32[1]:
            boxes.append(box)
            labels.append(int(cls) + 1)
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(labels, dtype=np.int64)


@pytest.mark.timeout(90)
@settings(FUZZ, max_examples=300)
@given(lines=st.lists(gen_line() | st.sampled_from(["", "   "]), max_size=5), crlf=st.booleans())
def test_generated_lines_match_the_oracle(tmp_path: Path, lines: list[str], crlf: bool) -> None:
    text = ("\r\n" if crlf else "\n").join(lines)
    label = write_split(tmp_path, text.encode("utf-8"))
    outcome = check_loads_clean_or_fails_clearly(tmp_path, label)
    want = expected(lines)
    if want is None:
        assert isinstance(outcome, YOLOFormatError), f"accepted lines the oracle refuses: {lines}"
        assert "line " in str(outcome)
        return
    assert not isinstance(outcome, Exception), f"refused ({outcome}) lines the oracle accepts: {lines}"
    ds, (_, target) = outcome
    rec = ds.records[0]
    np.testing.assert_allclose(rec.boxes, want[0], atol=1e-4)
    np.testing.assert_array_equal(rec.labels, want[1])
    assert target["boxes"].shape == (len(want[1]), 4)
