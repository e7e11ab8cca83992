"""The bundled real dataset: aerial tree crowns from the ``deepforest==2.1.0`` package, tiled as VOC.

The rule is fixed (issue 2) so results compare across implementations: 400 px tiles at origins
``0, 400, 800, ...`` strictly below ``size - 400`` plus ``size - 400``; boxes in 0-based continuous
coordinates shifted into the tile and clipped to ``[0, 400]``, kept when clipped width and height are >= 2 px
and the clipped area is >= 50% of the original area; train tiles without boxes are dropped, test tiles kept
(``build_trees_dataset(..., keep_empty_train=True)`` keeps the empty train tiles too, as negatives; the
bundled dataset and its published results use the default, False).

Validation (issue 20): the training orthophoto (2299 x 2472) is split by columns. Its rightmost 400 px
(x >= 1899, one column of 7 tiles) is the ``val`` split; ``train`` is tiled from x < 1771 only. The 128 px gap
between them is wider than the largest crown (109 px), so no crown is seen, even in part, by both splits
(`build_trees_dataset` checks it). Recipes and checkpoints are chosen on ``val``; ``test`` (three other sites)
is only reported.

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
    "SPLIT_COLUMNS",
    "SPLIT_SOURCES",
    "SUMMARY_HEADER",
    "TILE_SIZE",
    "DeepForestNotFoundError",
    "Tile",
    "build_trees_dataset",
    "check_split_gap",
    "find_deepforest_data",
    "make_tiles",
    "split_columns",
    "tile_boxes",
    "tile_origins",
]

TILE_SIZE = 400
MIN_SIDE = 2.0  # px, clipped width and height
MIN_AREA_FRACTION = 0.5  # clipped area / original area
CLASS_NAME = "tree"
TRAIN_SOURCE = "2019_YELL_2_528000_4978000_image_crop2"
SPLIT_SOURCES: dict[str, tuple[str, ...]] = {
    "train": (TRAIN_SOURCE,),
    "val": (TRAIN_SOURCE,),
    "test": ("2019_YELL_2_541000_4977000_image_crop", "OSBS_029", "SOAP_061"),
}
# The columns [x0, x1) of its sources a split takes (None: up to the right edge); splits not listed take all.
SPLIT_COLUMNS: dict[str, tuple[int, int | None]] = {"train": (0, 1771), "val": (1899, None)}
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


_LUMA = np.array([0.299, 0.587, 0.114])  # Rec. 601 weights of R, G, B


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


def tile_boxes(
    boxes: np.ndarray, ox: int, oy: int, tile: int = TILE_SIZE, height: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Shift 0-based xyxy ``boxes`` into the window at (ox, oy) of width ``tile`` (and ``height``, default
    ``tile``), clip to it and apply the keep rule. Returns ``(clipped boxes [N, 4], keep mask [N])``.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    shifted = boxes - np.array([ox, oy, ox, oy], dtype=np.float64)
    bottom = float(tile if height is None else height)
    clipped = np.clip(shifted, 0.0, np.array([tile, bottom, tile, bottom], dtype=np.float64))
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


def split_columns(split: str, width: int) -> tuple[int, int]:
    """The columns ``[x0, x1)`` of a source ``width`` px wide that ``split`` takes (`SPLIT_COLUMNS`)."""
    x0, x1 = SPLIT_COLUMNS.get(split, (0, None))
    x1 = width if x1 is None else x1
    if not 0 <= x0 < x1 <= width:
        raise ValueError(f"split {split!r}: columns [{x0}, {x1}) do not fit a source {width} px wide")
    return x0, x1


def make_tiles(source_dir: Path, name: str, split: str, keep_empty_train: bool = False) -> list[Tile]:
    """Cut the split's columns of one source image into tiles by the rule (row-major: y origin, then x origin;
    origins counted from the columns' left edge); empty train tiles are dropped unless ``keep_empty_train``."""
    pixels, boxes = _load_source(source_dir, name)
    height, width = pixels.shape[:2]
    x0, x1 = split_columns(split, width)
    tiles = []
    for oy in tile_origins(height):
        for ox in (x0 + o for o in tile_origins(x1 - x0)):
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
    """Write the tree VOC folder (Annotations/, JPEGImages/*.png, ImageSets/Main/{train,val,test}.txt).

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
    check_split_gap(src)
    written = 0
    for split, sources in SPLIT_SOURCES.items():
        ids: list[str] = []
        n_boxes = 0
        sides: list[np.ndarray] = []
        lumas: list[float] = []
        for name in sources:
            for tile in make_tiles(src, name, split, keep_empty_train):
                ids.append(tile.tile_id)
                n_boxes += len(tile.boxes)
                sides.append(
                    np.sqrt((tile.boxes[:, 2] - tile.boxes[:, 0]) * (tile.boxes[:, 3] - tile.boxes[:, 1]))
                )
                lumas.append(float((tile.pixels[..., :3].astype(np.float64) @ _LUMA).mean()))
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
        summary["splits"][split] = {
            "sources": list(sources),
            "tiles": len(ids),
            "boxes": n_boxes,
            "crown_px": float(np.median(np.concatenate(sides))) if n_boxes else 0.0,
            "luma": float(np.mean(lumas)) if lumas else 0.0,
        }
    summary["files_written"] = int(written)
    return summary


def check_split_gap(source_dir: Path) -> None:
    """Raise ValueError when a crown of a source shared by column-split splits reaches into more than one."""
    shared: dict[str, list[str]] = {}
    for split, sources in SPLIT_SOURCES.items():
        for name in sources:
            shared.setdefault(name, []).append(split)
    for name, splits in shared.items():
        if len(splits) < 2:
            continue
        pixels, boxes = _load_source(source_dir, name)
        width = pixels.shape[1]
        reach = np.zeros(len(boxes), dtype=np.int64)
        for split in splits:
            x0, x1 = split_columns(split, width)
            reach += (boxes[:, 2] > x0) & (boxes[:, 0] < x1)
        if (reach > 1).any():
            box = boxes[int(np.argmax(reach > 1))].tolist()
            raise ValueError(
                f"{source_dir / name}.xml: the crown at {box} reaches into more than one of the splits "
                f"{splits}; their columns (SPLIT_COLUMNS) need a wider gap"
            )


SUMMARY_HEADER = ("split", "sources", "tiles", "boxes", "crowns/tile", "median crown px", "mean luma")


def summary_rows(summary: dict[str, Any]) -> list[tuple[Any, ...]]:
    """One row per split of a `build_trees_dataset` summary (SUMMARY_HEADER), then the total. Density, crown
    size (square root of the box area) and brightness (Rec. 601 luma, 0-255) show how far test is from train."""
    rows: list[tuple[Any, ...]] = []
    for split, i in summary["splits"].items():
        per_tile = i["boxes"] / i["tiles"] if i["tiles"] else 0.0
        rows.append(
            (
                split,
                len(i["sources"]),
                i["tiles"],
                i["boxes"],
                f"{per_tile:.1f}",
                f"{i['crown_px']:.1f}",
                f"{i['luma']:.0f}",
            )
        )
    rows.append(("total", *(sum(r[k] for r in rows) for k in (1, 2, 3)), "", "", ""))
    return rows
