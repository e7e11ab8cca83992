"""Shared fixtures: a generator of tiny VOC-format datasets with learnable, colour-coded objects.

The writer here is deliberately independent of ``detector.data.voc`` (plain ElementTree and PIL), so the
reader is tested against files it did not produce.
"""

from __future__ import annotations

import colorsys
import itertools
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Saturated colours, far from the grey background; class i gets CLASS_COLOURS[i] (more classes: HSV wheel).
CLASS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (230, 30, 30),
    (30, 200, 40),
    (40, 60, 230),
    (240, 220, 20),
    (220, 40, 220),
    (30, 220, 220),
)


def class_colour(index: int, n_classes: int) -> tuple[int, int, int]:
    """The solid RGB colour of class ``index`` (0-based) in generated images."""
    if n_classes <= len(CLASS_COLOURS):
        return CLASS_COLOURS[index]
    r, g, b = colorsys.hsv_to_rgb(index / n_classes, 0.9, 0.9)
    return int(r * 255), int(g * 255), int(b * 255)


def _place_boxes(
    rng: np.random.Generator, count: int, height: int, width: int
) -> list[tuple[int, int, int, int]]:
    """Non-overlapping integer boxes (x0, y0, x1, y1), pixel [x0, x1) x [y0, y1), 20-45% of each side."""
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(count):
        for _attempt in range(100):
            bw = int(rng.integers(max(4, width // 5), max(5, int(width * 0.45))))
            bh = int(rng.integers(max(4, height // 5), max(5, int(height * 0.45))))
            x0 = int(rng.integers(0, width - bw + 1))
            y0 = int(rng.integers(0, height - bh + 1))
            box = (x0, y0, x0 + bw, y0 + bh)
            # Keep a 2 px gap so JPEG ringing of one object never bleeds into another's box.
            if all(
                box[2] + 2 <= b[0] or b[2] + 2 <= box[0] or box[3] + 2 <= b[1] or b[3] + 2 <= box[1]
                for b in boxes
            ):
                boxes.append(box)
                break
    return boxes


def _write_xml(
    path: Path, filename: str, height: int, width: int, objects: list[tuple[str, tuple, bool]]
) -> None:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "tiny"
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(width)
    ET.SubElement(size, "height").text = str(height)
    ET.SubElement(size, "depth").text = "3"
    for name, (x0, y0, x1, y1), difficult in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "1" if difficult else "0"
        bnd = ET.SubElement(obj, "bndbox")
        # Pixels [x0, x1) are 1-based inclusive x0+1 .. x1 in VOC.
        for tag, value in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(bnd, tag).text = str(value)
    ET.indent(root)
    path.write_text(ET.tostring(root, encoding="unicode") + "\n", encoding="utf-8")


def write_tiny_voc(
    root: Path,
    n_images: int = 4,
    image_size: tuple[int, int] = (160, 192),
    classes: Sequence[str] = ("cat", "dog"),
    boxes_per_image: tuple[int, int] = (1, 3),
    seed: int = 0,
    split: str = "train",
    difficult_every: int = 0,
) -> Path:
    """Write a VOC year folder at ``root`` and return it.

    ``n_images`` JPEGs of ``image_size`` (H, W), ids ``{split}_{i:04d}``, each with a number of objects drawn
    uniformly from ``boxes_per_image`` (inclusive): solid rectangles in the class colour on a noisy grey
    background, cycling through ``classes``. With ``difficult_every = k > 0`` every k-th object (counting
    across the dataset, 1-based) is marked difficult. Deterministic for a given seed. Writing a second split
    into the same root adds its images and split file (ids differ by the split prefix).
    """
    root = Path(root)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    height, width = image_size
    class_cycle = itertools.cycle(range(len(classes)))
    object_count = 0
    ids = []
    for i in range(n_images):
        image_id = f"{split}_{i:04d}"
        pixels = rng.integers(90, 150, size=(height, width, 1)) + rng.integers(
            -12, 13, size=(height, width, 3)
        )
        pixels = np.clip(pixels, 0, 255).astype(np.uint8)
        n_boxes = int(rng.integers(boxes_per_image[0], boxes_per_image[1] + 1))
        objects = []
        for box in _place_boxes(rng, n_boxes, height, width):
            cls = next(class_cycle)
            x0, y0, x1, y1 = box
            pixels[y0:y1, x0:x1] = class_colour(cls, len(classes))
            object_count += 1
            difficult = difficult_every > 0 and object_count % difficult_every == 0
            objects.append((classes[cls], box, difficult))
        Image.fromarray(pixels).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        _write_xml(root / "Annotations" / f"{image_id}.xml", f"{image_id}.jpg", height, width, objects)
        ids.append(image_id)
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text(
        "".join(f"{i}\n" for i in ids), encoding="utf-8"
    )
    return root


@pytest.fixture
def tiny_voc(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``tiny_voc(n_images=4, image_size=(160, 192), classes=("cat", "dog"), boxes_per_image=(1, 3),
    seed=0, split="train", difficult_every=0, root=None) -> Path``. Each call without ``root`` writes a new
    folder under tmp_path; pass ``root`` to add another split to an existing folder."""
    counter = itertools.count()

    def make(
        n_images: int = 4,
        image_size: tuple[int, int] = (160, 192),
        classes: Sequence[str] = ("cat", "dog"),
        boxes_per_image: tuple[int, int] = (1, 3),
        seed: int = 0,
        split: str = "train",
        difficult_every: int = 0,
        root: Path | None = None,
    ) -> Path:
        if root is None:
            root = tmp_path / f"tiny_voc_{next(counter)}"
        return write_tiny_voc(
            root, n_images, image_size, classes, boxes_per_image, seed, split, difficult_every
        )

    return make
