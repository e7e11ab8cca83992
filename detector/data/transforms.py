"""Bbox-safe albumentations pipelines: letterbox every image to one square size, plus train-time augmentation.

Letterbox = resize so the longest side is `size` (LongestMaxSize) and pad right/bottom to `size x size`
(PadIfNeeded, position top_left). The content therefore starts at (0, 0), and the target records `scale`
(sx, sy) and `pad` (left, top) so `boxes_to_original` maps detections back to original pixels exactly.

Padding colour: ImageNet mean grey (124, 116, 104). After the model's normalization it is ~0, the same as
torchvision's detectors, which pad the normalized tensor with zeros; black padding reads as a dark border.

Flips and 90-degree rotations (data.rot90) are applied to the resized image before it is padded, so they
move the content only and boxes stay on the pixels they cover. Boxes are pascal_voc xyxy in 0-based
continuous pixels (x_max may equal the width).

Random resized crop (data.crop_scale = [min, max]): before the letterbox, a window of a random area fraction
in [min, max] of the image and aspect ratio in CROP_RATIO is cut (torchvision's RandomResizedCrop sampling)
and letterboxed to S like a whole image (aspect kept, crowns not stretched); a box is kept when at least
MIN_CROP_VISIBILITY of its area stays in the window. `scale` and `pad` then map the window back to original
pixels; flips and rotations are not recorded (training targets are never mapped back).
"""

from __future__ import annotations

import inspect
import math
import random
from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch

from detector.data.augment_options import CROP_RATIO, check_crop_scale
from detector.data.letterbox import check_letterbox_size

__all__ = [
    "PAD_FILL",
    "DetectionTransform",
    "build_eval_transforms",
    "build_train_transforms",
    "crop_boxes",
]

PAD_FILL = (124, 116, 104)  # ImageNet mean in uint8 RGB
# scale-jitter crop, random resized crop, mosaic: drop a box when under this fraction of its area is visible
MIN_CROP_VISIBILITY = 0.3
_EPS = 1e-3  # boxes thinner than this (pixels) count as degenerate


def _bbox_params() -> A.BboxParams:
    # clip=True absorbs float rounding at the borders (albumentations rejects coordinates outside [0, 1]);
    # label_fields make albumentations drop labels and difficult flags together with their boxes.
    return A.BboxParams(format="pascal_voc", label_fields=["labels", "difficult"], clip=True)


def _pad_if_needed(size: int) -> A.PadIfNeeded:
    """PadIfNeeded to `size x size` at the top left with the mean-grey fill (albumentations 1.4 and 2.x)."""
    kwargs: dict[str, Any] = dict(
        min_height=size, min_width=size, position="top_left", border_mode=cv2.BORDER_CONSTANT, p=1.0
    )
    params = inspect.signature(A.PadIfNeeded.__init__).parameters
    kwargs["fill" if "fill" in params else "value"] = PAD_FILL
    return A.PadIfNeeded(**kwargs)


class DetectionTransform:
    """Callable `(image uint8 [3,H,W], target | None) -> (image uint8 [3,S,S], target)` around albumentations.

    `resize` is a Compose that resizes (and, for training, flips and jitters colours) without padding; the
    letterbox geometry is then read from the resized array, a random crop is taken when scale jitter made the
    image larger than S, and `pad` pads to S x S at the top left. `crop_scale` = (min, max) first cuts a
    random resized crop window (module docstring); `rotates` says `resize` may turn the image by 90 degrees.
    """

    def __init__(
        self,
        size: int,
        resize: A.Compose,
        seed: int | None = None,
        crop_scale: Sequence[float] | None = None,
        rotates: bool = False,
    ) -> None:
        self.size = check_letterbox_size(size)
        self.resize = resize
        self.crop_scale = check_crop_scale(crop_scale)
        self.rotates = bool(rotates)
        self.pad = A.Compose([_pad_if_needed(size)], bbox_params=_bbox_params())
        self.rng = np.random.default_rng(seed)
        if seed is not None:
            self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Reseed every random choice (before each training item, from its (seed, epoch, index))."""
        self.rng = np.random.default_rng(seed)
        if hasattr(self.resize, "set_random_state"):  # albumentations >= 2.0 keeps its own generators
            # One generator shared by all steps. Compose.set_random_seed would give every step its own
            # generator with the same seed, so h-flip and v-flip would always fire together
            # (albumentations 2.0.8).
            for compose in (self.resize, self.pad):
                compose.set_random_state(np.random.default_rng(seed), random.Random(seed))
        else:  # albumentations 1.x draws from the global generators
            np.random.seed(seed % 2**32)
            random.seed(seed)

    def __call__(
        self, image: torch.Tensor, target: dict[str, Any] | None = None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        if not (
            isinstance(image, torch.Tensor)
            and image.dtype == torch.uint8
            and image.ndim == 3
            and image.shape[0] == 3
        ):
            got = (
                f"{image.dtype} {tuple(image.shape)}"
                if isinstance(image, torch.Tensor)
                else type(image).__name__
            )
            raise ValueError(f"expected a uint8 image tensor [3, H, W], got {got}")
        height, width = int(image.shape[1]), int(image.shape[2])
        out: dict[str, Any] = dict(target) if target is not None else {}
        out["orig_size"] = tuple(out.get("orig_size", (height, width)))
        array = _to_hwc(image)
        has_boxes = target is not None and "boxes" in target
        boxes, labels, difficult = _valid_boxes(out, height, width) if has_boxes else _empty()
        crop_x = crop_y = 0
        if self.crop_scale is not None:  # random resized crop: cut the window, then letterbox it
            crop_x, crop_y, width, height = self._crop_window(height, width)
            array = np.ascontiguousarray(array[crop_y : crop_y + height, crop_x : crop_x + width])
            boxes, labels, difficult = crop_boxes(boxes, labels, difficult, crop_x, crop_y, (height, width))

        res = self.resize(image=array, bboxes=boxes, labels=labels, difficult=difficult)
        array = res["image"]
        boxes, labels, difficult = _as_arrays(res["bboxes"], res["labels"], res["difficult"])
        new_h, new_w = array.shape[:2]
        if self.rotates and new_h != new_w and (new_h > new_w) != (height > width):
            new_h, new_w = new_w, new_h  # turned by 90 degrees: read the resize scale off the unturned sides
        left = top = 0
        if new_h > self.size or new_w > self.size:  # scale jitter > 1: random S x S window of the content
            left = int(self.rng.integers(0, max(new_w - self.size, 0) + 1))
            top = int(self.rng.integers(0, max(new_h - self.size, 0) + 1))
            array = np.ascontiguousarray(array[top : top + self.size, left : left + self.size])
            boxes, labels, difficult = crop_boxes(boxes, labels, difficult, left, top, array.shape[:2])
        res = self.pad(image=array, bboxes=boxes, labels=labels, difficult=difficult)
        boxes, labels, difficult = _as_arrays(res["bboxes"], res["labels"], res["difficult"])
        boxes, labels, difficult = _drop_degenerate(boxes, labels, difficult, self.size)

        scale_x, scale_y = new_w / width, new_h / height
        out["scale"] = torch.tensor([scale_x, scale_y], dtype=torch.float32)
        # a crop is a negative pad: the crop window's origin (original pixels, scaled) plus the jitter crop's
        pad = [-(crop_x * scale_x + left), -(crop_y * scale_y + top)]
        out["pad"] = torch.tensor(pad, dtype=torch.float32)
        if has_boxes:
            out["boxes"] = torch.from_numpy(boxes).reshape(-1, 4)
            out["labels"] = torch.from_numpy(labels.astype(np.int64))
            out["difficult"] = torch.from_numpy(difficult.astype(bool))
        return _to_chw(res["image"]), out

    def _crop_window(self, height: int, width: int) -> tuple[int, int, int, int]:
        """`(x, y, w, h)` of a random resized crop window: area fraction in crop_scale, aspect in CROP_RATIO,
        drawn as torchvision's RandomResizedCrop does (10 tries, then the centre cut to the ratio range)."""
        assert self.crop_scale is not None
        low, high = self.crop_scale
        log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
        for _ in range(10):
            area = height * width * float(self.rng.uniform(low, high))
            ratio = math.exp(float(self.rng.uniform(*log_ratio)))
            w, h = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
            if 0 < w <= width and 0 < h <= height:
                x = int(self.rng.integers(0, width - w + 1))
                y = int(self.rng.integers(0, height - h + 1))
                return x, y, w, h
        w, h = width, height
        if width / height < CROP_RATIO[0]:
            h = max(1, min(height, int(round(width / CROP_RATIO[0]))))
        elif width / height > CROP_RATIO[1]:
            w = max(1, min(width, int(round(height * CROP_RATIO[1]))))
        return (width - w) // 2, (height - h) // 2, w, h


def _to_hwc(image: torch.Tensor) -> np.ndarray:
    """uint8 [3, H, W] tensor -> contiguous [H, W, 3] array (cv2.merge beats a torch uint8 permute copy)."""
    return cv2.merge([np.ascontiguousarray(plane) for plane in image.numpy()])


def _to_chw(array: np.ndarray) -> torch.Tensor:
    """[H, W, 3] array -> contiguous uint8 [3, H, W] tensor (cv2.split, same reason)."""
    return torch.from_numpy(np.stack(cv2.split(np.ascontiguousarray(array))))


def _empty() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, bool)


def _as_arrays(boxes, labels, difficult) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return (
        boxes,
        np.asarray(labels, dtype=np.int64).reshape(-1),
        np.asarray(difficult, dtype=bool).reshape(-1),
    )


def _valid_boxes(
    target: dict[str, Any], height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Target boxes clipped to the image, with degenerate ones (and their labels/flags) removed up front."""
    boxes = torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4).numpy().copy()
    n = len(boxes)
    labels = torch.as_tensor(target.get("labels", torch.zeros(n, dtype=torch.int64))).numpy().reshape(-1)
    difficult = torch.as_tensor(target.get("difficult", torch.zeros(n, dtype=torch.bool))).numpy().reshape(-1)
    if len(labels) != n or len(difficult) != n:
        raise ValueError(
            f"target {target.get('image_id', '?')}: {n} boxes but {len(labels)} labels and {len(difficult)} "
            "difficult flags"
        )
    np.clip(boxes[:, 0::2], 0, width, out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0, height, out=boxes[:, 1::2])
    keep = np.isfinite(boxes).all(1) & (boxes[:, 2] - boxes[:, 0] > _EPS) & (boxes[:, 3] - boxes[:, 1] > _EPS)
    return boxes[keep], labels[keep].astype(np.int64), difficult[keep].astype(bool)


def crop_boxes(
    boxes: np.ndarray, labels: np.ndarray, difficult: np.ndarray, left: int, top: int, shape: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shift xyxy boxes into a crop window at (left, top) of `shape` (h, w), clip, and drop those with less
    than MIN_CROP_VISIBILITY of their area inside (labels and flags kept in step)."""
    if not len(boxes):
        return boxes, labels, difficult
    h, w = shape
    shifted = boxes - np.array([left, top, left, top], np.float32)
    clipped = shifted.copy()
    np.clip(clipped[:, 0::2], 0, w, out=clipped[:, 0::2])
    np.clip(clipped[:, 1::2], 0, h, out=clipped[:, 1::2])
    area = (shifted[:, 2] - shifted[:, 0]) * (shifted[:, 3] - shifted[:, 1])
    visible = (clipped[:, 2] - clipped[:, 0]).clip(0) * (clipped[:, 3] - clipped[:, 1]).clip(0)
    keep = (visible >= MIN_CROP_VISIBILITY * area) & (clipped[:, 2] - clipped[:, 0] > _EPS)
    keep &= clipped[:, 3] - clipped[:, 1] > _EPS
    return clipped[keep], labels[keep], difficult[keep]


def _drop_degenerate(boxes, labels, difficult, size: int) -> tuple[np.ndarray, ...]:
    """Final guard: boxes inside [0, S] with positive width and height, labels and flags kept in step."""
    np.clip(boxes, 0, size, out=boxes)
    keep = (boxes[:, 2] - boxes[:, 0] > _EPS) & (boxes[:, 3] - boxes[:, 1] > _EPS)
    return boxes[keep], labels[keep], difficult[keep]


def _jitter_sizes(size: int, jitter: float) -> list[int]:
    """Longest-side candidates spread over [size * (1 - j), size * (1 + j)]."""
    if not 0.0 <= jitter < 1.0:
        raise ValueError(f"data.scale_jitter must be in [0, 1), got {jitter}")
    if jitter == 0:
        return [size]
    sizes = np.linspace(size * (1 - jitter), size * (1 + jitter), 11)
    return sorted({max(32, int(round(s))) for s in sizes})


def build_train_transforms(data_cfg: Any, seed: int | None = None) -> DetectionTransform:
    """Train pipeline from a DataConfig: optional random resized crop (crop_scale), letterbox to `size`,
    flips, optional 90-degree rotations (rot90), colour jitter (ranges times color_strength), optional scale
    jitter. Options that are off add no random draw, so a config without them gives the same images as
    before they existed."""
    size = check_letterbox_size(int(data_cfg.size))
    sizes = _jitter_sizes(size, float(getattr(data_cfg, "scale_jitter", 0.0)))
    steps: list[A.BasicTransform] = [A.LongestMaxSize(max_size=sizes if len(sizes) > 1 else size)]
    if getattr(data_cfg, "hflip", True):
        steps.append(A.HorizontalFlip(p=0.5))
    if getattr(data_cfg, "vflip", False):
        steps.append(A.VerticalFlip(p=0.5))
    rotates = bool(getattr(data_cfg, "rot90", False))
    if rotates:
        steps.append(A.RandomRotate90(p=1.0))  # 0, 90, 180 or 270 degrees, equally likely
    if getattr(data_cfg, "color_jitter", True):
        k = float(getattr(data_cfg, "color_strength", 1.0))
        steps.append(
            A.ColorJitter(brightness=0.2 * k, contrast=0.2 * k, saturation=0.2 * k, hue=0.02 * k, p=0.8)
        )
    return DetectionTransform(
        size,
        A.Compose(steps, bbox_params=_bbox_params()),
        seed=seed,
        crop_scale=getattr(data_cfg, "crop_scale", None),
        rotates=rotates,
    )


def build_eval_transforms(size: int) -> DetectionTransform:
    """Eval pipeline: letterbox only (deterministic)."""
    size = check_letterbox_size(int(size))
    return DetectionTransform(size, A.Compose([A.LongestMaxSize(max_size=size)], bbox_params=_bbox_params()))
