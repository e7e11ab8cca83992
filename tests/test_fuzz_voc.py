"""Fuzzing the VOC reader: every annotation ends in a clean record or a clear error naming the file.

Three layers: random and mutated bytes (the parser must not leak another exception type or hang), generated
annotations checked against a small independent oracle (which fields make a file invalid, and what a clean
record then holds, after clipping to the image), and targeted faults: entity bombs, external entities,
encodings, unusable names, files that change after the dataset was built, and errors raised in a DataLoader
worker, which must still name the file when they reach the main process.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import struct
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import DataLoader

from detector.data.images import ImageReadError
from detector.data.voc import (
    VOCBoxWarning,
    VOCDataset,
    VOCFileNotFoundError,
    VOCFormatError,
    concat_voc,
    parse_voc_xml,
)

CLASSES = ("cat", "dog")
H, W = 24, 32  # size of the one image the generated annotations describe
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

VALID_XML = (
    b'<?xml version="1.0"?><annotation><folder>VOC</folder><filename>pic.jpg</filename>'
    b"<size><width>32</width><height>24</height><depth>3</depth></size>"
    b"<object><name>cat</name><difficult>0</difficult><bndbox><xmin>3</xmin><ymin>4</ymin>"
    b"<xmax>20</xmax><ymax>18</ymax></bndbox></object>"
    b"<object><name>dog</name><truncated>1</truncated><bndbox><xmin>10</xmin><ymin>2</ymin>"
    b"<xmax>30</xmax><ymax>24</ymax></bndbox></object></annotation>"
)


# ---------------------------------------------------------------------------------------------------- helpers


def check_parses_clean_or_fails_clearly(path: Path):
    """``parse_voc_xml(path)``: a well-formed annotation, or None after a VOCFormatError naming the file."""
    try:
        ann = parse_voc_xml(path)
    except VOCFormatError as err:
        assert str(path) in str(err), f"error does not name the file: {err}"
        return None
    n = len(ann.names)
    assert ann.boxes.dtype == np.float64 and ann.boxes.shape == (n, 4) and np.isfinite(ann.boxes).all()
    assert ann.difficult.dtype == bool and ann.difficult.shape == (n,)
    assert all(isinstance(name, str) and name and name == name.strip() for name in ann.names)
    if ann.size is not None:
        assert all(isinstance(v, int) and v > 0 for v in ann.size)
    return ann


def write_voc(
    root: Path, xml: bytes, *, image_size: tuple[int, int] = (H, W), image_name: str = "pic.jpg"
) -> Path:
    """A one-image VOC folder: id ``ann``, annotation ``xml``; the image is ``JPEGImages/{image_name}``, so
    it is found through the annotation's ``<filename>`` (``ann.jpg`` would be found by id)."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "Annotations" / "ann.xml").write_bytes(xml)
    image = root / "JPEGImages" / image_name
    if not image.exists():
        Image.new("RGB", (image_size[1], image_size[0]), (90, 90, 90)).save(image)
    (root / "ImageSets" / "Main" / "train.txt").write_text("ann\n")
    return root


def check_loads_clean_or_fails_clearly(root: Path, files: tuple[Path, ...]):
    """Build the dataset and read every item. Returns ``(dataset, items)`` when clean, else the error, which
    must be a VOCFormatError / ImageReadError naming one of ``files``. No other warning than a VOCBoxWarning
    naming the folder may appear (a numpy RuntimeWarning, say, would mean an overflow went unhandled)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = VOCDataset(root, "train", classes=CLASSES)
            items = [ds[i] for i in range(len(ds))]
            outcome = (ds, items)
        except (VOCFormatError, ImageReadError) as err:
            assert any(str(f) in str(err) for f in files), f"error names none of {files}: {err}"
            outcome = err
    for w in caught:
        assert issubclass(w.category, VOCBoxWarning), f"unexpected {w.category.__name__}: {w.message}"
        assert str(root) in str(w.message)
    if isinstance(outcome, tuple):
        for rec, (image, target) in zip(ds.records, items, strict=True):
            height, width = image.shape[1:]
            boxes = target["boxes"]
            assert boxes.dtype == torch.float32 and boxes.shape == (len(target["labels"]), 4)
            assert torch.isfinite(boxes).all()
            assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
            assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
            assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
            assert target["labels"].dtype == torch.int64
            assert ((target["labels"] >= 1) & (target["labels"] <= len(CLASSES))).all()
            assert target["difficult"].dtype == torch.bool and target["orig_size"] == (height, width)
            assert np.isfinite(rec.boxes).all()
    return outcome


# ----------------------------------------------------------------------------- generated annotations + oracle

XML_CHAR = st.characters(blacklist_categories=("Cs", "Cc", "Cn"), blacklist_characters="\ufeff")
FREE_TEXT = st.text(XML_CHAR | st.sampled_from("\t\n "), max_size=8)
ODD_NUMBERS = st.sampled_from(
    ["1e30", "-1e30", "1e39", "-1e39", "1e400", "-1e400", "-0", "", " ", "\n\t", "nan", "NaN", "-inf",
     "Infinity", "12px", "0x10", "1,5", "1_0", "\u0663", "\u00bd", " 7 "]
)  # fmt: skip
GOOD_NUMBER = st.integers(-40, 80).map(str) | st.floats(-1e3, 1e3).map(repr)
ANY_NUMBER = GOOD_NUMBER | st.floats().map(repr) | ODD_NUMBERS | FREE_TEXT


@dataclass
class GenObject:
    name: str | None  # None: no <name> tag
    difficult: str | None
    coords: tuple[str | None, str | None, str | None, str | None] | None  # None: no <bndbox>


@st.composite
def gen_objects(draw) -> GenObject:
    if draw(st.integers(0, 3)):  # mostly well-formed, so the clean path is exercised as much as the errors
        name = draw(st.sampled_from(CLASSES + (" dog\n",)))
        return GenObject(
            name, draw(st.sampled_from([None, "0", "1", ""])), tuple(draw(GOOD_NUMBER) for _ in "1234")
        )
    name = draw(st.none() | st.sampled_from(CLASSES + ("bird", "", "  ")) | FREE_TEXT)
    difficult = draw(st.none() | ANY_NUMBER)
    coords = draw(st.none() | st.tuples(*[st.none() | ANY_NUMBER] * 4))
    return GenObject(name, difficult, coords)


SIZE_TEXT = (
    st.none()
    | st.sampled_from([str(W), str(H), "0", "-5", "12.5", "100", "1e30", "1e400", "", " "])
    | ANY_NUMBER
)


@st.composite
def gen_annotations(draw) -> dict:
    kind = draw(st.sampled_from(["match", "match", "absent", "swapped", "fuzz"]))
    size = {"match": (str(W), str(H)), "absent": None, "swapped": (str(H), str(W))}.get(kind)
    if kind == "fuzz":
        size = (draw(SIZE_TEXT), draw(SIZE_TEXT))
    return {
        "filename": draw(
            st.sampled_from(["pic.jpg", " pic.jpg\n"])
            | st.none()
            | FREE_TEXT
            | st.sampled_from(["../JPEGImages/pic.jpg", "sub/pic.jpg", "x" * 300 + ".jpg", ".."])
        ),
        "size": size,
        "objects": draw(st.lists(gen_objects(), max_size=4)),
        "encoding": draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "iso-8859-1"])),
    }


def _tag(tag: str, text: str | None) -> str:
    return "" if text is None else f"<{tag}>{escape(text)}</{tag}>"


def render(ann: dict) -> bytes:
    parts = ["<annotation>", _tag("filename", ann["filename"])]
    if ann["size"] is not None:
        parts.append(
            f"<size>{_tag('width', ann['size'][0])}{_tag('height', ann['size'][1])}<depth>3</depth></size>"
        )
    for obj in ann["objects"]:
        box = ""
        if obj.coords is not None:
            box = (
                "<bndbox>"
                + "".join(
                    _tag(t, c) for t, c in zip(("xmin", "ymin", "xmax", "ymax"), obj.coords, strict=True)
                )
                + "</bndbox>"
            )
        parts.append(
            f"<object>{_tag('name', obj.name)}<pose>Left</pose>"
            f"{_tag('difficult', obj.difficult)}{box}</object>"
        )
    parts.append("</annotation>")
    text = "".join(parts)
    encoding = ann["encoding"]
    declaration = f'<?xml version="1.0" encoding="{encoding.removesuffix("-sig")}"?>\n'
    return (declaration + text).encode(encoding, errors="xmlcharrefreplace")


def _number(text: str | None) -> float | None | bool:
    """Oracle for one numeric field: None when missing or blank, False when not a finite number."""
    if text is None or not text.strip():
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return False
    return value if math.isfinite(value) else False


def expected_annotation(ann: dict):
    """What a correct reader makes of ``ann``: None when the file must be rejected, else
    ``(names, boxes float64 [G, 4] 0-based, difficult, size or None)``."""
    size = None
    if ann["size"] is not None and all(_number(t) is not None for t in ann["size"]):
        width, height = (_number(t) for t in ann["size"])
        if width is False or height is False:
            return None
        if width > 0 and height > 0:
            if not (width.is_integer() and height.is_integer()):
                return None
            size = (int(height), int(width))
    names, boxes, difficult = [], [], []
    for obj in ann["objects"]:
        if obj.name is None or not obj.name.strip() or obj.coords is None:
            return None
        coords = [_number(c) for c in obj.coords]
        diff = _number(obj.difficult)
        if any(c is None or c is False for c in coords) or diff is False:
            return None
        x1, y1, x2, y2 = coords
        if x2 < x1 - 1 or y2 < y1 - 1:  # swapped corners (x2 == x1 - 1 is empty: dropped)
            return None
        names.append(obj.name.strip())
        boxes.append((x1 - 1, y1 - 1, x2, y2))
        difficult.append(diff is not None and diff != 0)
    return names, np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(difficult, dtype=bool), size


@pytest.mark.timeout(60)
@settings(FUZZ, max_examples=300)
@given(ann=gen_annotations())
def test_generated_annotations_match_the_oracle(tmp_path: Path, ann: dict) -> None:
    """Parse, then load through the dataset: a clean record holds exactly the oracle's boxes clipped to the
    image; every rejection is a clear error naming the annotation (or image) file."""
    root = write_voc(tmp_path / "voc", render(ann))
    xml_path = root / "Annotations" / "ann.xml"
    image_path = root / "JPEGImages" / "pic.jpg"
    expected = expected_annotation(ann)
    parsed = check_parses_clean_or_fails_clearly(xml_path)
    assert (parsed is not None) == (expected is not None), f"oracle says {expected}, reader says {parsed}"
    outcome = check_loads_clean_or_fails_clearly(root, (xml_path, image_path))
    if expected is None:
        assert isinstance(outcome, VOCFormatError)
        return
    names, boxes, difficult, size = expected
    assert parsed.names == tuple(names) and parsed.size == size
    np.testing.assert_array_equal(parsed.boxes, boxes)
    np.testing.assert_array_equal(parsed.difficult, difficult)

    found = ann["filename"] is not None and ann["filename"].strip() == "pic.jpg"
    if not found:
        assert isinstance(outcome, VOCFileNotFoundError) and "looked for" in str(outcome)
    elif any(n not in CLASSES for n in names):
        assert isinstance(outcome, VOCFormatError) and "unknown class" in str(outcome)
    elif size is not None and size != (H, W):
        assert isinstance(outcome, VOCFormatError) and str(image_path) in str(outcome)
        assert ("sizes swapped" in str(outcome)) == (size == (W, H))
    else:
        assert isinstance(outcome, tuple), outcome
        _, [(_, target)] = outcome
        clipped = np.stack([boxes[:, 0].clip(0, W), boxes[:, 1].clip(0, H),
                            boxes[:, 2].clip(0, W), boxes[:, 3].clip(0, H)], axis=1)  # fmt: skip
        stored = clipped.astype(np.float32)  # a box is degenerate if it is so as stored (1e-30 px wide is 0)
        keep = (stored[:, 2] > stored[:, 0]) & (stored[:, 3] > stored[:, 1])
        np.testing.assert_allclose(target["boxes"].numpy(), clipped[keep], rtol=1e-6)
        assert target["labels"].tolist() == [
            CLASSES.index(n) + 1 for n, k in zip(names, keep, strict=True) if k
        ]
        assert target["difficult"].tolist() == difficult[keep].tolist()


# ----------------------------------------------------------------------------------------- raw-byte fuzzing


@pytest.mark.timeout(60)
@FUZZ
@given(data=st.binary(max_size=400))
def test_random_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "random.xml"
    path.write_bytes(data)
    check_parses_clean_or_fails_clearly(path)


SNIPPETS = [b"<!DOCTYPE a>", b"&amp;", b"&lol;", b"&#0;", b"&#xD800;", b"<![CDATA[<x>]]>", b"\xef\xbb\xbf",
            b"\xff\xfe", b"\xc3\x28", b"<!-- -->", b"<?pi x?>", b"</annotation>", b"<object>",
            b"\x00"]  # fmt: skip


@pytest.mark.timeout(60)
@FUZZ
@given(
    cut=st.none() | st.floats(0, 1),
    edits=st.lists(
        st.tuples(
            st.integers(0, len(VALID_XML)),
            st.binary(min_size=1, max_size=3) | st.sampled_from(SNIPPETS),
            st.booleans(),
        ),
        max_size=5,
    ),
)
def test_truncated_and_mutated_xml(
    tmp_path: Path, cut: float | None, edits: list[tuple[int, bytes, bool]]
) -> None:
    """Overwrite or insert bytes in a valid annotation, cut it anywhere: via the dataset, clean or clear."""
    data = bytearray(VALID_XML)
    for where, patch, insert in edits:
        data[where : where + (0 if insert else len(patch))] = patch
    if cut is not None:
        data = data[: int(cut * len(data))]
    root = write_voc(tmp_path / "voc", bytes(data))
    check_loads_clean_or_fails_clearly(
        root, (root / "Annotations" / "ann.xml", root / "JPEGImages" / "pic.jpg")
    )


def test_valid_seed_is_clean(tmp_path: Path) -> None:
    """The mutation seed itself loads, so the property above starts from a valid file."""
    root = write_voc(tmp_path / "voc", VALID_XML)
    ds, [(image, target)] = check_loads_clean_or_fails_clearly(root, ())
    assert target["boxes"].tolist() == [[2, 3, 20, 18], [9, 1, 30, 24]] and target["labels"].tolist() == [
        1,
        2,
    ]


# ----------------------------------------------------------------------------------------- hostile XML


BILLION_LAUGHS = (
    b'<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
    + b"".join(
        b' <!ENTITY lol%d "%s">\n'
        % (i, b"".join(b"&lol%s;" % (str(i - 1).encode() if i > 1 else b"") for _ in range(10)))
        for i in range(1, 10)
    )
    + b"]>\n<annotation><filename>&lol9;</filename></annotation>\n"
)  # 10**9 "lol"s (3 GB) if expanded

HOSTILE = {
    "billion_laughs": BILLION_LAUGHS,
    "quadratic_blowup": b'<!DOCTYPE a [<!ENTITY x "'
    + b"x" * 50_000
    + b'">]><annotation><folder>'
    + b"&x;" * 50_000
    + b"</folder></annotation>",
    "external_file": b'<!DOCTYPE a [<!ENTITY e SYSTEM "file:///etc/passwd">]><annotation><folder>&e;</folder>'
    b"</annotation>",
    "external_url": b'<!DOCTYPE a [<!ENTITY e SYSTEM "http://192.0.2.1/x.xml">]><annotation><folder>&e;'
    b"</folder></annotation>",
    "external_dtd": b'<!DOCTYPE annotation SYSTEM "http://192.0.2.1/voc.dtd"><annotation/>',
    "parameter_entity": b'<!DOCTYPE a [<!ENTITY % p SYSTEM "http://192.0.2.1/p.dtd"> %p;]><annotation/>',
    "internal_dtd_only": b"<!DOCTYPE annotation [<!ELEMENT annotation ANY>]><annotation/>",
}


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_entities_and_dtds_are_refused_unexpanded(tmp_path: Path, kind: str) -> None:
    """Refused before any expansion or fetch (192.0.2.1 is a reserved address: a fetch would hang)."""
    path = tmp_path / f"{kind}.xml"
    path.write_bytes(HOSTILE[kind])
    start = time.perf_counter()
    with pytest.raises(VOCFormatError, match=rf"{kind}\.xml: forbidden XML construct \(DTD, entity"):
        parse_voc_xml(path)
    assert time.perf_counter() - start < 5  # generous; expansion would take minutes or exhaust memory


def test_undeclared_entity_is_malformed(tmp_path: Path) -> None:
    path = tmp_path / "undeclared.xml"
    path.write_bytes(b"<annotation><folder>&lol;</folder></annotation>")
    with pytest.raises(VOCFormatError, match=r"undeclared\.xml: malformed XML \(undefined entity"):
        parse_voc_xml(path)


_TAIL = "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>"


@pytest.mark.parametrize(
    ("data", "name", "error"),
    [
        (
            ("<annotation><object><name>caf\u00e9</name>" + _TAIL).encode(),
            "café",
            None,
        ),  # UTF-8, no declaration
        (
            b'<?xml version="1.0" encoding="ISO-8859-1"?><annotation><object><name>caf\xe9</name>'
            + _TAIL.encode(),
            "café",
            None,
        ),
        (
            (
                '<?xml version="1.0" encoding="UTF-16"?><annotation><object><name>caf\u00e9</name>' + _TAIL
            ).encode("utf-16"),
            "café",
            None,
        ),
        (b"\xef\xbb\xbf<annotation><object><name>cat</name>" + _TAIL.encode(), "cat", None),  # UTF-8 BOM
        (b"<annotation><object><name>caf\xe9</name>" + _TAIL.encode(), None, "not well-formed"),  # Latin-1
        (b"<annotation><object><name>\xc3\x28</name>" + _TAIL.encode(), None, "not well-formed"),  # bad UTF-8
        (
            b'<?xml version="1.0" encoding="UTF-8"?><annotation><object><name>caf\xe9</name>'
            + _TAIL.encode(),
            None,
            "not well-formed",
        ),
        (
            b'<?xml version="1.0" encoding="klingon"?><annotation><object><name>cat</name>' + _TAIL.encode(),
            None,
            "unknown encoding: klingon",
        ),
    ],
)
def test_encodings_and_non_utf8_bytes(
    tmp_path: Path, data: bytes, name: str | None, error: str | None
) -> None:
    path = tmp_path / "enc.xml"
    path.write_bytes(data)
    if error is None:
        assert parse_voc_xml(path).names == (name,)
    else:
        with pytest.raises(VOCFormatError, match=rf"enc\.xml: malformed XML \({error}"):
            parse_voc_xml(path)


@pytest.mark.timeout(10)
def test_deeply_nested_and_large_documents(tmp_path: Path) -> None:
    """100k nested elements and 20k objects parse in bounded time, without recursion errors."""
    path = tmp_path / "deep.xml"
    path.write_bytes(b"<annotation>" + b"<a>" * 100_000 + b"</a>" * 100_000 + b"</annotation>")
    assert parse_voc_xml(path).names == ()
    obj = b"<object><name>cat</name>" + _TAIL.encode().removesuffix(b"</annotation>")
    path.write_bytes(b"<annotation>" + obj * 20_000 + b"</annotation>")
    assert parse_voc_xml(path).boxes.shape == (20_000, 4)


# ----------------------------------------------------------------------------------------- numbers and fields


SIZE_XML = f"<size><width>{W}</width><height>{H}</height></size>"


def _box_xml(box: tuple[str, str, str, str], size: str | None = SIZE_XML) -> bytes:
    coords = "".join(f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True))
    obj = f"<object><name>cat</name><bndbox>{coords}</bndbox></object>"
    return f"<annotation><filename>pic.jpg</filename>{size or ''}{obj}</annotation>".encode()


@pytest.mark.parametrize("with_size", [True, False], ids=["size", "no_size"])
@pytest.mark.parametrize(
    ("box", "expected"),
    [
        (("-1e30", "-1e30", "1e30", "1e30"), [0, 0, W, H]),  # huge: clipped to the image
        (("-1e39", "1", "1e39", "1e300"), [0, 0, W, H]),  # beyond float32: still clipped, no overflow warning
        (("-5", "-7", "10", "12"), [0, 0, 10, 12]),  # negative: clipped
        (("50", "40", "60", "70"), None),  # wholly outside the image: dropped
        (("11", "1", "10", "5"), None),  # xmin - 1 == xmax: zero width, dropped
    ],
)
def test_out_of_range_boxes_are_clipped_or_dropped_with_a_warning(
    tmp_path: Path, with_size: bool, box: tuple[str, ...], expected: list[float] | None
) -> None:
    root = write_voc(tmp_path / "voc", _box_xml(box, size=SIZE_XML if with_size else None))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = VOCDataset(root, "train", classes=CLASSES)
        _, target = ds[0]
    assert [w.category for w in caught] == [VOCBoxWarning], [str(w.message) for w in caught]
    assert str(root / "Annotations" / "ann.xml") in str(caught[0].message)
    assert ("dropped 1 degenerate" in str(caught[0].message)) == (expected is None)
    assert target["boxes"].tolist() == ([] if expected is None else [expected])


@pytest.mark.parametrize(
    ("box", "message"),
    [
        (("20", "5", "10", "12"), r"swapped corners: <xmax> 10 is before <xmin> 20"),
        (("5", "20", "10", "12"), r"swapped corners: <ymax> 12 is before <ymin> 20"),
        (("5", "5", "3.5", "12"), r"swapped corners: <xmax> 3.5 is before <xmin> 5"),
    ],
)
def test_swapped_corners_are_an_error(tmp_path: Path, box: tuple[str, ...], message: str) -> None:
    root = write_voc(tmp_path / "voc", _box_xml(box))
    with pytest.raises(VOCFormatError, match=rf"ann\.xml: object #0 \('cat'\) has {message}"):
        VOCDataset(root, "train", classes=CLASSES)


@pytest.mark.parametrize(
    ("fragment", "message"),
    [
        ("<object><name> </name><bndbox/></object>", r"object #0 has no <name>"),
        ("<object><name>cat</name><bndbox><xmin>\n</xmin></bndbox></object>", r"<xmin> is missing"),
        (
            "<object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax></bndbox></object>",
            r"<ymax> is missing",
        ),
        (
            "<object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>-inf</xmax><ymax>5</ymax></bndbox>"
            "</object>",
            r"<xmax> is not finite: '-inf'",
        ),
        (
            "<object><name>cat</name><bndbox><xmin>1</xmin><ymin>1e999</ymin><xmax>5</xmax><ymax>5</ymax></bndbox>"
            "</object>",
            r"<ymin> is not finite: '1e999'",
        ),
        (
            "<object><name>cat</name><bndbox><xmin>1</xmin><ymin>NaN</ymin><xmax>5</xmax><ymax>5</ymax></bndbox>"
            "</object>",
            r"<ymin> is not finite: 'NaN'",
        ),
        (
            "<object><name>cat</name><bndbox><xmin>1 2</xmin></bndbox></object>",
            r"<xmin> is not a number: '1 2'",
        ),
        ("<size><width>1e400</width><height>24</height></size>", r"<size><width> is not finite"),
        ("<size><width>32</width><height>nan</height></size>", r"<size><height> is not finite"),
    ],
)
def test_bad_fields_name_the_file_and_field(tmp_path: Path, fragment: str, message: str) -> None:
    path = tmp_path / "fields.xml"
    path.write_text(f"<annotation>{fragment}</annotation>")
    with pytest.raises(VOCFormatError, match=rf"fields\.xml: .*{message}"):
        parse_voc_xml(path)


@pytest.mark.parametrize(
    "size",
    [
        "<size/>",
        "<size><width> </width><height>24</height></size>",
        "<size><width>0</width><height>0</height></size>",
        "<size><width>-32</width><height>24</height></size>",
    ],
)
def test_empty_zero_or_negative_size_means_unknown(tmp_path: Path, size: str) -> None:
    path = tmp_path / "s.xml"
    path.write_text(f"<annotation>{size}</annotation>")
    assert parse_voc_xml(path).size is None


def test_huge_declared_size_is_a_mismatch_not_a_crash(tmp_path: Path) -> None:
    root = write_voc(
        tmp_path / "voc",
        _box_xml(("1", "1", "5", "5"), size="<size><width>1e30</width><height>1e30</height></size>"),
    )
    ds = VOCDataset(root, "train", classes=CLASSES)
    with pytest.raises(
        VOCFormatError, match=r"ann\.xml: <size> says 1000000000000000019884624838656x.* but image "
    ):
        ds[0]


# ----------------------------------------------------------------------------------------- names and files


def test_split_file_with_bom_and_crlf(tmp_path: Path) -> None:
    root = write_voc(tmp_path / "voc", VALID_XML)
    (root / "ImageSets" / "Main" / "train.txt").write_bytes(
        b"\xef\xbb\xbfann\r\n\r\n"
    )  # as Windows Notepad saves
    assert [r.image_id for r in VOCDataset(root, "train", classes=CLASSES).records] == ["ann"]


def test_split_file_not_utf8(tmp_path: Path) -> None:
    root = write_voc(tmp_path / "voc", VALID_XML)
    (root / "ImageSets" / "Main" / "train.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(VOCFormatError, match=r"train\.txt: split file is not UTF-8 text"):
        VOCDataset(root, "train", classes=CLASSES)


@pytest.mark.parametrize("image_id", ["x" * 300, "nul\x00id", "../../../etc/passwd", "caf\u00e9 \u732b"])
def test_unusable_or_absent_ids_are_not_found_errors(tmp_path: Path, image_id: str) -> None:
    root = write_voc(tmp_path / "voc", VALID_XML)
    (root / "ImageSets" / "Main" / "train.txt").write_text(image_id + "\n", encoding="utf-8")
    with pytest.raises(
        VOCFileNotFoundError, match=r"annotation for id .* \(listed in .*train\.txt\) not found"
    ):
        VOCDataset(root, "train", classes=CLASSES)


def test_non_ascii_ids_and_stray_non_utf8_file_names(tmp_path: Path) -> None:
    """A UTF-8 id works end to end; a file whose name is not UTF-8 sitting in the folders disturbs nothing."""
    root = write_voc(
        tmp_path / "voc",
        VALID_XML.replace(b"pic.jpg", "katze_\u732b.jpg".encode()),
        image_name="katze_\u732b.jpg",
    )
    shutil.move(root / "Annotations" / "ann.xml", root / "Annotations" / "katze_\u732b.xml")
    (root / "ImageSets" / "Main" / "train.txt").write_text("katze_\u732b\n", encoding="utf-8")
    for sub in ("Annotations", "JPEGImages"):
        with open(os.fsencode(root / sub) + b"/stray_\xff.xml", "wb") as fh:
            fh.write(b"\xff")
    ds = VOCDataset(root, "train", classes=CLASSES)
    assert ds.records[0].image_id == "katze_\u732b" and tuple(ds[0][0].shape) == (3, H, W)


@pytest.mark.parametrize("where", ["Annotations/ann.xml", "JPEGImages/pic.jpg"])
def test_directory_where_a_file_should_be(tmp_path: Path, where: str) -> None:
    root = write_voc(tmp_path / "voc", VALID_XML)
    target = root / where
    target.unlink()
    target.mkdir()
    match = (
        r"annotation for id 'ann' .* not found"
        if where.endswith("xml")
        else r"image for id 'ann' .* looked for"
    )
    with pytest.raises(VOCFileNotFoundError, match=match):
        VOCDataset(root, "train", classes=CLASSES)


def test_parse_a_directory_or_unusable_path(tmp_path: Path) -> None:
    with pytest.raises(VOCFormatError, match=r"cannot read annotation file \(.*Is a directory"):
        parse_voc_xml(tmp_path)
    with pytest.raises(VOCFormatError, match=r"cannot read annotation file \(.*too long"):
        parse_voc_xml(tmp_path / ("x" * 300 + ".xml"))
    with pytest.raises(VOCFormatError, match=r"cannot read annotation file \(embedded null byte"):
        parse_voc_xml(tmp_path / "nul\x00.xml")


def test_concat_names_the_bad_folder(tiny_voc) -> None:
    good, bad = tiny_voc(n_images=2), tiny_voc(n_images=2, seed=1)
    xml = bad / "Annotations" / "train_0001.xml"
    xml.write_bytes(xml.read_bytes()[:100])
    with pytest.raises(VOCFormatError, match=rf"{xml}: malformed XML"):
        concat_voc([good, bad], "train", classes=("cat", "dog"))


# ----------------------------------------------------------------------------------------- faults in workers


def _collate_list(batch: list) -> list:
    return batch


def _first_error(loader: DataLoader) -> Exception | None:
    """Iterate ``loader``; return the first error without its traceback, so the iterator (which the traceback
    would keep alive) shuts its worker down here, not in a later test's forked worker."""
    iterator = iter(loader)
    try:
        for _ in iterator:
            pass
    except Exception as err:
        return err.with_traceback(None)
    finally:
        del iterator
    return None


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _replace_with_dir(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _bomb(path: Path) -> None:
    """A 30000 x 30000 PNG (2.7 GB of pixels) of 2.7 KB: one row of zeros, deflated, then the end."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    idat = zlib.compress(bytes(1 + 30000 * 3), 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _resize(path: Path) -> None:
    Image.new("RGB", (50, 40)).save(path, format="JPEG")


IMAGE_FAULTS: dict[str, tuple[Callable[[Path], None], type[Exception], str]] = {
    "truncated_jpeg": (_truncate, ImageReadError, "truncated or corrupt image data"),
    "zero_bytes": (lambda p: p.write_bytes(b""), ImageReadError, r"image file is empty \(0 bytes\)"),
    "deleted": (Path.unlink, ImageReadError, "image file not found"),
    "directory": (_replace_with_dir, ImageReadError, "is a directory"),
    "png_bomb_header": (_bomb, ImageReadError, "image too large to decode safely"),
    "size_disagrees_with_xml": (
        _resize,
        VOCFormatError,
        r"<size> says 192x160 \(width x height\) but image .*",
    ),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("fault", sorted(IMAGE_FAULTS))
def test_worker_errors_reach_the_main_process_naming_the_file(tiny_voc, fault: str) -> None:
    """An image broken after the dataset was built fails in the DataLoader worker; the main process gets the
    same exception type, and its message names the image file (and, for a size mismatch, the annotation)."""
    root = tiny_voc(n_images=3)
    ds = VOCDataset(root, "train", classes=("cat", "dog"))
    image_path = ds.records[1].image_path
    damage, error, message = IMAGE_FAULTS[fault]
    damage(image_path)
    err = _first_error(DataLoader(ds, batch_size=1, num_workers=1, collate_fn=_collate_list))
    assert type(err) is error, repr(err)
    text = str(err)
    assert re.search(message, text), text
    assert "DataLoader worker process 0" in text and str(image_path) in text
    if error is VOCFormatError:
        assert str(ds.records[1].annotation_path) in text


@pytest.mark.timeout(30)
def test_clipped_boxes_travel_through_a_worker(tiny_voc) -> None:
    """Boxes clipped or dropped at construction travel through a worker unchanged (no late surprises)."""
    root = tiny_voc(n_images=2, image_size=(40, 48))
    xml = root / "Annotations" / "train_0000.xml"
    text = xml.read_text()
    start = text.index("<bndbox>")
    end = text.index("</bndbox>")
    xml.write_text(
        text[:start] + "<bndbox><xmin>-1e30</xmin><ymin>5</ymin><xmax>1e30</xmax><ymax>9</ymax>" + text[end:]
    )
    with pytest.warns(VOCBoxWarning, match="clipped 1 box"):
        ds = VOCDataset(root, "train", classes=("cat", "dog"))
    batches = list(DataLoader(ds, batch_size=1, num_workers=1, collate_fn=_collate_list))
    assert batches[0][0][1]["boxes"][0].tolist() == [0, 4, 48, 9]
