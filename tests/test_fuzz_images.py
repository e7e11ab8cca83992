"""Fuzzing read_image: every file ends in a uint8 [3, H, W] tensor or an ImageReadError naming the file.

Random bytes, truncations and byte-level mutations of valid files in several formats, plus the faults a data
folder really has: empty files, directories and pipes where images should be, unreadable names, and
decompression bombs (a few bytes claiming gigabytes of pixels).
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from detector.data.images import ImageReadError, read_image

FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _encode(fmt: str, mode: str = "RGB", size: tuple[int, int] = (23, 17), **kw) -> bytes:
    """A small valid image file (PIL ``size`` is width, height) with noisy pixels, so every byte matters."""
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


# PIL's TIFF reader warns about damaged tags ("Truncated File Read", "Tag data larger than file") on the way
# to reading or rejecting a file; the outcome is what these tests check.
TIFF_NOISE = pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin")

SAMPLES: dict[str, bytes] = {
    "jpg": _encode("JPEG", quality=90),
    "png": _encode("PNG"),
    "png16": _encode("PNG", "I;16"),
    "gif": _encode("GIF", "P"),
    "bmp": _encode("BMP"),
    "tif": _encode("TIFF"),
    "webp": _encode("WEBP"),
}


def read_clean_or_clear(path: Path) -> torch.Tensor | None:
    """Read ``path``; a success must be a well-formed image tensor, a failure an ImageReadError naming it."""
    try:
        image = read_image(path)
    except ImageReadError as err:
        assert str(path) in str(err), f"error does not name the file: {err}"
        return None
    assert image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3
    assert image.shape[1] > 0 and image.shape[2] > 0
    return image


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_claiming(width: int, height: int, pixel_data: bytes) -> bytes:
    """A PNG whose IHDR declares ``width x height`` RGB, followed by ``pixel_data`` (zlib) as its IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", pixel_data) + _chunk(b"IEND", b"")


# ----------------------------------------------------------------------------------------- property-based


@pytest.mark.timeout(60)
@TIFF_NOISE
@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "random.jpg"
    path.write_bytes(data)
    read_clean_or_clear(path)


@pytest.mark.timeout(60)
@TIFF_NOISE
@FUZZ
@given(kind=st.sampled_from(sorted(SAMPLES)), cut=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_files(tmp_path: Path, kind: str, cut: float) -> None:
    full = SAMPLES[kind]
    path = tmp_path / f"cut.{kind}"
    path.write_bytes(full[: int(len(full) * cut)])
    read_clean_or_clear(path)


@pytest.mark.timeout(60)
@TIFF_NOISE
@FUZZ
@given(
    kind=st.sampled_from(sorted(SAMPLES)),
    edits=st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.binary(min_size=1, max_size=4)),
                   min_size=1, max_size=6),
)
def test_mutated_files(tmp_path: Path, kind: str, edits: list[tuple[float, bytes]]) -> None:
    data = bytearray(SAMPLES[kind])
    for where, patch in edits:  # overwrite a few bytes anywhere, headers included
        start = int(len(data) * where)
        data[start : start + len(patch)] = patch
    path = tmp_path / f"mutated.{kind}"
    path.write_bytes(bytes(data))
    read_clean_or_clear(path)


def test_every_sample_is_readable(tmp_path: Path) -> None:
    """The fuzz seeds themselves decode, so the properties above start from valid files."""
    for kind, data in SAMPLES.items():
        (tmp_path / f"ok.{kind}").write_bytes(data)
        image = read_clean_or_clear(tmp_path / f"ok.{kind}")
        assert image is not None and tuple(image.shape) == (3, 17, 23), kind


# ----------------------------------------------------------------------------------------- targeted faults


@pytest.mark.parametrize("kind", ["jpg", "png"])
@pytest.mark.parametrize(
    ("keep", "message"),
    [
        (0, r"image file is empty \(0 bytes\)"),
        (4, r"not a recognised image file \(4 bytes\)"),  # only the magic number survives
        (0.75, r"truncated or corrupt image data"),  # the pixel stream cut short (a PNG that only lacks
    ],  # its IEND trailer still has every pixel, and is read)
)
def test_empty_and_truncated_jpeg_png(tmp_path: Path, kind: str, keep: float, message: str) -> None:
    path = tmp_path / f"bad.{kind}"
    data = SAMPLES[kind]
    path.write_bytes(data[: int(keep * len(data)) if isinstance(keep, float) else keep])
    with pytest.raises(ImageReadError, match=rf"bad\.{kind}: {message}"):
        read_image(path)


def test_png_whose_header_claims_more_pixels_than_it_has(tmp_path: Path) -> None:
    path = tmp_path / "liar.png"
    path.write_bytes(_png_claiming(64, 48, zlib.compress(bytes(17 * (1 + 23 * 3)))))  # 23x17 rows of data
    with pytest.raises(ImageReadError, match=r"liar\.png: truncated or corrupt image data"):
        read_image(path)


def test_directory_named_like_an_image(tmp_path: Path) -> None:
    (tmp_path / "photo.jpg").mkdir()
    with pytest.raises(ImageReadError, match=r"photo\.jpg: is a directory, not an image file"):
        read_image(tmp_path / "photo.jpg")


@pytest.mark.timeout(10)
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_named_pipe_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.jpg")  # opening it for reading would block until a writer comes
    with pytest.raises(ImageReadError, match=r"pipe\.jpg: not a regular file"):
        read_image(tmp_path / "pipe.jpg")


@pytest.mark.parametrize(
    ("name", "message"),
    [("x" * 300 + ".jpg", r"cannot access image file \(.*too long"), ("nul\x00.jpg", r"embedded null byte")],
)
def test_unusable_file_names(tmp_path: Path, name: str, message: str) -> None:
    with pytest.raises(ImageReadError, match=message) as info:
        read_image(tmp_path / name)
    assert str(tmp_path / name) in str(info.value)


def test_non_utf8_file_name(tmp_path: Path) -> None:
    raw = os.fsencode(tmp_path) + b"/caf\xe9.png"  # a Latin-1 name, as old cameras and Windows tools write
    with open(raw, "wb") as fh:
        fh.write(SAMPLES["png"])
    path = Path(os.fsdecode(raw))
    assert tuple(read_image(path).shape) == (3, 17, 23)
    with open(raw, "wb") as fh:
        fh.write(SAMPLES["png"][:50])
    with pytest.raises(ImageReadError, match="truncated or corrupt") as info:
        read_image(path)
    assert str(path) in str(info.value)


@pytest.mark.timeout(10)
def test_decompression_bomb_header_is_refused_before_allocating(tmp_path: Path) -> None:
    """A 2.7 MB zlib stream of zeros in a 2.7 KB PNG claiming 30000 x 30000 pixels fails at once."""
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_claiming(30000, 30000, zlib.compress(bytes(30000 * 90), 9)))
    assert path.stat().st_size < 10_000
    with pytest.raises(ImageReadError, match=r"bomb\.png: image too large to decode safely.*MAX_IMAGE_PI"):
        read_image(path)


@pytest.mark.parametrize(
    ("limit", "side", "ok"),
    [
        (1000, 30, True),  # 900 pixels: under the limit
        (1000, 40, False),  # 1600: PIL alone would only warn (between 1x and 2x the limit) and decode it
        (1000, 50, False),  # 2500: PIL raises DecompressionBombError itself
        (None, 50, True),  # the limit disabled, as PIL documents
    ],
)
def test_pixel_limit_is_pils_and_is_enforced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int | None, side: int, ok: bool
) -> None:
    path = tmp_path / f"square{side}.png"
    Image.new("RGB", (side, side), (1, 2, 3)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    if ok:
        assert tuple(read_image(path).shape) == (3, side, side)
        return
    # PIL warns (without naming the file) between 1x and 2x its limit; the error that follows names it.
    warns = pytest.warns(Image.DecompressionBombWarning) if side * side <= 2 * limit else nullcontext()
    too_large = rf"square{side}\.png: image too large to decode safely"
    with warns, pytest.raises(ImageReadError, match=too_large):
        read_image(path)

