"""Map coordinates for detections on a georeferenced GeoTIFF: pixel boxes -> GeoJSON polygons in its CRS.

Pixel convention: boxes are xyxy in 0-based continuous pixel coordinates, integers on pixel corners: (0, 0)
is the outer (top-left) corner of the top-left pixel and pixel (col, row) covers [col, col + 1] x [row,
row + 1]. The affine transform maps those corner coordinates to map coordinates (GDAL's and rasterio's
convention: for a PixelIsArea file the tie point is that outer corner; for PixelIsPoint the tie point is the
pixel centre and the transform is shifted by half a pixel).

The GeoJSON is written with rasterio (`pip install 'focaldet[geo]'`), which reads every way a GeoTIFF can
state its CRS and transform. Without it, `geotiff_tags_transform` still reads the plain tie point / pixel
scale tags (33922 / 33550) with PIL: enough to tell that a file is georeferenced and say how to get map
coordinates, and to check the mapping in tests.
"""

from __future__ import annotations

import importlib.util
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "GEO_HINT",
    "GEOTIFF_SUFFIXES",
    "GeoReference",
    "GeoUnavailableError",
    "box_polygons",
    "detections_geojson",
    "geotiff_tags_transform",
    "is_georeferenced",
    "read_georeference",
    "rasterio_available",
    "write_geojson",
    "write_image_geojson",
]

GEO_HINT = "georeferenced GeoTIFF input: for map coordinates (<stem>.geojson): pip install 'focaldet[geo]'"
GEOTIFF_SUFFIXES = (".tif", ".tiff")

_TAG_PIXEL_SCALE, _TAG_TIEPOINT, _TAG_TRANSFORMATION, _TAG_GEOKEYS = 33550, 33922, 34264, 34735
_KEY_RASTER_TYPE, _KEY_GEOGRAPHIC, _KEY_PROJECTED = 1025, 2048, 3072
_PIXEL_IS_POINT = 2


class GeoUnavailableError(ImportError):
    """The input is georeferenced but rasterio (the geo extra) is missing; the message says how to get it."""


@dataclass(frozen=True)
class GeoReference:
    """An image's CRS name (e.g. "EPSG:32617") and affine (a, b, c, d, e, f): x = a*col + b*row + c,
    y = d*col + e*row + f, for pixel-corner coordinates (col, row)."""

    crs: str | None
    transform: tuple[float, float, float, float, float, float]


def rasterio_available() -> bool:
    """Whether the optional geo extra (rasterio) is installed."""
    return importlib.util.find_spec("rasterio") is not None


def _geokeys(tags: Any) -> dict[int, int]:
    """GeoKeyDirectory (tag 34735) short values by key id (keys stored in other tags are left out)."""
    raw = tags.get(_TAG_GEOKEYS)
    if not raw or len(raw) < 4:
        return {}
    keys = {}
    for i in range(int(raw[3])):
        key, location, _count, value = raw[4 + 4 * i : 8 + 4 * i]
        if location == 0:
            keys[int(key)] = int(value)
    return keys


def geotiff_tags_transform(path: str | os.PathLike[str]) -> GeoReference | None:
    """GeoReference from the GeoTIFF tags read with PIL (no rasterio): ModelTransformation (34264), or one tie
    point (33922) with the pixel scale (33550); the CRS from the EPSG code in the GeoKey directory when it
    names one. None when the file is not a TIFF or holds no such tags (a model-space tie point grid is not
    supported here)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            tags = dict(getattr(img, "tag_v2", {}) or {})
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    keys = _geokeys(tags)
    epsg = keys.get(_KEY_PROJECTED) or keys.get(_KEY_GEOGRAPHIC)
    crs = f"EPSG:{epsg}" if epsg and epsg != 32767 else None  # 32767: user-defined, not an EPSG code
    if _TAG_TRANSFORMATION in tags and len(tags[_TAG_TRANSFORMATION]) >= 8:
        m = [float(v) for v in tags[_TAG_TRANSFORMATION]]
        transform = (m[0], m[1], m[3], m[4], m[5], m[7])
    elif _TAG_TIEPOINT in tags and _TAG_PIXEL_SCALE in tags:
        tie = [float(v) for v in tags[_TAG_TIEPOINT]]
        scale = [float(v) for v in tags[_TAG_PIXEL_SCALE]]
        if len(tie) != 6 or len(scale) < 2:
            return None
        i, j, _k, x, y, _z = tie
        sx, sy = scale[0], scale[1]
        # Tie point raster (i, j) <-> model (x, y); rows go down while y goes up (north-up image).
        transform = (sx, 0.0, x - i * sx, 0.0, -sy, y + j * sy)
    else:
        return None
    if keys.get(_KEY_RASTER_TYPE) == _PIXEL_IS_POINT:  # tie at the pixel centre: move it to the corner
        a, b, c, d, e, f = transform
        transform = (a, b, c - 0.5 * (a + b), d, e, f - 0.5 * (d + e))
    return GeoReference(crs, transform)


def is_georeferenced(path: str | os.PathLike[str]) -> bool:
    """A TIFF whose tags place it on a map (checked with PIL, so it works without rasterio)."""
    return Path(path).suffix.lower() in GEOTIFF_SUFFIXES and geotiff_tags_transform(path) is not None


def read_georeference(path: str | os.PathLike[str]) -> GeoReference | None:
    """GeoReference of a GeoTIFF read with rasterio; None for a file without a CRS and transform.

    Raises ImportError with the install line when rasterio is missing.
    """
    if not rasterio_available():
        raise GeoUnavailableError(GEO_HINT)
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        with warnings.catch_warnings():  # a plain TIFF warns NotGeoreferencedWarning: answered by None below
            warnings.simplefilter("ignore")
            with rasterio.open(path) as ds:
                crs, affine = ds.crs, ds.transform
    except RasterioIOError:
        return None
    if crs is None or affine.is_identity:
        return None
    name = crs.to_string() if crs.to_epsg() is None else f"EPSG:{crs.to_epsg()}"
    return GeoReference(name, (affine.a, affine.b, affine.c, affine.d, affine.e, affine.f))


def box_polygons(boxes: np.ndarray, transform: Sequence[float]) -> np.ndarray:
    """Closed rings [N, 5, 2] of map coordinates for pixel xyxy boxes, counter-clockwise (RFC 7946)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    a, b, c, d, e, f = (float(v) for v in transform)
    x1, y1, x2, y2 = boxes.T
    cols = np.stack([x1, x2, x2, x1, x1], axis=1)  # top-left, top-right, bottom-right, bottom-left, close
    rows = np.stack([y1, y1, y2, y2, y1], axis=1)
    ring = np.stack([a * cols + b * rows + c, d * cols + e * rows + f], axis=2)
    # Shoelace sign of the first ring tells the orientation (the same for all: one affine map).
    xs, ys = ring[:1, :, 0], ring[:1, :, 1]
    signed = float(np.sum(xs[:, :-1] * ys[:, 1:] - xs[:, 1:] * ys[:, :-1])) if len(ring) else 1.0
    return ring[:, ::-1] if signed < 0 else ring


def detections_geojson(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    georef: GeoReference,
    image: str | None = None,
) -> dict[str, Any]:
    """A GeoJSON FeatureCollection: one box polygon per detection in the image's CRS (named in "crs"), with
    `label` (class name), `label_id` (1..C), `score` and the pixel box `bbox_px`."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    rings = box_polygons(boxes, georef.transform)
    features = []
    for ring, box, score, label in zip(
        rings, boxes, np.asarray(scores).reshape(-1), np.asarray(labels).reshape(-1), strict=True
    ):
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring.tolist()]},
                "properties": {
                    "label": class_names[int(label) - 1],
                    "label_id": int(label),
                    "score": round(float(score), 5),
                    "bbox_px": [round(float(v), 2) for v in box],
                },
            }
        )
    collection: dict[str, Any] = {"type": "FeatureCollection"}
    if image is not None:
        collection["name"] = image
    if georef.crs is not None:
        collection["crs"] = {"type": "name", "properties": {"name": georef.crs}}
    collection["features"] = features
    return collection


def write_geojson(path: str | os.PathLike[str], collection: dict[str, Any]) -> Path:
    """Write a FeatureCollection as JSON; returns the path."""
    out = Path(path)
    out.write_text(json.dumps(collection, separators=(",", ":")))  # compact: thousands of crowns per image
    return out


def write_image_geojson(
    image_path: str | os.PathLike[str],
    detections: dict[str, Any],
    class_names: Sequence[str],
    out_path: str | os.PathLike[str],
) -> Path | None:
    """`<stem>.geojson` of pixel detections when `image_path` is a georeferenced GeoTIFF; None for any other
    image. Raises GeoUnavailableError (install hint) for a georeferenced file when rasterio is missing."""
    if Path(image_path).suffix.lower() not in GEOTIFF_SUFFIXES:
        return None
    if not rasterio_available():
        if is_georeferenced(image_path):
            raise GeoUnavailableError(GEO_HINT)
        return None
    georef = read_georeference(image_path)
    if georef is None:
        return None
    arrays = {k: np.asarray(v.numpy() if hasattr(v, "numpy") else v) for k, v in detections.items()}
    collection = detections_geojson(
        arrays["boxes"], arrays["scores"], arrays["labels"], class_names, georef, image=Path(image_path).name
    )
    return write_geojson(out_path, collection)
