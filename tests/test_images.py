"""read_image: pixel modes, EXIF orientation and loud, file-naming errors for bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detector.data.images import ImageReadError, read_image


def _hwc(t: torch.Tensor) -> np.ndarray:
    assert t.dtype == torch.uint8 and t.ndim == 3 and t.shape[0] == 3 and t.is_contiguous()
    return t.permute(1, 2, 0).numpy()


def _pattern(h: int = 4, w: int = 6) -> np.ndarray:
    """Distinct colour per pixel, so any flip or rotation is visible."""
    idx = np.arange(h * w, dtype=np.int64).reshape(h, w)
    return np.stack([idx * 10, 255 - idx * 10, (idx * 37) % 256], axis=2).astype(np.uint8)


def test_rgb_png_round_trip_is_exact(tmp_path: Path) -> None:
    arr = _pattern()
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.shape == (3, 4, 6)
    np.testing.assert_array_equal(_hwc(out), arr)
    out[0, 0, 0] = 1  # writable, no warning-triggering read-only buffer


@pytest.mark.parametrize(("orientation", "k"), [(1, 0), (3, 2), (6, -1), (8, 1)])
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int, k: int) -> None:
    arr = _pattern()
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(tmp_path / "o.png", exif=exif)
    # Orientation 6 = "rotate 90 degrees clockwise to display" (np.rot90 with k=-1), 8 = counter-clockwise.
    np.testing.assert_array_equal(_hwc(read_image(tmp_path / "o.png")), np.rot90(arr, k))


def test_exif_orientation_in_jpeg_swaps_the_size(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (64, 32), (200, 10, 10)).save(tmp_path / "o.jpg", exif=exif)
    assert read_image(tmp_path / "o.jpg").shape == (3, 64, 32)


def test_grayscale_and_one_bit(tmp_path: Path) -> None:
    gray = np.array([[0, 50], [128, 255]], dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    np.testing.assert_array_equal(_hwc(read_image(tmp_path / "g.png")), np.repeat(gray[:, :, None], 3, 2))
    Image.fromarray(gray > 100).save(tmp_path / "b.png")  # mode "1"
    out = _hwc(read_image(tmp_path / "b.png"))
    np.testing.assert_array_equal(out[:, :, 0], np.where(gray > 100, 255, 0))


def test_rgba_and_la_drop_alpha_and_keep_colour(tmp_path: Path) -> None:
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[..., :3] = _pattern(2, 3)
    rgba[..., 3] = [[0, 128, 255], [255, 10, 0]]
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(_hwc(read_image(tmp_path / "a.png")), rgba[..., :3])
    la = Image.fromarray(np.array([[10, 200]], dtype=np.uint8)).convert("LA")
    la.putalpha(Image.fromarray(np.array([[0, 255]], dtype=np.uint8)))
    la.save(tmp_path / "la.png")
    np.testing.assert_array_equal(_hwc(read_image(tmp_path / "la.png"))[0, :, 0], [10, 200])


@pytest.mark.parametrize("transparent", [False, True])
def test_palette(tmp_path: Path, transparent: bool) -> None:
    img = Image.fromarray(np.array([[0, 1], [2, 1]], dtype=np.uint8), "P")
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (253 * 3))
    kwargs = {"transparency": 1} if transparent else {}
    img.save(tmp_path / "p.png", **kwargs)
    expected = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [0, 255, 0]]], dtype=np.uint8)
    np.testing.assert_array_equal(_hwc(read_image(tmp_path / "p.png")), expected)


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 1000, 32768], [40000, 65280, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "w.png")
    assert Image.open(tmp_path / "w.png").mode.startswith("I")
    out = _hwc(read_image(tmp_path / "w.png"))
    expected = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)  # 1000 -> 4, not 255
    np.testing.assert_array_equal(out[:, :, 0], expected)
    np.testing.assert_array_equal(out[:, :, 0], out[:, :, 2])


def test_32bit_integer_tiff_uses_the_16bit_scale(tmp_path: Path) -> None:
    values = np.array([[0, 257, 65535, 70000]], dtype=np.int32)
    Image.fromarray(values).save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    np.testing.assert_array_equal(_hwc(read_image(tmp_path / "i.tif"))[0, :, 1], [0, 1, 255, 255])


def test_cmyk(tmp_path: Path) -> None:
    Image.new("CMYK", (3, 2), (0, 255, 255, 0)).save(tmp_path / "c.tif")
    out = _hwc(read_image(tmp_path / "c.tif"))
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match=r"nope\.jpg: image file not found"):
        read_image(tmp_path / "nope.jpg")


def test_zero_byte_file(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.jpg: image file is empty \(0 bytes\)"):
        read_image(tmp_path / "empty.jpg")


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_truncated_file_fails_loudly(tmp_path: Path, fmt: str) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / f"full.{fmt}")
    data = (tmp_path / f"full.{fmt}").read_bytes()
    (tmp_path / f"cut.{fmt}").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=rf"cut\.{fmt}: truncated or corrupt image data"):
        read_image(tmp_path / f"cut.{fmt}")


def test_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("this is not a JPEG\n")
    with pytest.raises(ImageReadError, match=r"notes\.jpg: not a recognised image file"):
        read_image(tmp_path / "notes.jpg")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="is a directory"):
        read_image(tmp_path)


def test_image_read_error_is_a_value_error() -> None:
    assert issubclass(ImageReadError, ValueError)
