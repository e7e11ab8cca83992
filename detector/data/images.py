"""Image loading: any file PIL can decode -> uint8 RGB tensor [3, H, W], with loud errors for bad files.

Images stay uint8 until they reach the model (see DESIGN.md); this module is the single place where files
become pixels, so EXIF orientation, exotic pixel modes and corrupt files are handled once, here.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["ImageReadError", "read_image", "read_image_size", "to_rgb_array"]

# Modes PIL uses for single-channel images wider than 8 bits. Their values are on a 16-bit scale
# (16-bit PNG/TIFF files open as one of these), so they are scaled by 255/65535 rather than clipped at 255,
# which is what ``Image.convert("RGB")`` would do.
_WIDE_GRAY_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


class ImageReadError(ValueError):
    """An image file is missing, empty, truncated, corrupt or not an image; the message names the file."""


def _scale_16bit_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map 0..65535 to 0..255 with rounding (x * 255 / 65535); out-of-range values (32-bit 'I') saturate."""
    wide = np.clip(values.astype(np.int64), 0, 65535)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """Convert a decoded PIL image of any mode to a uint8 RGB array [H, W, 3].

    Alpha is dropped (the stored colour is kept, as torchvision and OpenCV do); palettes are expanded;
    16-bit grayscale is scaled down to 8 bits; other modes (1, L, CMYK, YCbCr, LAB, F, ...) use PIL's
    own conversion.
    """
    mode = img.mode
    if mode == "RGB":
        arr = np.asarray(img)
    elif mode in _WIDE_GRAY_MODES:
        gray = _scale_16bit_to_uint8(np.asarray(img))
        arr = np.repeat(gray[:, :, None], 3, axis=2)
    elif mode in ("RGBA", "RGBa", "RGBX", "LA", "La", "PA") or (mode == "P" and "transparency" in img.info):
        # Going through RGBA first keeps PIL from warning about palette transparency and un-premultiplies.
        arr = np.asarray(img.convert("RGBA"))[:, :, :3]
    else:
        arr = np.asarray(img.convert("RGB"))
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:  # pragma: no cover - PIL contract
        raise ValueError(f"mode {mode!r} converted to {arr.dtype} {arr.shape}, expected uint8 [H, W, 3]")
    return arr


_LIMIT_HINT = (
    "pass max_pixels (tools: --max-pixels N, 0 = no limit) or raise PIL.Image.MAX_IMAGE_PIXELS "
    "(None disables the check) to read such images"
)


def _check_pixel_limit(path: Path, width: int, height: int, max_pixels: int | None = None) -> None:
    """Refuse images over the pixel limit before decoding them (decompression-bomb guard).

    PIL itself only warns between one and two times the limit and would allocate and decode the image; a
    data loader should not, as a file that small can claim gigabytes. The limit is ``max_pixels`` when given
    (0: no limit), else PIL's global ``PIL.Image.MAX_IMAGE_PIXELS``.
    """
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else (int(max_pixels) or None)
    if limit is not None and width * height > limit:
        raise ImageReadError(
            f"{path}: image too large to decode safely ({width}x{height} = {width * height} pixels, "
            f"limit {limit}); {_LIMIT_HINT}"
        )


def _open_image(path: Path, max_pixels: int | None) -> Image.Image:
    """``Image.open``; with an explicit ``max_pixels`` PIL's own global check (an error over twice its limit)
    is off during the open, as ``_check_pixel_limit`` applies the chosen limit right after."""
    if max_pixels is None:
        return Image.open(path)
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        return Image.open(path)
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _check_file(path: Path) -> int:
    """The size in bytes of a regular, non-empty file (else ImageReadError naming it)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ImageReadError(f"{path}: image file not found") from None
    except (OSError, ValueError) as err:  # name too long, embedded NUL byte, permission denied, ...
        raise ImageReadError(f"{path}: cannot access image file ({err})") from err
    if stat.S_ISDIR(st.st_mode):
        raise ImageReadError(f"{path}: is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
        raise ImageReadError(f"{path}: not a regular file")
    if st.st_size == 0:
        raise ImageReadError(f"{path}: image file is empty (0 bytes)")
    return st.st_size


def _fix_single_band_planar_tiff(img: Image.Image) -> None:
    """One-band TIFFs tagged PlanarConfiguration=2 (GDAL writes them) mean the same as 1; PIL has no raw mode
    for the (band, planar 2) pair, so retag them as 1 before decoding."""
    tags = getattr(img, "tag_v2", None)
    if img.format == "TIFF" and tags is not None and tags.get(284) == 2 and tags.get(277, 1) == 1:
        tags[284] = 1
        img._setup()  # re-derive the decoder from the tags (PIL's TiffImageFile API)


_ROTATED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def read_image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(height, width) of an image file as :func:`read_image` returns it (EXIF rotation applied), from the
    header only: no pixel decoding. Raises :class:`ImageReadError` for a missing or unrecognised file."""
    path = Path(path)
    size = _check_file(path)
    try:
        with Image.open(path) as img:
            width, height = img.size
            try:
                orientation = img.getexif().get(0x0112, 1)
            except Exception:  # a broken EXIF block: read_image fails on it too
                orientation = 1
    except UnidentifiedImageError as err:
        raise ImageReadError(f"{path}: not a recognised image file ({size} bytes)") from err
    except Image.DecompressionBombError as err:
        raise ImageReadError(f"{path}: image too large to decode safely ({err}); {_LIMIT_HINT}") from err
    except Exception as err:  # OSError, SyntaxError from a broken header
        raise ImageReadError(f"{path}: corrupt image header ({type(err).__name__}: {err})") from err
    if width <= 0 or height <= 0:
        raise ImageReadError(f"{path}: image header gives an empty size {width}x{height}")
    return (width, height) if orientation in _ROTATED_ORIENTATIONS else (height, width)


def read_image(path: str | os.PathLike[str], max_pixels: int | None = None) -> torch.Tensor:
    """Read an image file as a uint8 RGB tensor [3, H, W] with its EXIF orientation applied.

    The whole file is decoded up front (``img.load()``), so a truncated file raises here, naming the file,
    instead of silently yielding grey pixels. Raises :class:`ImageReadError` for every unreadable file.
    ``max_pixels`` overrides PIL's decompression-bomb limit for this call (0: no limit; None: PIL's setting).
    """
    path = Path(path)
    size = _check_file(path)
    try:
        with _open_image(path, max_pixels) as img:
            _check_pixel_limit(path, *img.size, max_pixels)
            _fix_single_band_planar_tiff(img)
            img.load()
            try:
                oriented = ImageOps.exif_transpose(img)
            except Exception as err:
                raise ImageReadError(f"{path}: invalid EXIF orientation data ({err})") from err
            arr = to_rgb_array(oriented)
    except ImageReadError:
        raise
    except UnidentifiedImageError as err:
        raise ImageReadError(f"{path}: not a recognised image file ({size} bytes)") from err
    except Image.DecompressionBombError as err:  # over twice the limit: PIL refuses in Image.open
        raise ImageReadError(f"{path}: image too large to decode safely ({err}); {_LIMIT_HINT}") from err
    except Exception as err:  # OSError ("image file is truncated"), SyntaxError (broken PNG), zlib, ...
        msg = f"{path}: truncated or corrupt image data ({type(err).__name__}: {err})"
        raise ImageReadError(msg) from err
    # One copy into a fresh, writable CHW array (PIL's buffer view is read-only).
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
