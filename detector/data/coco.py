"""COCO instances JSON reader: a dataset folder + an annotation file -> the same records as every reader.

Coordinates: COCO's ``bbox`` is ``[x, y, w, h]`` in pixels, ``(x, y)`` the top-left corner, 0-based and
continuous (pixel i spans [i, i + 1)), so the record box is ``x, y, x + w, y + h`` with no shift. Category ids
may be any integers (COCO's own skip numbers); they map to labels 1..C in the order of ``categories``, or in
the order of ``classes`` when given (matched by name). ``iscrowd=1`` boxes get the ignore flag. Images without
annotations are kept (negatives). The file is parsed once, at construction: bad input fails before training.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detector.data.records import (
    BoxFixReport,
    BoxFixWarning,
    DataFormatError,
    DataNotFoundError,
    Record,
    RecordDataset,
    Transforms,
    check_classes,
    clip_record_boxes,
    to_float32_boxes,
)

__all__ = [
    "COCOBoxWarning",
    "COCODataset",
    "COCOFileNotFoundError",
    "COCOFormatError",
    "coco_categories",
    "coco_class_names",
    "coco_image_candidates",
    "read_coco_json",
]


class COCOFormatError(DataFormatError):
    """A COCO annotation file is malformed; the message names the file and the image / annotation id."""


class COCOFileNotFoundError(COCOFormatError, DataNotFoundError):
    """A COCO annotation file or one of its images does not exist."""


class COCOBoxWarning(BoxFixWarning):
    """COCO boxes were clipped to the image or dropped as degenerate (once per dataset, with counts)."""


def read_coco_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a COCO annotation file: a JSON object with ``images``, ``annotations`` and ``categories`` lists.

    Raises :class:`COCOFormatError` naming the file (and line / column for malformed JSON).
    """
    path = Path(path)
    if not os.path.isfile(path):
        raise COCOFileNotFoundError(f"{path}: COCO annotation file not found")
    try:
        data = json.loads(path.read_bytes())  # bytes: json detects UTF-8/16/32 itself
    except json.JSONDecodeError as err:
        raise COCOFormatError(
            f"{path}: malformed JSON at line {err.lineno} column {err.colno} ({err.msg})"
        ) from err
    except (UnicodeDecodeError, OSError, ValueError, RecursionError) as err:
        raise COCOFormatError(f"{path}: cannot read as JSON ({type(err).__name__}: {err})") from err
    if not isinstance(data, dict):
        raise COCOFormatError(
            f"{path}: expected a JSON object with images, annotations, categories; got {type(data).__name__}"
        )
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise COCOFormatError(
                f"{path}: '{key}' must be a list (a COCO instances file has images, "
                "annotations and categories)"
            )
    if not isinstance(data.get("annotations", []), list):
        raise COCOFormatError(f"{path}: 'annotations' must be a list")
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _category_name(value: Any) -> str | None:
    """Category names are strings; numbers (some tools write 1.0) become their text; anything else is None."""
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return str(value)
    return None


def coco_categories(data: dict[str, Any], path: Path) -> list[tuple[int, str]]:
    """``(category id, name)`` in the file's order; ids and names must be unique."""
    out: list[tuple[int, str]] = []
    seen_ids: set[int] = set()
    seen_names: set[str] = set()
    for index, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")):
            raise COCOFormatError(f"{path}: category #{index} needs an integer 'id', got {cat!r:.80}")
        cid, name = cat["id"], _category_name(cat.get("name"))
        if name is None:
            raise COCOFormatError(
                f"{path}: category id {cid} needs a non-empty 'name', got {cat.get('name')!r}"
            )
        if cid in seen_ids:
            raise COCOFormatError(f"{path}: duplicate category id {cid}")
        if name in seen_names:
            raise COCOFormatError(f"{path}: duplicate category name {name!r} (category id {cid})")
        seen_ids.add(cid)
        seen_names.add(name)
        out.append((cid, name))
    if not out:
        raise COCOFormatError(f"{path}: 'categories' is empty")
    return out


def coco_class_names(path: str | os.PathLike[str]) -> list[str]:
    """The class names of a COCO file, in the order of its ``categories``."""
    path = Path(path)
    return [name for _, name in coco_categories(read_coco_json(path), path)]


def coco_image_candidates(root: Path, ann_file: Path, file_name: str) -> list[Path]:
    """Where an image's ``file_name`` may be, in order: ``root/``, ``root/images/``, beside the JSON file, and
    for ``instances_<split>.json`` (the COCO 2017 layout) ``root/<split>/`` and ``root/images/<split>/``."""
    candidates = [root / file_name, root / "images" / file_name, ann_file.parent / file_name]
    stem = ann_file.stem
    if stem.startswith("instances_"):
        split = stem.removeprefix("instances_")
        candidates += [root / split / file_name, root / "images" / split / file_name]
    unique: list[Path] = []
    for c in candidates:
        if c not in unique:
            unique.append(c)
    return unique


def _size_of(img: dict[str, Any], where: str) -> tuple[int, int] | None:
    width, height = img.get("width"), img.get("height")
    if width is None and height is None:
        return None
    ok = all(
        isinstance(v, (int, float))
        and not isinstance(v, bool)
        and math.isfinite(v)
        and v > 0
        and float(v).is_integer()
        for v in (width, height)
    )
    if not ok:
        raise COCOFormatError(
            f"{where}: width and height must be positive whole numbers, got width={width!r} height={height!r}"
        )
    return int(height), int(width)


class COCODataset(RecordDataset):
    """One COCO annotation file (``split``, relative to ``root`` or absolute) with its images under ``root``.

    ``classes``: None takes the file's categories in their order; a list selects and orders them by name
    (every annotation must then be of a listed category).
    """

    error_class = COCOFormatError
    warning_class = COCOBoxWarning

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        classes: Sequence[str] | None = None,
        transforms: Transforms | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        if not os.path.isdir(self.root):
            raise COCOFileNotFoundError(f"{self.root}: COCO dataset folder not found")
        self.ann_file = self.root / split
        data = read_coco_json(self.ann_file)
        categories = coco_categories(data, self.ann_file)
        if classes is None:
            names = tuple(name for _, name in categories)
        else:
            names = check_classes(classes)
            file_names = {name for _, name in categories}
            missing = [n for n in names if n not in file_names]
            if missing:
                raise COCOFormatError(
                    f"{self.ann_file}: class(es) {', '.join(map(repr, missing))} of data.classes are not "
                    f"categories of this file; its categories: {', '.join(n for _, n in categories)}"
                )
        label_of_name = {name: i + 1 for i, name in enumerate(names)}
        # None: a category of the file that the given classes leave out
        self._label_of_id = {cid: label_of_name.get(name) for cid, name in categories}
        self._names_of_id = dict(categories)
        description = f"COCO {self.ann_file}"
        records = self._load_records(data)
        super().__init__(records, names, transforms, description=description)

    # -- construction ----------------------------------------------------------------------------------------

    def _load_records(self, data: dict[str, Any]) -> list[Record]:
        path = self.ann_file
        images: dict[Any, dict[str, Any]] = {}
        order: list[Any] = []
        for index, img in enumerate(data["images"]):
            if not isinstance(img, dict) or not (_is_int(img.get("id")) or isinstance(img.get("id"), str)):
                raise COCOFormatError(f"{path}: image #{index} needs an integer 'id', got {img!r:.80}")
            image_id = img["id"]
            if image_id in images:
                raise COCOFormatError(
                    f"{path}: duplicate image id {image_id!r} (images #{order.index(image_id)} and #{index})"
                )
            images[image_id] = img
            order.append(image_id)
        boxes: dict[Any, list[tuple[float, float, float, float]]] = {i: [] for i in order}
        labels: dict[Any, list[int]] = {i: [] for i in order}
        crowd: dict[Any, list[bool]] = {i: [] for i in order}
        for index, ann in enumerate(data.get("annotations", [])):
            image_id, box, label, is_crowd = self._parse_annotation(index, ann, images)
            boxes[image_id].append(box)
            labels[image_id].append(label)
            crowd[image_id].append(is_crowd)
        report = BoxFixReport()
        records = [self._record(images[i], boxes[i], labels[i], crowd[i], report) for i in order]
        if report:
            warnings.warn(report.message(f"COCO {path}"), COCOBoxWarning, stacklevel=4)
        return records

    def _parse_annotation(
        self, index: int, ann: Any, images: dict[Any, dict[str, Any]]
    ) -> tuple[Any, tuple[float, float, float, float], int, bool]:
        path = self.ann_file
        if not isinstance(ann, dict):
            raise COCOFormatError(f"{path}: annotation #{index} is not an object: {ann!r:.80}")
        ann_id = ann.get("id")
        where = f"{path}: annotation id {ann_id!r}" if ann_id is not None else f"{path}: annotation #{index}"
        image_id = ann.get("image_id")
        if isinstance(image_id, bool) or not isinstance(image_id, (int, str)) or image_id not in images:
            raise COCOFormatError(f"{where}: image_id {image_id!r} is not an id in 'images'")
        cid = ann.get("category_id")
        if not _is_int(cid) or cid not in self._label_of_id:
            known = ", ".join(f"{i} ({n!r})" for i, n in self._names_of_id.items())
            raise COCOFormatError(f"{where}: unknown category_id {cid!r}; categories: {known}")
        label = self._label_of_id[cid]
        if label is None:
            raise COCOFormatError(
                f"{where}: category {self._names_of_id[cid]!r} (id {cid}) is not in data.classes"
            )
        bbox = ann.get("bbox")
        if (
            not isinstance(bbox, list)
            or len(bbox) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)
        ):
            raise COCOFormatError(f"{where}: bbox must be a list of 4 numbers [x, y, w, h], got {bbox!r:.80}")
        x, y, w, h = (float(v) for v in bbox)
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            raise COCOFormatError(f"{where}: bbox {bbox} is not finite")
        if w < 0 or h < 0:
            raise COCOFormatError(f"{where}: bbox {bbox} has a negative width or height")
        is_crowd = ann.get("iscrowd", 0)
        if is_crowd not in (0, 1):
            raise COCOFormatError(f"{where}: iscrowd must be 0 or 1, got {is_crowd!r}")
        return image_id, (x, y, x + w, y + h), label, bool(is_crowd)

    def _record(
        self,
        img: dict[str, Any],
        boxes: list[tuple[float, float, float, float]],
        labels: list[int],
        crowd: list[bool],
        report: BoxFixReport,
    ) -> Record:
        path = self.ann_file
        ref = f"image id {img['id']!r}"
        where = f"{path} ({ref})"
        file_name = img.get("file_name")
        if not isinstance(file_name, str) or not file_name.strip():
            raise COCOFormatError(f"{where}: needs a non-empty 'file_name', got {file_name!r}")
        size = _size_of(img, where)
        tried = coco_image_candidates(self.root, path, file_name)
        image_path = next((p for p in tried if os.path.isfile(p)), None)
        if image_path is None:
            raise COCOFileNotFoundError(
                f"{where}: image {file_name!r} not found; looked for: " + ", ".join(str(p) for p in tried)
            )
        box_arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        label_arr = np.asarray(labels, dtype=np.int64)
        crowd_arr = np.asarray(crowd, dtype=bool)
        if size is not None:
            box_arr, label_arr, crowd_arr = clip_record_boxes(
                where, box_arr, label_arr, crowd_arr, size, report
            )
        return Record(
            image_id=str(img["id"]),
            image_path=image_path,
            annotation_path=path,
            boxes=to_float32_boxes(box_arr),
            labels=label_arr,
            difficult=crowd_arr,
            size=size,
            annotation_ref=ref,
        )

    # -- access ----------------------------------------------------------------------------------------------

    def size_mismatch(self, rec: Record, height: int, width: int) -> DataFormatError:
        assert rec.size is not None
        hint = " (sizes swapped: was it annotated before its EXIF rotation was applied?)"
        hint = hint if rec.size == (width, height) else ""
        return COCOFormatError(
            f"{rec.where}: width/height say {rec.size[1]}x{rec.size[0]} but image {rec.image_path} is "
            f"{width}x{height}{hint}"
        )

    def __repr__(self) -> str:
        n_boxes = sum(len(r.labels) for r in self.records)
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, images={len(self)}, "
            f"boxes={n_boxes}, classes={len(self.class_names)})"
        )
