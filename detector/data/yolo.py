"""YOLO (Ultralytics layout) reader: ``images/<split>/`` + ``labels/<split>/<stem>.txt`` -> the same records.

A label line is ``class cx cy w h``, normalized to [0, 1] by the image width and height (a segment line,
``class x1 y1 x2 y2 ...`` with three or more points, gives its bounding box, as Ultralytics does). The record
box is ``(cx - w/2) W, (cy - h/2) H, (cx + w/2) W, (cy + h/2) H`` in 0-based continuous pixels, so the image
size is read from each image's header (no pixel decoding; EXIF rotation applied, as the loader does). The
label path of an image is its path with the last ``images`` folder replaced by ``labels`` and the suffix by
``.txt`` (Ultralytics' rule). An empty or missing label file is an image with no objects (a negative).
Class names come from ``data.yaml`` (``names:`` as a list or an ``{index: name}`` dict) or from ``classes``.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from detector.data.images import read_image_size
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
    "YOLO_IMAGE_EXTENSIONS",
    "YOLOBoxWarning",
    "YOLODataset",
    "YOLOFileNotFoundError",
    "YOLOFormatError",
    "parse_yolo_labels",
    "read_yolo_names",
    "yolo_label_path",
]

# What Ultralytics reads as images (lower case; matched case-insensitively).
YOLO_IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp", ".pfm", ".heic",
)  # fmt: skip
YAML_NAMES: tuple[str, ...] = ("data.yaml", "dataset.yaml")


class YOLOFormatError(DataFormatError):
    """A YOLO label file or data.yaml is malformed; the message names the file and the line."""


class YOLOFileNotFoundError(YOLOFormatError, DataNotFoundError):
    """A YOLO images folder (or data.yaml it needs) does not exist."""


class YOLOBoxWarning(BoxFixWarning):
    """YOLO boxes were clipped to the image or dropped as degenerate (once per dataset, with counts)."""


def find_yolo_yaml(root: Path) -> Path | None:
    """``root/data.yaml`` (or ``dataset.yaml``) when present."""
    return next((root / n for n in YAML_NAMES if os.path.isfile(root / n)), None)


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as err:
        raise YOLOFormatError(f"{path}: cannot read as YAML ({' '.join(str(err).split())})") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise YOLOFormatError(f"{path}: expected a mapping (names:, nc:, ...), got {type(data).__name__}")
    return data


def read_yolo_names(root: str | os.PathLike[str]) -> list[str] | None:
    """Class names (index order) from ``root/data.yaml``'s ``names:`` (list or ``{index: name}``); None when
    there is no data.yaml or it has no names. ``nc:``, when given, must agree."""
    path = find_yolo_yaml(Path(root))
    if path is None:
        return None
    data = _load_yaml(path)
    names = data.get("names")
    if names is None:
        return None
    if isinstance(names, dict):
        keys = list(names)
        if not all(isinstance(k, int) and not isinstance(k, bool) for k in keys) or sorted(keys) != list(
            range(len(keys))
        ):
            raise YOLOFormatError(
                f"{path}: names as a dict must have the keys 0..{len(keys) - 1}, got {keys}"
            )
        names = [names[i] for i in range(len(keys))]
    if not isinstance(names, list) or not names:
        raise YOLOFormatError(f"{path}: names must be a non-empty list or an {{index: name}} dict")
    out = []
    for i, name in enumerate(names):
        if isinstance(name, bool) or not isinstance(name, (str, int, float)) or not str(name).strip():
            raise YOLOFormatError(f"{path}: class {i} has no usable name: {name!r}")
        out.append(str(name).strip())
    if len(set(out)) != len(out):
        raise YOLOFormatError(f"{path}: names contain duplicates: {out}")
    nc = data.get("nc")
    if nc is not None and nc != len(out):
        raise YOLOFormatError(f"{path}: nc: {nc!r} but names lists {len(out)} classes")
    return out


def yolo_label_path(root: Path, image_path: Path) -> Path:
    """The label file of an image: the last ``images`` folder of its path (below root) becomes ``labels``."""
    rel = image_path.relative_to(root)
    parts = list(rel.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return (root.joinpath(*parts)).with_suffix(".txt")


def _number(token: str, what: str, where: str) -> float:
    try:
        value = float(token)
    except ValueError:
        raise YOLOFormatError(f"{where}: {what} is not a number: {token!r}") from None
    if not math.isfinite(value):
        raise YOLOFormatError(f"{where}: {what} is not finite: {token!r}")
    return value


def parse_yolo_labels(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Parse one label file: ``(class indices int64 [G] in 0..num_classes-1, normalized cx cy w h float64
    [G, 4], line numbers)``. A missing or empty file gives no objects; blank lines are skipped."""
    if not os.path.isfile(path):
        return np.zeros(0, dtype=np.int64), np.zeros((0, 4)), []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise YOLOFormatError(f"{path}: label file is not UTF-8 text ({err})") from err
    except OSError as err:
        raise YOLOFormatError(f"{path}: cannot read label file ({err})") from err
    classes: list[int] = []
    boxes: list[tuple[float, float, float, float]] = []
    lines: list[int] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        where = f"{path}: line {lineno}"
        n = len(tokens) - 1
        if n != 4 and (n < 6 or n % 2):
            raise YOLOFormatError(
                f"{where}: expected 'class cx cy w h' (or a segment 'class x1 y1 x2 y2 x3 y3 ...'), got "
                f"{len(tokens)} field(s): {line.strip()[:80]!r}"
            )
        cls = _number(tokens[0], "class", where)
        if not cls.is_integer():
            raise YOLOFormatError(f"{where}: class {tokens[0]!r} is not a whole number")
        if not 0 <= cls < num_classes:
            raise YOLOFormatError(
                f"{where}: unknown class {int(cls)}; the dataset has {num_classes} class(es), "
                f"0..{num_classes - 1}"
            )
        values = [_number(t, f"field {i + 2}", where) for i, t in enumerate(tokens[1:])]
        if n == 4:
            cx, cy, w, h = values
            if w < 0 or h < 0:
                raise YOLOFormatError(f"{where}: negative width or height (w={tokens[3]}, h={tokens[4]})")
        else:
            xs, ys = values[0::2], values[1::2]
            cx, cy = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2
            w, h = max(xs) - min(xs), max(ys) - min(ys)
        classes.append(int(cls))
        boxes.append((cx, cy, w, h))
        lines.append(lineno)
    return np.asarray(classes, dtype=np.int64), np.asarray(boxes, dtype=np.float64).reshape(-1, 4), lines


class YOLODataset(RecordDataset):
    """One split of an Ultralytics-layout folder: ``root/images/<split>/`` (searched recursively) and
    ``root/labels/<split>/``. Image ids are the image paths below ``images/<split>/`` without suffix.

    ``classes``: None takes data.yaml's names. A list, with data.yaml names, selects and orders them by name
    (every label must then be of a listed class); without data.yaml names, it names the indices 0..C-1.
    """

    error_class = YOLOFormatError
    warning_class = YOLOBoxWarning

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
            raise YOLOFileNotFoundError(f"{self.root}: YOLO dataset folder not found")
        self.image_dir = self.root / "images" / split
        if not os.path.isdir(self.image_dir):
            have = (
                sorted(p.name for p in (self.root / "images").iterdir() if p.is_dir())
                if os.path.isdir(self.root / "images")
                else []
            )
            raise YOLOFileNotFoundError(
                f"{self.image_dir}: YOLO images folder of split {split!r} not found; splits under "
                f"{self.root / 'images'}: {', '.join(have) or '(none)'}"
            )
        file_names = read_yolo_names(self.root)
        if classes is None:
            if file_names is None:
                raise YOLOFileNotFoundError(
                    f"{self.root}: no data.yaml with names: to name the classes; add one or set data.classes"
                )
            names = tuple(file_names)
        else:
            names = check_classes(classes)
        if file_names is None:
            self._label_of_index = [i + 1 for i in range(len(names))]
            self._file_names = list(names)
        else:
            missing = [n for n in names if n not in file_names]
            if missing:
                raise YOLOFormatError(
                    f"{find_yolo_yaml(self.root)}: class(es) {', '.join(map(repr, missing))} of data.classes "
                    f"are not in its names: {file_names}"
                )
            label_of_name = {n: i + 1 for i, n in enumerate(names)}
            self._label_of_index = [label_of_name.get(n, 0) for n in file_names]  # 0: left out by classes
            self._file_names = file_names
        description = f"YOLO {self.root} split {split!r}"
        super().__init__(self._load_records(), names, transforms, description=description)

    def _image_files(self) -> list[Path]:
        files = [
            p
            for p in self.image_dir.rglob("*")
            if p.suffix.lower() in YOLO_IMAGE_EXTENSIONS and os.path.isfile(p)
        ]
        return sorted(files, key=lambda p: p.relative_to(self.image_dir).as_posix())

    def _load_records(self) -> list[Record]:
        files = self._image_files()
        if not files:
            raise YOLOFileNotFoundError(
                f"{self.image_dir}: no images (looked for {', '.join(YOLO_IMAGE_EXTENSIONS)})"
            )
        seen: dict[str, Path] = {}
        report = BoxFixReport()
        records = []
        n_labels = 0
        for image_path in files:
            image_id = image_path.relative_to(self.image_dir).with_suffix("").as_posix()
            if image_id in seen:
                raise YOLOFormatError(
                    f"duplicate image id {image_id!r}: {seen[image_id]} and {image_path} share the label "
                    f"file {yolo_label_path(self.root, image_path)}"
                )
            seen[image_id] = image_path
            label_path = yolo_label_path(self.root, image_path)
            n_labels += os.path.isfile(label_path)
            records.append(self._record(image_id, image_path, label_path, report))
        if report:
            warnings.warn(
                report.message(f"YOLO {self.root} split {self.split!r}"), YOLOBoxWarning, stacklevel=4
            )
        if n_labels == 0:
            warnings.warn(
                f"YOLO {self.root} split {self.split!r}: none of its {len(files)} image(s) has a label file "
                f"under {self.root / 'labels' / self.split}; every image is read as having no objects",
                UserWarning,
                stacklevel=4,
            )
        return records

    def _record(self, image_id: str, image_path: Path, label_path: Path, report: BoxFixReport) -> Record:
        indices, norm, lines = parse_yolo_labels(label_path, len(self._file_names))
        labels = np.asarray([self._label_of_index[i] for i in indices], dtype=np.int64)
        if (labels == 0).any():
            k = int(np.argmax(labels == 0))
            raise YOLOFormatError(
                f"{label_path}: line {lines[k]}: class {int(indices[k])} "
                f"({self._file_names[indices[k]]!r}) is not in data.classes"
            )
        height, width = read_image_size(image_path)  # header only; ImageReadError names the file
        cx, cy, w, h = norm.T
        boxes = np.stack(
            [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height], axis=1
        ).reshape(-1, 4)
        ignore = np.zeros(len(labels), dtype=bool)
        boxes, labels, ignore = clip_record_boxes(label_path, boxes, labels, ignore, (height, width), report)
        return Record(
            image_id=image_id,
            image_path=image_path,
            annotation_path=label_path,
            boxes=to_float32_boxes(boxes),
            labels=labels,
            difficult=ignore,
            size=(height, width),
        )

    def size_mismatch(self, rec: Record, height: int, width: int) -> DataFormatError:
        assert rec.size is not None
        return YOLOFormatError(
            f"{rec.image_path}: the image header said {rec.size[1]}x{rec.size[0]} when the dataset was built "
            f"but it decodes to {width}x{height} (was the file replaced?); labels {rec.annotation_path}"
        )

    def __repr__(self) -> str:
        n_boxes = sum(len(r.labels) for r in self.records)
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, images={len(self)}, "
            f"boxes={n_boxes}, classes={len(self.class_names)})"
        )
