"""The bundled real dataset: aerial tree crowns from the ``deepforest==2.1.0`` package, tiled as VOC.

The rule is fixed (issue 2) so results compare across implementations: 400 px tiles at origins
``0, 400, 800, ...`` strictly below ``size - 400`` plus ``size - 400``; boxes in 0-based continuous
coordinates shifted into the tile and clipped to ``[0, 400]``, kept when clipped width and height are >= 2 px
and the clipped area is >= 50% of the original area; train tiles without boxes are dropped, test tiles kept
(``build_trees_dataset(..., keep_empty_train=True)`` keeps the empty train tiles too, as negatives; the
bundled dataset and its published results use the default, False).

Coordinates in the written XML: the source files hold whole pixels, and tile origins and clip bounds are whole
pixels, so every written value is an integer and the 1-based round trip (``xmin + 1, ymin + 1, xmax, ymax``)
is exact; no rounding is involved (a fractional value would be written exactly, never rounded).
deepforest is located with ``importlib.util.find_spec`` and never imported (its imports are heavy).
"""

from __future__ import annotations

import importlib.util
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from detector.data.images import read_image
from detector.data.voc import VOCObject, atomic_write_bytes, parse_voc_xml, write_voc_annotation

__all__ = [
    "CLASS_NAME",
    "DEEPFOREST_PIP",
    "MIN_AREA_FRACTION",
    "MIN_SIDE",
    "SPLIT_SOURCES",
    "TILE_SIZE",
    "DeepForestNotFoundError",
    "Tile",
    "build_trees_dataset",
    "find_deepforest_data",
    "make_tiles",
    "tile_boxes",
    "tile_origins",
]

TILE_SIZE = 400
MIN_SIDE = 2.0  # px, clipped width and height
MIN_AREA_FRACTION = 0.5  # clipped area / original area
CLASS_NAME = "tree"
SPLIT_SOURCES: dict[str, tuple[str, ...]] = {
    "train": ("2019_YELL_2_528000_4978000_image_crop2",),
    "test": ("2019_YELL_2_541000_4977000_image_crop", "OSBS_029", "SOAP_061"),
}
DEEPFOREST_PIP = "pip install --no-deps deepforest==2.1.0"
_DATABASE = "deepforest 2.1.0 package data (NEON aerial RGB), tiled by focaldet"


class DeepForestNotFoundError(FileNotFoundError):
    """The deepforest package (source of the tree images) is not installed or lacks its data files."""


@dataclass(frozen=True)
class Tile:
    """One tile: its id, origin, pixels (uint8 [400, 400, 3]) and kept boxes (float64 [K, 4], tile frame)."""

    tile_id: str
    source: str
    origin: tuple[int, int]  # (ox, oy)
    pixels: np.ndarray
    boxes: np.ndarray
    truncated: np.ndarray  # bool [K]: the box was cut by the tile border


def find_deepforest_data() -> Path:
    """Return deepforest's ``data/`` folder without importing the package."""
    spec = importlib.util.find_spec("deepforest")
    if spec is None or spec.origin is None:
        raise DeepForestNotFoundError(
            "the tree dataset is built from the deepforest package's data, and deepforest is not installed; "
            f"run: {DEEPFOREST_PIP}"
        )
    data = Path(spec.origin).parent / "data"
    if not data.is_dir():
        raise DeepForestNotFoundError(
            f"{data}: deepforest is installed but has no data folder; run: {DEEPFOREST_PIP}"
        )
    return data


def tile_origins(size: int, tile: int = TILE_SIZE) -> list[int]:
    """Origins ``0, tile, 2*tile, ...`` strictly below ``size - tile``, plus ``size - tile`` (border tile)."""
    if size < tile:
        raise ValueError(f"an axis of {size} px is smaller than the {tile} px tile")
    return [*range(0, size - tile, tile), size - tile]


def tile_boxes(boxes: np.ndarray, ox: int, oy: int, tile: int = TILE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Shift 0-based xyxy ``boxes`` into the tile at (ox, oy), clip to ``[0, tile]`` and apply the keep rule.

    Returns ``(clipped boxes [N, 4], keep mask [N])``.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    shifted = boxes - np.array([ox, oy, ox, oy], dtype=np.float64)
    clipped = np.clip(shifted, 0.0, float(tile))
    width, height = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    area = np.clip(width, 0, None) * np.clip(height, 0, None)
    orig_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = (width >= MIN_SIDE) & (height >= MIN_SIDE) & (area >= MIN_AREA_FRACTION * orig_area)
    return clipped, keep


def _load_source(source_dir: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    xml_path, png_path = source_dir / f"{name}.xml", source_dir / f"{name}.png"
    for path in (xml_path, png_path):
        if not path.is_file():
            raise DeepForestNotFoundError(
                f"{path}: tree source file not found (expected deepforest 2.1.0 data; run: {DEEPFOREST_PIP})"
            )
    ann = parse_voc_xml(xml_path)  # every object is a tree, whatever its label (Tree/Alive/Dead)
    pixels = read_image(png_path).permute(1, 2, 0).numpy()
    if ann.size is not None and ann.size != pixels.shape[:2]:
        raise ValueError(
            f"{xml_path}: <size> {ann.size[1]}x{ann.size[0]} does not match {png_path} "
            f"({pixels.shape[1]}x{pixels.shape[0]})"
        )
    return pixels, ann.boxes


def make_tiles(source_dir: Path, name: str, split: str, keep_empty_train: bool = False) -> list[Tile]:
    """Cut one source image into tiles by the rule (row-major: y origin, then x origin); empty train tiles
    are dropped unless ``keep_empty_train``."""
    pixels, boxes = _load_source(source_dir, name)
    height, width = pixels.shape[:2]
    tiles = []
    for oy in tile_origins(height):
        for ox in tile_origins(width):
            clipped, keep = tile_boxes(boxes, ox, oy)
            kept = clipped[keep]
            if split == "train" and len(kept) == 0 and not keep_empty_train:
                continue
            truncated = np.any(kept != (boxes[keep] - [ox, oy, ox, oy]), axis=1)
            tiles.append(
                Tile(
                    tile_id=f"{name}_x{ox:04d}_y{oy:04d}",
                    source=name,
                    origin=(ox, oy),
                    pixels=np.ascontiguousarray(pixels[oy : oy + TILE_SIZE, ox : ox + TILE_SIZE]),
                    boxes=kept,
                    truncated=truncated,
                )
            )
    return tiles


def _png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def build_trees_dataset(
    out_dir: str | os.PathLike[str],
    source_dir: str | os.PathLike[str] | None = None,
    keep_empty_train: bool = False,
) -> dict[str, Any]:
    """Write the tree VOC folder (Annotations/, JPEGImages/*.png, ImageSets/Main/{train,test}.txt).

    Idempotent: a re-run rewrites nothing and gives byte-identical files. ``source_dir`` defaults to the
    installed deepforest's ``data/``. Returns a summary: per split the sources, tile count and box count.
    """
    out = Path(out_dir)
    src = Path(source_dir) if source_dir is not None else find_deepforest_data()
    summary: dict[str, Any] = {
        "out_dir": str(out),
        "source_dir": str(src),
        "class_names": (CLASS_NAME,),
        "splits": {},
    }
    written = 0
    for split, sources in SPLIT_SOURCES.items():
        ids: list[str] = []
        n_boxes = 0
        for name in sources:
            for tile in make_tiles(src, name, split, keep_empty_train):
                ids.append(tile.tile_id)
                n_boxes += len(tile.boxes)
                written += atomic_write_bytes(
                    out / "JPEGImages" / f"{tile.tile_id}.png", _png_bytes(tile.pixels)
                )
                objects = [
                    VOCObject(CLASS_NAME, tuple(float(v) for v in box), truncated=bool(trunc))
                    for box, trunc in zip(tile.boxes, tile.truncated, strict=True)
                ]
                written += write_voc_annotation(
                    out / "Annotations" / f"{tile.tile_id}.xml",
                    filename=f"{tile.tile_id}.png",
                    size=(TILE_SIZE, TILE_SIZE),
                    objects=objects,
                    folder="trees",
                    database=_DATABASE,
                )
        written += atomic_write_bytes(
            out / "ImageSets" / "Main" / f"{split}.txt", "".join(f"{i}\n" for i in ids).encode("utf-8")
        )
        summary["splits"][split] = {"sources": list(sources), "tiles": len(ids), "boxes": n_boxes}
    summary["files_written"] = int(written)
    return summary


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, int, int, int]]:
    """(split, sources, tiles, boxes) per split of a `build_trees_dataset` summary, then the total."""
    splits = summary["splits"]
    rows = [(split, len(i["sources"]), i["tiles"], i["boxes"]) for split, i in splits.items()]
    rows.append(("total", *(sum(r[k] for r in rows) for k in (1, 2, 3))))
    return rows
