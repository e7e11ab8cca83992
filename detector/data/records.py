"""The one record type every reader (VOC, COCO, YOLO) produces, and the one Dataset over records.

A record is one image: where it is, its ground truth (boxes float32 [G, 4] xyxy in 0-based continuous pixels,
labels int64 1..C, the ignore flag) and its size when the annotation states it. Nothing downstream knows which
format a record came from. The ignore flag keeps the name ``difficult`` (evaluation and transforms read that
key): it is VOC's ``<difficult>`` and COCO's ``iscrowd``; ignored boxes count neither as hits nor as misses.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from detector.data.images import read_image

__all__ = [
    "BoxFixReport",
    "BoxFixWarning",
    "DataFormatError",
    "DataNotFoundError",
    "Record",
    "RecordConcatDataset",
    "RecordDataset",
    "Transforms",
    "check_classes",
    "clip_boxes",
    "clip_record_boxes",
    "to_float32_boxes",
]

Transforms = Callable[[torch.Tensor, dict[str, Any]], tuple[torch.Tensor, dict[str, Any]]]

_FLOAT32_MAX = float(np.finfo(np.float32).max)


class DataFormatError(ValueError):
    """A dataset folder, split or annotation is malformed; the message names the file (and id or line)."""


class DataNotFoundError(DataFormatError, FileNotFoundError):
    """A dataset folder, split, annotation or image file that should exist does not."""


class BoxFixWarning(UserWarning):
    """Boxes were clipped to the image or dropped as degenerate (reported once per dataset, with counts)."""


@dataclass(frozen=True)
class Record:
    """One image of a split and its ground truth, whatever the format it was read from.

    ``annotation_path`` is the file the boxes came from (VOC XML, COCO JSON, YOLO txt; the txt may not exist:
    no objects) and ``annotation_ref`` where in it (``"image id 7"`` for COCO; empty for one file per image).
    ``difficult`` is the ignore flag: VOC difficult / COCO iscrowd. ``size`` is (H, W) when the annotation
    states it (then the boxes are already clipped to it); None: clipped when the image is read.
    """

    image_id: str
    image_path: Path
    annotation_path: Path
    boxes: np.ndarray  # float32 [G, 4] xyxy, 0-based continuous pixels
    labels: np.ndarray  # int64 [G] in 1..C
    difficult: np.ndarray  # bool [G]: ignore (VOC difficult / COCO iscrowd)
    size: tuple[int, int] | None
    annotation_ref: str = ""

    @property
    def where(self) -> str:
        """The annotation file, plus the id inside it when one file holds many images."""
        path = str(self.annotation_path)
        return f"{path} ({self.annotation_ref})" if self.annotation_ref else path


def check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    """A non-empty tuple of distinct, non-empty class names (else ValueError)."""
    names = tuple(classes)
    if isinstance(classes, str) or not names or not all(isinstance(c, str) and c for c in names):
        raise ValueError(f"classes must be a non-empty sequence of non-empty strings, got {classes!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"classes contain duplicates: {names!r}")
    return names


def clip_boxes(boxes: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Clip xyxy boxes to ``[0, width] x [0, height]``.

    Returns ``(clipped boxes, keep mask, number of kept boxes that clipping changed)``; ``keep`` is False for
    boxes with zero (or negative) width or height after clipping, judged in float32 (the dtype of records and
    targets), so a box 1e-30 px wide is dropped rather than becoming zero-width when it is stored.
    """
    clipped = boxes.copy()
    clipped[:, 0::2] = np.clip(clipped[:, 0::2], 0.0, float(width))
    clipped[:, 1::2] = np.clip(clipped[:, 1::2], 0.0, float(height))
    with np.errstate(over="ignore"):  # beyond float32's range is inf there, which compares correctly
        stored = clipped.astype(np.float32)
    keep = (stored[:, 2] > stored[:, 0]) & (stored[:, 3] > stored[:, 1])
    changed = np.any(clipped != boxes, axis=1) & keep
    return clipped, keep, int(changed.sum())


def to_float32_boxes(boxes: np.ndarray) -> np.ndarray:
    """float64 boxes -> float32 [G, 4]; values beyond float32 saturate instead of overflowing to inf."""
    return np.clip(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), -_FLOAT32_MAX, _FLOAT32_MAX).astype(
        np.float32
    )


class BoxFixReport:
    """Counts clipped / dropped boxes with one example file each, for the single per-dataset warning."""

    def __init__(self) -> None:
        self.clipped = 0
        self.dropped = 0
        self.clipped_example: str | None = None
        self.dropped_example: str | None = None

    def add(self, where: Path | str, clipped: int, dropped: int) -> None:
        if clipped and self.clipped_example is None:
            self.clipped_example = str(where)
        if dropped and self.dropped_example is None:
            self.dropped_example = str(where)
        self.clipped += clipped
        self.dropped += dropped

    def __bool__(self) -> bool:
        return bool(self.clipped or self.dropped)

    def message(self, where: str) -> str:
        parts = []
        if self.clipped:
            parts.append(
                f"clipped {self.clipped} box(es) extending outside the image (e.g. {self.clipped_example})"
            )
        if self.dropped:
            parts.append(
                f"dropped {self.dropped} degenerate box(es) with zero width or height after clipping "
                f"(e.g. {self.dropped_example})"
            )
        return f"{where}: " + "; ".join(parts)


def clip_record_boxes(
    where: Path | str,
    boxes: np.ndarray,
    labels: np.ndarray,
    difficult: np.ndarray,
    size: tuple[int, int],
    report: BoxFixReport,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clip boxes to ``size`` (H, W), drop the degenerate ones with their labels, count both in ``report``."""
    clipped, keep, n_changed = clip_boxes(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), *size)
    report.add(where, n_changed, int((~keep).sum()))
    return clipped[keep], labels[keep], difficult[keep]


class RecordDataset(Dataset):
    """Records of one split as ``(image uint8 [3, H, W], target)`` items.

    ``target``: ``boxes`` float32 [G, 4] xyxy 0-based continuous, ``labels`` int64 [G] in 1..C (index into
    ``class_names`` + 1), ``difficult`` bool [G] (ignore flag), ``image_id`` str, ``orig_size`` (H, W).
    The decoded image must have the record's stated size; records without one are clipped here.
    ``transforms(image, target) -> (image, target)`` runs last.
    """

    # Raised when the decoded image disagrees with the stated size; readers set their own subclass.
    error_class: type[DataFormatError] = DataFormatError
    warning_class: type[BoxFixWarning] = BoxFixWarning

    def __init__(
        self,
        records: Sequence[Record],
        class_names: Sequence[str],
        transforms: Transforms | None = None,
        description: str = "dataset",
    ) -> None:
        self.records: list[Record] = list(records)
        self.class_names: tuple[str, ...] = check_classes(class_names)
        self.transforms = transforms
        self.description = description  # e.g. "COCO data/x split 'annotations/train.json'", for warnings
        self._lazy_warned = False  # records without a size are clipped at __getitem__; warn about that once

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.records)

    def size_mismatch(self, rec: Record, height: int, width: int) -> DataFormatError:
        """The error for an image whose decoded size differs from the annotation's (readers may reword it)."""
        assert rec.size is not None
        hint = " (sizes swapped: was it annotated before its EXIF rotation was applied?)"
        hint = hint if rec.size == (width, height) else ""
        return self.error_class(
            f"{rec.where}: the annotation says {rec.size[1]}x{rec.size[0]} (width x height) but image "
            f"{rec.image_path} is {width}x{height}{hint}"
        )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        rec = self.records[index]
        image = read_image(rec.image_path)
        height, width = int(image.shape[1]), int(image.shape[2])
        boxes, labels, difficult = rec.boxes, rec.labels, rec.difficult
        if rec.size is None:
            lazy = BoxFixReport()
            boxes, labels, difficult = clip_record_boxes(
                rec.where, boxes, labels, difficult, (height, width), lazy
            )
            if lazy and not self._lazy_warned:
                self._lazy_warned = True
                where = (
                    f"{self.description} (annotation without a size, clipped when read; later ones in this "
                    "dataset are not reported again)"
                )
                warnings.warn(lazy.message(where), self.warning_class, stacklevel=2)
        elif rec.size != (height, width):
            raise self.size_mismatch(rec, height, width)
        target: dict[str, Any] = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "difficult": torch.tensor(difficult, dtype=torch.bool),
            "image_id": rec.image_id,
            "orig_size": (height, width),
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def __repr__(self) -> str:
        n_boxes = sum(len(r.labels) for r in self.records)
        return (
            f"{type(self).__name__}({self.description}, images={len(self)}, boxes={n_boxes}, "
            f"classes={len(self.class_names)})"
        )


class RecordConcatDataset(ConcatDataset):
    """Several record datasets with the same classes (e.g. VOC07+12 trainval) as one dataset."""

    def __init__(self, datasets: Sequence[RecordDataset]) -> None:
        datasets = list(datasets)
        if not datasets:
            raise ValueError(f"{type(self).__name__} needs at least one dataset")
        names = datasets[0].class_names
        for ds in datasets[1:]:
            if ds.class_names != names:
                raise ValueError(
                    f"class lists differ: {ds.description} has {ds.class_names}, "
                    f"{datasets[0].description} has {names}"
                )
        super().__init__(datasets)
        self.class_names: tuple[str, ...] = names

    @property
    def records(self) -> list[Record]:
        return [rec for ds in self.datasets for rec in ds.records]  # type: ignore[attr-defined]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)
