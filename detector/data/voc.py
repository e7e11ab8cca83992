"""Pascal VOC reader: one year folder + an ImageSets split -> cached records and (image, target) items.

All annotation files of a split are parsed once, at construction, so bad files fail before training starts and
``__getitem__`` only decodes the image. Coordinates become 0-based continuous pixels: VOC's 1-based inclusive
``xmin, ymin, xmax, ymax`` is ``xmin - 1, ymin - 1, xmax, ymax``. :func:`write_voc_annotation` is the inverse.
"""

from __future__ import annotations

import math
import os
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import defusedxml
import defusedxml.ElementTree as DET
import numpy as np

from detector.atomic import atomic_open
from detector.data.records import (
    BoxFixReport,
    BoxFixWarning,
    DataFormatError,
    DataNotFoundError,
    Record,
    RecordConcatDataset,
    RecordDataset,
    Transforms,
    check_classes,
    clip_boxes,
    clip_record_boxes,
    to_float32_boxes,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "VOC_CLASSES",
    "VOCAnnotation",
    "VOCBoxWarning",
    "VOCConcatDataset",
    "VOCDataset",
    "VOCFileNotFoundError",
    "VOCFormatError",
    "VOCObject",
    "VOCRecord",
    "Transforms",
    "atomic_write_bytes",
    "clip_boxes",
    "concat_voc",
    "parse_voc_xml",
    "write_voc_annotation",
]

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
    "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike",
    "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

# Looked up in this order for JPEGImages/{id}{ext}; then the XML's <filename> as a last resort.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")

class VOCFormatError(DataFormatError):
    """A VOC folder, split file or annotation is malformed; the message names the file and the problem."""


class VOCFileNotFoundError(VOCFormatError, DataNotFoundError):
    """A VOC folder, split file or image that should exist does not."""


class VOCBoxWarning(BoxFixWarning):
    """Boxes were clipped to the image or dropped as degenerate (reported once per dataset, with counts)."""


@dataclass(frozen=True)
class VOCAnnotation:
    """One parsed annotation file, before class mapping and clipping (boxes 0-based continuous, float64)."""

    path: Path
    filename: str | None
    size: tuple[int, int] | None  # (height, width) from <size>, None when absent or zero
    names: tuple[str, ...]
    boxes: np.ndarray  # float64 [G, 4] xyxy
    difficult: np.ndarray  # bool [G]


VOCRecord = Record  # the one record type of every reader (detector.data.records)


@dataclass(frozen=True)
class VOCObject:
    """One object to write: ``box`` is 0-based continuous xyxy (written back 1-based)."""

    name: str
    box: tuple[float, float, float, float]
    difficult: bool = False
    truncated: bool = False


# ---------------------------------------------------------------------------------------------------- parsing


def _child_text(elem: ET.Element, tag: str) -> str | None:
    child = elem.find(tag)
    if child is None or child.text is None:
        return None
    text = child.text.strip()
    return text or None


def _parse_number(text: str | None, what: str, path: Path) -> float:
    if text is None:
        raise VOCFormatError(f"{path}: {what} is missing")
    try:
        value = float(text)
    except ValueError:
        raise VOCFormatError(f"{path}: {what} is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise VOCFormatError(f"{path}: {what} is not finite: {text!r}")
    return value


def _parse_size(root: ET.Element, path: Path) -> tuple[int, int] | None:
    size = root.find("size")
    if size is None:
        return None
    w_text, h_text = _child_text(size, "width"), _child_text(size, "height")
    if w_text is None or h_text is None:
        return None
    width = _parse_number(w_text, "<size><width>", path)
    height = _parse_number(h_text, "<size><height>", path)
    if width <= 0 or height <= 0:  # some tools write 0 when they do not know the size
        return None
    if not (width.is_integer() and height.is_integer()):
        raise VOCFormatError(f"{path}: <size> must be whole pixels, got width={w_text!r} height={h_text!r}")
    return int(height), int(width)


def parse_voc_xml(path: str | os.PathLike[str]) -> VOCAnnotation:
    """Parse one VOC annotation file with defusedxml (no DTDs, entities or external references).

    ``<difficult>`` missing or empty counts as 0; ``<truncated>``, ``<pose>``, ``<occluded>``, parts and other
    extra tags are ignored. Raises :class:`VOCFormatError` naming the file for anything malformed, including
    swapped corners (``xmax < xmin - 1``; ``xmax == xmin - 1`` is an empty box, dropped with a warning).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise VOCFileNotFoundError(f"{path}: annotation file not found") from None
    except (OSError, ValueError) as err:  # a directory, name too long, embedded NUL byte, ...
        raise VOCFormatError(f"{path}: cannot read annotation file ({err})") from err
    try:
        root = DET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except defusedxml.DefusedXmlException as err:
        msg = f"{path}: forbidden XML construct (DTD, entity or external reference): {err}"
        raise VOCFormatError(msg) from err
    except ET.ParseError as err:
        raise VOCFormatError(f"{path}: malformed XML ({err})") from err
    except LookupError as err:  # <?xml encoding="..."?> names a codec Python does not know
        raise VOCFormatError(f"{path}: malformed XML ({err})") from err
    if root.tag != "annotation":
        raise VOCFormatError(f"{path}: root element is <{root.tag}>, expected <annotation>")

    names: list[str] = []
    boxes: list[tuple[float, float, float, float]] = []
    difficult: list[bool] = []
    for index, obj in enumerate(root.findall("object")):
        name = _child_text(obj, "name")
        if name is None:
            raise VOCFormatError(f"{path}: object #{index} has no <name>")
        where = f"object #{index} ({name!r})"
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise VOCFormatError(f"{path}: {where} has no <bndbox>")
        xmin, ymin, xmax, ymax = (
            _parse_number(_child_text(bndbox, tag), f"{where} <{tag}>", path)
            for tag in ("xmin", "ymin", "xmax", "ymax")
        )
        for lo, hi, lo_tag, hi_tag in ((xmin, xmax, "xmin", "xmax"), (ymin, ymax, "ymin", "ymax")):
            if hi < lo - 1.0:  # 1-based inclusive: hi == lo - 1 is empty (dropped later); below it, swapped
                raise VOCFormatError(
                    f"{path}: {where} has swapped corners: <{hi_tag}> {hi:g} is before <{lo_tag}> {lo:g}"
                )
        diff_text = _child_text(obj, "difficult")
        is_difficult = diff_text is not None and _parse_number(diff_text, f"{where} <difficult>", path) != 0
        names.append(name)
        boxes.append((xmin - 1.0, ymin - 1.0, xmax, ymax))
        difficult.append(is_difficult)
    return VOCAnnotation(
        path=path,
        filename=_child_text(root, "filename"),
        size=_parse_size(root, path),
        names=tuple(names),
        boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        difficult=np.asarray(difficult, dtype=bool),
    )


# ---------------------------------------------------------------------------------------------------- writing


def _format_coord(value: float) -> str:
    """Whole numbers as integers (the VOC norm); others exactly (shortest round-trip repr), never rounded."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def write_voc_annotation(
    path: str | os.PathLike[str],
    *,
    filename: str,
    size: tuple[int, int],
    objects: Sequence[VOCObject],
    folder: str = "VOC",
    database: str = "Unknown",
) -> bool:
    """Write a VOC annotation file (1-based ``xmin + 1, ymin + 1, xmax, ymax``) deterministically.

    ``size`` is (height, width). The same arguments always give the same bytes (no timestamps), and the file
    is replaced by a rename so a reader never sees half of it. Returns False when it was already identical.
    """
    height, width = size
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = filename
    ET.SubElement(ET.SubElement(root, "source"), "database").text = database
    size_el = ET.SubElement(root, "size")
    ET.SubElement(size_el, "width").text = str(int(width))
    ET.SubElement(size_el, "height").text = str(int(height))
    ET.SubElement(size_el, "depth").text = "3"
    ET.SubElement(root, "segmented").text = "0"
    for obj in objects:
        x1, y1, x2, y2 = obj.box
        obj_el = ET.SubElement(root, "object")
        ET.SubElement(obj_el, "name").text = obj.name
        ET.SubElement(obj_el, "pose").text = "Unspecified"
        ET.SubElement(obj_el, "truncated").text = str(int(bool(obj.truncated)))
        ET.SubElement(obj_el, "difficult").text = str(int(bool(obj.difficult)))
        box_el = ET.SubElement(obj_el, "bndbox")
        for tag, value in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            ET.SubElement(box_el, tag).text = _format_coord(value)
    ET.indent(root, space="    ")
    data = (ET.tostring(root, encoding="unicode") + "\n").encode("utf-8")
    return atomic_write_bytes(Path(path), data)


def atomic_write_bytes(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` via a temporary file and a rename; skip (return False) when identical."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return False
    with atomic_open(path) as fh:
        fh.write(data)
    return True


# ---------------------------------------------------------------------------------------------------- dataset


_BoxFixReport = BoxFixReport  # kept for callers of the old private name


def _read_split_ids(split_file: Path) -> list[str]:
    try:
        lines = split_file.read_text(encoding="utf-8-sig").splitlines()  # -sig: a leading BOM is dropped
    except UnicodeDecodeError as err:
        raise VOCFormatError(f"{split_file}: split file is not UTF-8 text ({err})") from err
    # Class-specific split files ("aeroplane_train.txt") carry a second column; the id is the first token.
    return [line.split()[0] for line in lines if line.strip()]


def _find_image(root: Path, image_id: str, xml_filename: str | None) -> tuple[Path | None, list[Path]]:
    tried = [root / "JPEGImages" / f"{image_id}{ext}" for ext in IMAGE_EXTENSIONS]
    if xml_filename and Path(xml_filename).name == xml_filename:  # a bare name only, never a path
        tried.append(root / "JPEGImages" / xml_filename)
    for candidate in tried:
        if os.path.isfile(candidate):
            return candidate, tried
    return None, tried


_check_classes = check_classes


class VOCDataset(RecordDataset):
    """One VOC year folder (``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/``) and one split.

    A reader: it turns the split's XML files into :class:`Record` objects; items are the generic
    :class:`RecordDataset` ones (``difficult`` is the ignore flag).
    """

    error_class = VOCFormatError
    warning_class = VOCBoxWarning

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        classes: Sequence[str] = VOC_CLASSES,
        transforms: Transforms | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        names = check_classes(classes)
        self._class_to_label = {name: i + 1 for i, name in enumerate(names)}
        self.class_names: tuple[str, ...] = names  # _load_records names them in errors
        description = f"VOC {self.root} split {split!r}"
        super().__init__(self._load_records(), names, transforms, description=description)

    # -- construction ----------------------------------------------------------------------------------------

    def _split_file(self) -> Path:
        root = self.root
        if not os.path.isdir(root):
            raise VOCFileNotFoundError(
                f"{root}: VOC root folder not found (expected a year folder such as VOCdevkit/VOC2007 "
                "holding Annotations/, JPEGImages/, ImageSets/Main/)"
            )
        subfolders = ("Annotations", "JPEGImages", "ImageSets/Main")
        missing = [sub for sub in subfolders if not os.path.isdir(root / sub)]
        if missing:
            raise VOCFileNotFoundError(f"{root}: not a VOC year folder, missing {', '.join(missing)}")
        split_file = root / "ImageSets" / "Main" / f"{self.split}.txt"
        if not os.path.isfile(split_file):
            available = sorted(p.stem for p in (root / "ImageSets" / "Main").glob("*.txt"))
            shown = ", ".join(available[:30]) + (" ..." if len(available) > 30 else "")
            raise VOCFileNotFoundError(
                f"{split_file}: split {self.split!r} not found; available splits: {shown or '(none)'}"
            )
        return split_file

    def _load_records(self) -> list[VOCRecord]:
        split_file = self._split_file()
        ids = _read_split_ids(split_file)
        if not ids:
            raise VOCFormatError(f"{split_file}: split file lists no images")
        report = _BoxFixReport()
        records = [self._load_record(image_id, split_file, report) for image_id in ids]
        if report.clipped or report.dropped:
            where = f"VOC {self.root} split {self.split!r}"
            warnings.warn(report.message(where), VOCBoxWarning, stacklevel=3)
        return records

    def _load_record(self, image_id: str, split_file: Path, report: _BoxFixReport) -> VOCRecord:
        xml_path = self.root / "Annotations" / f"{image_id}.xml"
        # os.path.isfile, unlike Path.is_file before Python 3.14, is False (not OSError) for over-long names.
        if not os.path.isfile(xml_path):
            raise VOCFileNotFoundError(
                f"{xml_path}: annotation for id {image_id!r} (listed in {split_file}) not found"
            )
        ann = parse_voc_xml(xml_path)
        image_path, tried = _find_image(self.root, image_id, ann.filename)
        if image_path is None:
            raise VOCFileNotFoundError(
                f"image for id {image_id!r} (annotation {xml_path}) not found; looked for: "
                + ", ".join(str(p) for p in tried)
            )
        unknown = sorted({n for n in ann.names if n not in self._class_to_label})
        if unknown:
            raise VOCFormatError(
                f"{xml_path}: unknown class name(s) {', '.join(map(repr, unknown))}; "
                f"known classes: {', '.join(self.class_names)}"
            )
        labels = np.asarray([self._class_to_label[n] for n in ann.names], dtype=np.int64)
        boxes, difficult = ann.boxes, ann.difficult
        if ann.size is not None:
            boxes, labels, difficult = clip_record_boxes(xml_path, boxes, labels, difficult, ann.size, report)
        return VOCRecord(
            image_id=image_id,
            image_path=image_path,
            annotation_path=xml_path,
            # Coordinates beyond float32 (e.g. 1e39 with no <size> to clip to) saturate instead of overflowing
            # to inf with a RuntimeWarning; they are clipped to the image when it is read.
            boxes=to_float32_boxes(boxes),
            labels=labels,
            difficult=difficult,
            size=ann.size,
        )

    # -- access ----------------------------------------------------------------------------------------------

    def size_mismatch(self, rec: Record, height: int, width: int) -> DataFormatError:
        assert rec.size is not None
        hint = ""
        if rec.size == (width, height):
            hint = " (sizes swapped: was it annotated before its EXIF rotation was applied?)"
        return VOCFormatError(
            f"{rec.annotation_path}: <size> says {rec.size[1]}x{rec.size[0]} (width x height) but image "
            f"{rec.image_path} is {width}x{height}{hint}"
        )

    def __repr__(self) -> str:
        n_boxes = sum(len(r.labels) for r in self.records)
        return (f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, images={len(self)}, "
                f"boxes={n_boxes}, classes={len(self.class_names)})")


class VOCConcatDataset(RecordConcatDataset):
    """Several VOC datasets with the same classes (e.g. VOC07+12 trainval) as one dataset."""

    def __init__(self, datasets: Sequence[VOCDataset]) -> None:
        super().__init__(datasets)

def concat_voc(
    roots: Sequence[str | os.PathLike[str]],
    split: str | Sequence[str],
    classes: Sequence[str] = VOC_CLASSES,
    transforms: Transforms | None = None,
) -> VOCConcatDataset:
    """Concatenate one split (or one split per root) of several VOC year folders, e.g. VOC07+12 trainval."""
    roots = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
    splits = [split] * len(roots) if isinstance(split, str) else list(split)
    if len(splits) != len(roots):
        raise ValueError(f"got {len(roots)} roots but {len(splits)} splits")
    datasets = [VOCDataset(r, s, classes, transforms) for r, s in zip(roots, splits, strict=True)]
    return VOCConcatDataset(datasets)
