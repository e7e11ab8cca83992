"""Writers for the three formats from records (VOC <-> COCO <-> YOLO), and a whole-dataset converter.

Rounding rule: VOC coordinates are written exactly (whole numbers as integers, others as the shortest
round-trip decimal of the stored float32 value, 1-based ``xmin + 1, ymin + 1, xmax, ymax``); COCO ``bbox``
values ``[x, y, w, h]`` are rounded to 1/1000 px (3 decimals); YOLO's normalized ``cx cy w h`` to 10
decimals (trailing zeros dropped), within 0.5e-10 of the image side (5e-7 px on a 10,000 px side). So
whole-pixel boxes come back exactly from all three once read into float32 (the record dtype), and others
within 0.0005 px.
Ignore flags: VOC ``difficult``, COCO ``iscrowd``; YOLO has none, so ignored boxes are left out of YOLO labels
(as Ultralytics' COCO converter leaves crowd boxes out) and counted in the summary. Images are copied (or
linked); their file names keep their suffix, and the ids of the written dataset are the image file stems.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from detector.data.images import read_image_size
from detector.data.records import BoxFixReport, Record, clip_record_boxes
from detector.data.voc import VOCObject, atomic_write_bytes, write_voc_annotation

__all__ = [
    "COCO_DECIMALS",
    "TARGETS",
    "YOLO_DECIMALS",
    "convert_dataset",
    "output_split_name",
    "write_coco",
    "write_records",
    "write_voc",
    "write_yolo",
]

COCO_DECIMALS = 3
YOLO_DECIMALS = 10
TARGETS: tuple[str, ...] = ("voc", "coco", "yolo")
_LINK_MODES = ("copy", "symlink", "hardlink")


def output_split_name(split: str) -> str:
    """The split name a written dataset uses: ``annotations/instances_train.json`` -> ``train``."""
    stem = PurePosixPath(split.replace(os.sep, "/")).name
    stem = stem[: -len(".json")] if stem.lower().endswith(".json") else stem
    return stem.removeprefix("instances_") or "split"


def _sized(rec: Record, report: BoxFixReport) -> tuple[tuple[int, int], np.ndarray, np.ndarray, np.ndarray]:
    """(size, boxes, labels, ignore) with the size known: records without one read it from the image header
    and are clipped to it, as the dataset would when reading the image."""
    if rec.size is not None:
        return rec.size, rec.boxes.astype(np.float64), rec.labels, rec.difficult
    size = read_image_size(rec.image_path)
    boxes, labels, ignore = clip_record_boxes(rec.where, rec.boxes, rec.labels, rec.difficult, size, report)
    return size, boxes.astype(np.float64), labels, ignore


def _unique_stems(records: Sequence[Record], taken: dict[str, Path] | None) -> list[str]:
    """One output file stem per record: the image's stem, suffixed ``_2``, ``_3``... when another image took
    it. ``taken`` (stem -> source image) is shared by the splits of one conversion, so an image in two splits
    keeps one name and two images never share one."""
    taken = {} if taken is None else taken
    stems = []
    for rec in records:
        base, n = rec.image_path.stem, 1
        while True:
            stem = base if n == 1 else f"{base}_{n}"
            owner = taken.get(stem)
            if owner is None or owner == rec.image_path:
                break
            n += 1
        taken[stem] = rec.image_path
        stems.append(stem)
    return stems


def _same_file(src: Path, dst: Path) -> bool:
    return dst.stat().st_size == src.stat().st_size and dst.read_bytes() == src.read_bytes()


def _place_image(src: Path, dst: Path, mode: str) -> None:
    """Copy (or link) an image; an identical copy already there is left alone (re-runs rewrite nothing)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        if mode == "copy" and dst.is_file() and not dst.is_symlink() and _same_file(src, dst):
            return
        dst.unlink()
    if mode == "symlink":
        dst.symlink_to(src.resolve())
    elif mode == "hardlink":
        os.link(src, dst)
    else:
        shutil.copyfile(src, dst)


def _check_mode(images: str) -> None:
    if images not in _LINK_MODES:
        raise ValueError(f"images = {images!r}: expected one of {', '.join(_LINK_MODES)}")


def write_voc(
    records: Sequence[Record],
    class_names: Sequence[str],
    root: str | os.PathLike[str],
    split: str,
    images: str = "copy",
    taken: dict[str, Path] | None = None,
) -> dict[str, int]:
    """Write records as one split of a VOC folder: JPEGImages/, Annotations/, ImageSets/Main/<split>.txt."""
    _check_mode(images)
    root = Path(root)
    report = BoxFixReport()
    stems = _unique_stems(records, taken)
    n_boxes = 0
    for rec, stem in zip(records, stems, strict=True):
        size, boxes, labels, ignore = _sized(rec, report)
        name = f"{stem}{rec.image_path.suffix}"
        _place_image(rec.image_path, root / "JPEGImages" / name, images)
        objects = [
            VOCObject(class_names[int(lab) - 1], tuple(float(np.float32(v)) for v in box), difficult=bool(ig))
            for box, lab, ig in zip(boxes, labels, ignore, strict=True)
        ]
        n_boxes += len(objects)
        write_voc_annotation(root / "Annotations" / f"{stem}.xml", filename=name, size=size, objects=objects)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(
        root / "ImageSets" / "Main" / f"{split}.txt", "".join(f"{s}\n" for s in stems).encode()
    )
    return {
        "images": len(records),
        "boxes": n_boxes,
        "ignored_left_out": 0,
        "clipped": report.clipped,
        "dropped": report.dropped,
    }


def _round(value: float, decimals: int) -> float:
    out = round(float(value), decimals)
    return 0.0 if out == 0 else out  # no "-0.0"


def write_coco(
    records: Sequence[Record],
    class_names: Sequence[str],
    root: str | os.PathLike[str],
    split: str,
    images: str = "copy",
    taken: dict[str, Path] | None = None,
) -> dict[str, int]:
    """Write records as ``root/annotations/<split>.json`` (category ids 1..C), images in ``root/images/``."""
    _check_mode(images)
    root = Path(root)
    report = BoxFixReport()
    out_images, out_anns = [], []
    for image_id, (rec, stem) in enumerate(zip(records, _unique_stems(records, taken), strict=True), start=1):
        (height, width), boxes, labels, ignore = _sized(rec, report)
        name = f"{stem}{rec.image_path.suffix}"
        _place_image(rec.image_path, root / "images" / name, images)
        out_images.append({"id": image_id, "file_name": name, "width": int(width), "height": int(height)})
        for (x1, y1, x2, y2), lab, ig in zip(boxes, labels, ignore, strict=True):
            w, h = _round(x2 - x1, COCO_DECIMALS), _round(y2 - y1, COCO_DECIMALS)
            out_anns.append(
                {
                    "id": len(out_anns) + 1,
                    "image_id": image_id,
                    "category_id": int(lab),
                    "bbox": [_round(x1, COCO_DECIMALS), _round(y1, COCO_DECIMALS), w, h],
                    "area": _round(w * h, COCO_DECIMALS),
                    "iscrowd": int(bool(ig)),
                }
            )
    data = {
        "info": {"description": "written by focaldet (detector.data.convert)"},
        "images": out_images,
        "annotations": out_anns,
        "categories": [{"id": i, "name": n, "supercategory": "none"} for i, n in enumerate(class_names, 1)],
    }
    text = _coco_json_text(data)
    atomic_write_bytes(root / "annotations" / f"{split}.json", text.encode("utf-8"))
    return {
        "images": len(records),
        "boxes": len(out_anns),
        "ignored_left_out": 0,
        "clipped": report.clipped,
        "dropped": report.dropped,
    }


def _yolo_number(value: float) -> str:
    """``value`` rounded to YOLO_DECIMALS, without trailing zeros: 0.5 -> "0.5", 1.0 -> "1"."""
    text = f"{_round(value, YOLO_DECIMALS):.{YOLO_DECIMALS}f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def _coco_json_text(data: dict[str, Any]) -> str:
    """The JSON with one image, annotation or category per line: readable and diffable, still compact."""
    parts = []
    for key, value in data.items():
        if isinstance(value, list):
            rows = ",\n".join("  " + json.dumps(v, ensure_ascii=False) for v in value)
            parts.append(f"{json.dumps(key)}: [\n{rows}\n ]" if value else f"{json.dumps(key)}: []")
        else:
            parts.append(f"{json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}")
    return "{\n " + ",\n ".join(parts) + "\n}\n"


def write_yolo(
    records: Sequence[Record],
    class_names: Sequence[str],
    root: str | os.PathLike[str],
    split: str,
    images: str = "copy",
    taken: dict[str, Path] | None = None,
) -> dict[str, int]:
    """Write records as ``root/images/<split>/``, ``root/labels/<split>/<stem>.txt`` and ``root/data.yaml``
    (``names:`` list). Ignored (difficult / crowd) boxes are left out: YOLO labels cannot mark them."""
    _check_mode(images)
    root = Path(root)
    report = BoxFixReport()
    n_boxes = n_ignored = 0
    for rec, stem in zip(records, _unique_stems(records, taken), strict=True):
        (height, width), boxes, labels, ignore = _sized(rec, report)
        _place_image(rec.image_path, root / "images" / split / f"{stem}{rec.image_path.suffix}", images)
        lines = []
        for (x1, y1, x2, y2), lab, ig in zip(boxes, labels, ignore, strict=True):
            if ig:
                n_ignored += 1
                continue
            values = ((x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height)
            lines.append(f"{int(lab) - 1} " + " ".join(_yolo_number(v) for v in values))
        n_boxes += len(lines)
        text = "".join(f"{line}\n" for line in lines)
        atomic_write_bytes(root / "labels" / split / f"{stem}.txt", text.encode("utf-8"))
    names = "".join(f"  - {json.dumps(n, ensure_ascii=False)}\n" for n in class_names)
    yaml_text = (
        f"# written by focaldet (detector.data.convert)\npath: .\nnc: {len(class_names)}\nnames:\n{names}"
    )
    _merge_yolo_yaml(root / "data.yaml", yaml_text, split)
    return {
        "images": len(records),
        "boxes": n_boxes,
        "ignored_left_out": n_ignored,
        "clipped": report.clipped,
        "dropped": report.dropped,
    }


def _merge_yolo_yaml(path: Path, header: str, split: str) -> None:
    """data.yaml with the names and one ``<split>: images/<split>`` line per split written so far."""
    splits: list[str] = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition(":")
            if value.strip().startswith("images/") and key.strip() and not key.startswith(" "):
                splits.append(key.strip())
    if split not in splits:
        splits.append(split)
    text = header + "".join(f"{s}: images/{s}\n" for s in splits)
    atomic_write_bytes(path, text.encode("utf-8"))


_WRITERS = {"voc": write_voc, "coco": write_coco, "yolo": write_yolo}


def write_records(
    to: str,
    records: Sequence[Record],
    class_names: Sequence[str],
    root: str | os.PathLike[str],
    split: str,
    images: str = "copy",
    taken: dict[str, Path] | None = None,
) -> dict[str, int]:
    """Write one split in format ``to`` (voc | coco | yolo); returns counts (images, boxes, ...)."""
    if to not in _WRITERS:
        raise ValueError(f"unknown target format {to!r}: expected one of {', '.join(TARGETS)}")
    return _WRITERS[to](records, class_names, root, split, images, taken)


def convert_dataset(
    data_cfg: Any,
    dst_root: str | os.PathLike[str],
    to: str,
    splits: Sequence[str] | None = None,
    images: str = "copy",
) -> dict[str, Any]:
    """Convert the splits of a DataConfig's dataset (default: its train, val and test splits) to ``to``.

    Returns a summary: the format read, the class names, and per source split the split name written (use it
    as ``data.*_split``: for COCO output ``annotations/<name>.json``) and the counts.
    """
    from detector.data.formats import _format_of, build_dataset, dataset_class_names

    if to not in TARGETS:
        raise ValueError(f"unknown target format {to!r}: expected one of {', '.join(TARGETS)}")
    dst = Path(dst_root)
    wanted = list(dict.fromkeys(splits or (data_cfg.train_split, data_cfg.val_split, data_cfg.test_split)))
    if not wanted:
        raise ValueError("no splits to convert")
    names = dataset_class_names(data_cfg, wanted[0])
    summary: dict[str, Any] = {"to": to, "dst": str(dst), "class_names": names, "splits": {}}
    taken: dict[str, Path] = {}
    from detector.config import split_roots

    for split in wanted:
        roots = split_roots(data_cfg, split)
        summary.setdefault("from", _format_of(data_cfg, roots[0], split))
        dataset = build_dataset(data_cfg, split, None, classes=names)
        for root in roots:
            if Path(root).resolve() == dst.resolve():
                raise ValueError(f"{dst}: the destination is the source folder {root}; choose another")
        out_split = output_split_name(split)
        counts = write_records(to, dataset.records, names, dst, out_split, images, taken)
        written = f"annotations/{out_split}.json" if to == "coco" else out_split
        summary["splits"][split] = {"written_as": written, **counts}
    return summary
