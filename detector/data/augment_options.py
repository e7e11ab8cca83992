"""Checks of the augmentation options (data.crop_scale, data.mosaic), light so config validation can use them.

One definition of what each option accepts, shared by `config._validate` (which names the key at load) and the
transforms and dataset wrapper (which check again when built directly).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = [
    "CROP_RATIO",
    "CROP_SCALE_EXPECTED",
    "MOSAIC_EXPECTED",
    "check_crop_scale",
    "check_mosaic",
    "valid_crop_scale",
    "valid_mosaic",
]

CROP_RATIO = (3 / 4, 4 / 3)  # random resized crop: window aspect ratio (width / height) range
CROP_SCALE_EXPECTED = "[min, max] area fractions with 0 < min <= max <= 1 ([]: no random resized crop)"
MOSAIC_EXPECTED = "a probability in [0, 1] (0: no mosaic)"


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def valid_crop_scale(value: Sequence[float] | None) -> bool:
    """True for [] / None (off) and for [min, max] with 0 < min <= max <= 1."""
    values = list(value or [])
    if not values:
        return True
    return len(values) == 2 and all(_number(v) for v in values) and 0 < values[0] <= values[1] <= 1


def check_crop_scale(value: Sequence[float] | None) -> tuple[float, float] | None:
    """`(min, max)` area fractions of `data.crop_scale`, None when off; a ValueError naming the key if bad."""
    if not valid_crop_scale(value):
        raise ValueError(f"data.crop_scale = {list(value or [])!r}: expected {CROP_SCALE_EXPECTED}")
    values = list(value or [])
    return (float(values[0]), float(values[1])) if values else None


def valid_mosaic(value: float) -> bool:
    """True for a probability in [0, 1]."""
    return _number(value) and 0.0 <= value <= 1.0


def check_mosaic(value: float) -> float:
    """The `data.mosaic` probability as a float; a ValueError naming the key if it is not in [0, 1]."""
    if not valid_mosaic(value):
        raise ValueError(f"data.mosaic = {value!r}: expected {MOSAIC_EXPECTED}")
    return float(value)
