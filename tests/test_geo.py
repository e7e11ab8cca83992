"""Map coordinates: GeoTIFF georeference (PIL tags, rasterio), box polygons, GeoJSON from tools/infer.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, TiffImagePlugin, TiffTags

from detector.data.trees import DeepForestNotFoundError, find_deepforest_data
from detector.inference import geo

try:
    OSBS = find_deepforest_data() / "OSBS_029.tif"
except DeepForestNotFoundError:  # pragma: no cover - deepforest is a test dependency of the tree data
    OSBS = None
needs_osbs = pytest.mark.skipif(
    OSBS is None or not OSBS.is_file(),
    reason="deepforest's OSBS_029.tif: pip install --no-deps deepforest==2.1.0",
)
needs_rasterio = pytest.mark.skipif(
    not geo.rasterio_available(), reason="rasterio not installed (pip install 'focaldet[geo]')"
)


@needs_osbs
def test_a_detections_corners_land_where_the_tie_point_and_pixel_size_put_them():
    """Read without rasterio: the tie point (tag 33922) is the outer top-left corner of pixel (0, 0) (the file
    is PixelIsArea), so pixel-corner coordinate (x, y) lies at (X0 + 0.1 x, Y0 - 0.1 y)."""
    with Image.open(OSBS) as img:
        tie, scale = img.tag_v2[33922], img.tag_v2[33550]
    assert tie[:2] == (0.0, 0.0) and scale[:2] == (0.1, 0.1)  # UTM 17N, 0.1 m pixels (the facts)
    x0, y0 = tie[3], tie[4]
    assert (x0, y0) == pytest.approx((404211.9, 3285142.9))
    ref = geo.geotiff_tags_transform(OSBS)
    assert ref is not None and ref.crs == "EPSG:32617"
    ring = geo.box_polygons(np.array([[10.0, 20.0, 50.0, 80.0]]), ref.transform)[0]
    corners = {(round(x, 6), round(y, 6)) for x, y in ring[:4]}
    expected = {
        (round(x0 + 0.1 * px, 6), round(y0 - 0.1 * py, 6)) for px in (10.0, 50.0) for py in (20.0, 80.0)
    }
    assert corners == expected
    assert tuple(ring[0]) == tuple(ring[-1])  # closed
    # counter-clockwise (RFC 7946): positive shoelace area, 4 m x 6 m
    area = 0.5 * sum(ring[i, 0] * ring[i + 1, 1] - ring[i + 1, 0] * ring[i, 1] for i in range(4))
    assert area == pytest.approx(24.0)
    # pixel (0, 0)'s outer corner is the tie point; the image's far corner is 40 m east and south of it
    full = geo.box_polygons(np.array([[0.0, 0.0, 400.0, 400.0]]), ref.transform)[0]
    assert full.min(axis=0) == pytest.approx((x0, y0 - 40.0))
    assert full.max(axis=0) == pytest.approx((x0 + 40.0, y0))


@needs_osbs
@needs_rasterio
def test_rasterio_reads_the_same_georeference_and_the_geojson_names_the_crs():
    ref = geo.read_georeference(OSBS)
    assert ref == geo.GeoReference("EPSG:32617", pytest.approx(geo.geotiff_tags_transform(OSBS).transform))
    fc = geo.detections_geojson(
        np.array([[10.0, 20.0, 50.0, 80.0]]),
        np.array([0.9]),
        np.array([1]),
        ["tree"],
        ref,
        image="OSBS_029.tif",
    )
    assert fc["crs"] == {"type": "name", "properties": {"name": "EPSG:32617"}}
    (feature,) = fc["features"]
    assert feature["properties"] == {
        "label": "tree",
        "label_id": 1,
        "score": 0.9,
        "bbox_px": [10, 20, 50, 80],
    }
    xs = [p[0] for p in feature["geometry"]["coordinates"][0]]
    assert min(xs) == pytest.approx(404211.9 + 1.0) and max(xs) == pytest.approx(404211.9 + 5.0)


def _write_geotiff(path: Path, raster_type: int, tie=(0, 0, 0, 500000.0, 4000000.0, 0), scale=(2.0, 2.0, 0)):
    """A small GeoTIFF written with PIL's tag support: tie point, pixel scale, GeoKeys (EPSG:32633)."""
    ifd = TiffImagePlugin.ImageFileDirectory_v2()
    ifd[33550] = tuple(float(v) for v in scale)
    ifd.tagtype[33550] = TiffTags.DOUBLE
    ifd[33922] = tuple(float(v) for v in tie)
    ifd.tagtype[33922] = TiffTags.DOUBLE
    # GeoKeyDirectory: version 1.1.0, 3 keys: model type projected, raster type, projected CRS 32633
    ifd[34735] = (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, raster_type, 3072, 0, 1, 32633)
    ifd.tagtype[34735] = TiffTags.SHORT
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(path, tiffinfo=ifd)
    return path


@pytest.mark.parametrize(("raster_type", "shift"), [(1, 0.0), (2, 1.0)])  # PixelIsArea, PixelIsPoint
def test_pixel_is_point_moves_the_tie_point_to_the_corner(tmp_path, raster_type, shift):
    path = _write_geotiff(tmp_path / "g.tif", raster_type)
    ref = geo.geotiff_tags_transform(path)
    assert ref.crs == "EPSG:32633"
    assert ref.transform == pytest.approx((2.0, 0.0, 500000.0 - shift, 0.0, -2.0, 4000000.0 + shift))
    if geo.rasterio_available():
        assert geo.read_georeference(path) == geo.GeoReference("EPSG:32633", pytest.approx(ref.transform))


def test_files_without_a_georeference(tmp_path):
    plain = tmp_path / "plain.tif"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(plain)
    png = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png)
    assert geo.geotiff_tags_transform(plain) is None and not geo.is_georeferenced(plain)
    assert not geo.is_georeferenced(png)
    det = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, int)}
    assert geo.write_image_geojson(png, det, ["a"], tmp_path / "x.geojson") is None
    assert geo.write_image_geojson(plain, det, ["a"], tmp_path / "p.geojson") is None
    assert not (tmp_path / "p.geojson").exists()


def test_without_rasterio_a_georeferenced_file_raises_the_install_hint(tmp_path, monkeypatch):
    path = _write_geotiff(tmp_path / "g.tif", 1)
    monkeypatch.setattr(geo, "rasterio_available", lambda: False)
    det = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, int)}
    with pytest.raises(geo.GeoUnavailableError, match=r"pip install 'focaldet\[geo\]'"):
        geo.write_image_geojson(path, det, ["a"], tmp_path / "g.geojson")
    with pytest.raises(geo.GeoUnavailableError):
        geo.read_georeference(path)


# ------------------------------------------------------------------------------------------ tools/infer.py


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from tiny_weights import write_tiny_weights

    return write_tiny_weights(
        tmp_path_factory.mktemp("w") / "tiny.safetensors", ["tree"], "model.score_thresh=0.0"
    )


def _infer(argv):
    from test_tools import load_tool

    return load_tool("infer").main(argv)


@needs_osbs
@needs_rasterio
def test_infer_writes_a_geojson_for_the_geotiff(weights, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        _infer(
            [
                "--weights",
                str(weights),
                str(OSBS),
                "--out",
                str(out),
                "--score",
                "0",
                "--no-progress",
                "--tile",
                "0",
            ]
        )
        == 0
    )
    fc = json.loads((out / "OSBS_029.geojson").read_text())
    dets = json.loads((out / "detections.json").read_text())
    assert fc["type"] == "FeatureCollection" and fc["crs"]["properties"]["name"] == "EPSG:32617"
    assert len(fc["features"]) == len(dets) > 0
    ref = geo.geotiff_tags_transform(OSBS)
    for feature, det in zip(fc["features"], dets, strict=True):
        x, y, w, h = det["bbox"]
        ring = np.array(feature["geometry"]["coordinates"][0])
        a, _, c, _, e, f = ref.transform
        assert ring[:, 0].min() == pytest.approx(c + a * x, abs=0.002)
        assert ring[:, 0].max() == pytest.approx(c + a * (x + w), abs=0.002)
        assert ring[:, 1].max() == pytest.approx(f + e * y, abs=0.002)
        assert feature["properties"]["label"] == "tree"
    assert "focaldet[geo]" not in capsys.readouterr().err


@needs_osbs
@pytest.mark.slow
def test_infer_without_rasterio_writes_pixels_and_one_hint_line(weights, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(geo, "rasterio_available", lambda: False)
    second = _write_geotiff(tmp_path / "second.tif", 1)
    out = tmp_path / "out"
    argv = [
        "--weights",
        str(weights),
        str(OSBS),
        str(second),
        "--out",
        str(out),
        "--score",
        "0",
        "--no-progress",
        "--tile",
        "0",
    ]
    assert _infer(argv) == 0
    assert (out / "detections.json").is_file() and (out / "OSBS_029.png").is_file()
    assert not list(out.glob("*.geojson"))
    err = capsys.readouterr().err
    assert err.count("focaldet[geo]") == 1
