"""Which reader a dataset needs (``data.format``, or detected from the folder) and the one builder over them.

Detection, per root and split: a split ending in ``.json`` is COCO; ``Annotations/`` + ``ImageSets/Main/``
is VOC; ``images/<split>/``, or ``labels/`` or ``data.yaml`` beside ``images/``, is YOLO. Class names: the
given ``data.classes``, else the dataset's (COCO: the training file's categories; YOLO: data.yaml's names),
found once and passed to every split, so val and test labels mean what the training labels mean.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from detector.data.coco import COCODataset, coco_class_names
from detector.data.records import (
    DataFormatError,
    DataNotFoundError,
    RecordConcatDataset,
    RecordDataset,
    Transforms,
)
from detector.data.voc import VOCDataset
from detector.data.yolo import YOLODataset, find_yolo_yaml, read_yolo_names

__all__ = [
    "FORMATS",
    "DatasetFormatUnknownError",
    "build_dataset",
    "dataset_class_names",
    "detect_format",
    "drop_empty",
]

FORMATS: tuple[str, ...] = ("voc", "coco", "yolo")
_READERS: dict[str, type[RecordDataset]] = {"voc": VOCDataset, "coco": COCODataset, "yolo": YOLODataset}


class DatasetFormatUnknownError(DataFormatError):
    """The layout of a dataset folder matches none of VOC, COCO and YOLO (set data.format)."""


def _split_roots(data_cfg: Any, split: str) -> list[str]:
    from detector.config import split_roots

    return split_roots(data_cfg, split)


def detect_format(root: str | os.PathLike[str], split: str) -> str:
    """``voc``, ``coco`` or ``yolo`` from the folder layout (see the module docstring), else an error."""
    root = Path(root)
    if split.lower().endswith(".json"):
        return "coco"
    if not os.path.isdir(root):
        raise DataNotFoundError(f"{root}: dataset folder not found (data.root / data.eval_root)")
    if os.path.isdir(root / "Annotations") and os.path.isdir(root / "ImageSets" / "Main"):
        return "voc"
    if os.path.isdir(root / "images") and (
        os.path.isdir(root / "images" / split) or os.path.isdir(root / "labels") or find_yolo_yaml(root)
    ):
        return "yolo"
    raise DatasetFormatUnknownError(
        f"{root}: cannot tell the dataset format for split {split!r}: expected VOC (Annotations/ and "
        "ImageSets/Main/), COCO (a split naming its .json annotation file, e.g. "
        "data.train_split=annotations/train.json) or YOLO (images/<split>/ with labels/ or data.yaml); "
        "set data.format=voc|coco|yolo"
    )


def _format_of(data_cfg: Any, root: str, split: str) -> str:
    fmt = getattr(data_cfg, "format", None)
    if fmt is None:
        return detect_format(root, split)
    if fmt not in FORMATS:
        raise DataFormatError(f"data.format = {fmt!r}: expected one of {', '.join(FORMATS)} (null: detect)")
    return fmt


def dataset_class_names(data_cfg: Any, split: str | None = None) -> list[str]:
    """The class list of a DataConfig: ``data.classes`` when given, else the names the dataset gives
    (of ``split``, default the training split)."""
    if list(data_cfg.classes):
        return list(data_cfg.classes)
    split = split or data_cfg.train_split
    root = _split_roots(data_cfg, split)[0]
    fmt = _format_of(data_cfg, root, split)
    if fmt == "coco":
        return coco_class_names(Path(root) / split)
    if fmt == "yolo":
        names = read_yolo_names(root)
        if names is None:
            raise DataFormatError(
                f"{root}: no data.yaml with names: to name the YOLO classes; add one or set data.classes"
            )
        return names
    raise DataFormatError(
        f"data.classes is empty: VOC data ({root}) needs its class names listed in order, "
        "e.g. data.classes=[cat,dog]"
    )


def build_dataset(
    data_cfg: Any,
    split: str,
    transforms: Transforms | None = None,
    classes: Sequence[str] | None = None,
) -> RecordConcatDataset:
    """The dataset of one split over every root of ``split`` (``split_roots``), read with ``data.format``'s
    reader (or the detected one). ``classes`` defaults to :func:`dataset_class_names`. ``records`` and
    ``class_names`` exist on the result, as on every dataset here."""
    names = list(classes) if classes is not None else dataset_class_names(data_cfg)
    datasets = []
    for root in _split_roots(data_cfg, split):
        reader = _READERS[_format_of(data_cfg, root, split)]
        datasets.append(reader(root, split, names, transforms))
    return RecordConcatDataset(datasets)


def drop_empty(dataset: RecordConcatDataset) -> int:
    """Remove the records without objects from every part of ``dataset`` (``data.skip_empty_train``);
    returns how many were removed."""
    removed = 0
    for part in dataset.datasets:
        kept = [r for r in part.records if len(r.labels)]  # type: ignore[attr-defined]
        removed += len(part.records) - len(kept)  # type: ignore[attr-defined]
        part.records = kept  # type: ignore[attr-defined]
    dataset.cumulative_sizes = dataset.cumsum(dataset.datasets)
    return removed
