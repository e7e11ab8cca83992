"""The tree source orthophotos whole, as a VOC folder: the full-size images that tiled evaluation runs on.

Same sources and splits as the tiled tree dataset (`detector.data.trees.SPLIT_SOURCES`: the 2299 x 2472
training source, cut by columns into train (x < 1771) and val (x >= 1899), the 1249 x 1035 test source and two
400 x 400 test images), each crown kept by the tiles' rule as one "tree" box in the image's pixels, so
`tools/eval.py data.root=<this folder>` compares with the per-tile split.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from detector.data.trees import (
    _DATABASE,
    CLASS_NAME,
    SPLIT_SOURCES,
    _load_source,
    _png_bytes,
    find_deepforest_data,
    split_columns,
    tile_boxes,
)
from detector.data.voc import VOCObject, atomic_write_bytes, write_voc_annotation

__all__ = ["build_tree_sources"]


def build_tree_sources(
    out_dir: str | os.PathLike[str], source_dir: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Write Annotations/, JPEGImages/ and ImageSets/Main/{train,val,test}.txt with one image per source (the
    split's columns of it, named ``<source>_x<x0>_<x1>`` when that is not the whole width).

    Idempotent like `build_trees_dataset`; returns per split the sources, image sizes and box counts.
    """
    out = Path(out_dir)
    src = Path(source_dir) if source_dir is not None else find_deepforest_data()
    summary: dict[str, Any] = {"out_dir": str(out), "source_dir": str(src), "splits": {}}
    written = 0
    for split, sources in SPLIT_SOURCES.items():
        sizes, n_boxes, ids = [], 0, []
        for name in sources:
            pixels, boxes = _load_source(src, name)
            height, full_width = pixels.shape[:2]
            x0, x1 = split_columns(split, full_width)
            image_id = name if (x0, x1) == (0, full_width) else f"{name}_x{x0:04d}_{x1:04d}"
            pixels, width = pixels[:, x0:x1], x1 - x0
            clipped, keep = tile_boxes(boxes, x0, 0, width, height)
            boxes = clipped[keep]
            ids.append(image_id)
            sizes.append(f"{width}x{height}")
            n_boxes += len(boxes)
            written += atomic_write_bytes(out / "JPEGImages" / f"{image_id}.png", _png_bytes(pixels))
            written += write_voc_annotation(
                out / "Annotations" / f"{image_id}.xml",
                filename=f"{image_id}.png",
                size=(height, width),
                objects=[VOCObject(CLASS_NAME, tuple(float(v) for v in box)) for box in boxes],
                folder="trees_whole",
                database=_DATABASE.replace("tiled by", "whole images, written by"),
            )
        listing = "".join(f"{i}\n" for i in ids).encode("utf-8")
        written += atomic_write_bytes(out / "ImageSets" / "Main" / f"{split}.txt", listing)
        summary["splits"][split] = {"sources": list(sources), "sizes": sizes, "boxes": n_boxes}
    summary["files_written"] = int(written)
    return summary
