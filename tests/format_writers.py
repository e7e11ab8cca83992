"""Tiny COCO and YOLO datasets for tests, written with plain json / text / PIL (independently of the readers
and of detector.data.convert), so the readers are tested against files they did not produce."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

GREY = (100, 100, 100)


def solid_image(
    path: Path, size: tuple[int, int], boxes: Sequence[Sequence[float]] = (), seed: int = 0
) -> Path:
    """A noisy grey image of (H, W) with a red rectangle on each integer box (x1, y1, x2, y2)."""
    rng = np.random.default_rng(seed)
    height, width = size
    pixels = np.clip(rng.integers(90, 150, size=(height, width, 3)), 0, 255).astype(np.uint8)
    for x1, y1, x2, y2 in boxes:
        pixels[int(y1) : int(y2), int(x1) : int(x2)] = (230, 30, 30)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def write_coco_file(path: Path, images: list[dict], annotations: list[dict], categories: list[dict]) -> Path:
    """A COCO instances file from plain dicts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def tiny_coco(root: Path, split: str = "train", size: tuple[int, int] = (60, 80)) -> dict[str, Any]:
    """A COCO dataset with non-contiguous category ids (7 'cat', 3 'dog', 42 'bird', in that order), a crowd
    box, an image without annotations and an image under ``images/``. Returns the expected records by
    file name: boxes xyxy, labels, crowd flags (as numpy arrays)."""
    height, width = size
    cats = [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}, {"id": 42, "name": "bird"}]
    spec = {
        "a.png": [(7, [4, 5, 20, 10], 0), (42, [30.5, 8.25, 12.5, 20], 0)],
        "b.png": [(3, [10, 10, 30, 30], 1), (7, [0, 0, 5, 5], 0)],
        "empty.png": [],
    }
    label_of = {7: 1, 3: 2, 42: 3}
    images, anns, expected = [], [], {}
    for i, (name, objs) in enumerate(spec.items()):
        image_id = 100 + 10 * i  # ids need not be contiguous either
        where = root / (name if name != "b.png" else f"images/{name}")
        xyxy = [(x, y, x + w, y + h) for _, (x, y, w, h), _ in objs]
        solid_image(where, size, xyxy, seed=i)
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for cid, bbox, crowd in objs:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": cid,
                    "bbox": bbox,
                    "iscrowd": crowd,
                }
            )
        expected[name] = {
            "image_id": str(image_id),
            "boxes": np.asarray(xyxy, dtype=np.float32).reshape(-1, 4),
            "labels": np.asarray([label_of[c] for c, _, _ in objs], dtype=np.int64),
            "crowd": np.asarray([bool(c) for _, _, c in objs], dtype=bool),
        }
    write_coco_file(root / "annotations" / f"{split}.json", images, anns, cats)
    return expected


def write_yolo_split(
    root: Path,
    split: str,
    images: dict[str, tuple[tuple[int, int], str | None]],
    names: Sequence[str] | dict[int, str] | None = ("cat", "dog"),
) -> Path:
    """``images``: relative name -> ((H, W), label text or None for no label file). Writes data.yaml."""
    for i, (name, (size, text)) in enumerate(images.items()):
        solid_image(root / "images" / split / name, size, seed=i)
        if text is not None:
            label = (root / "labels" / split / name).with_suffix(".txt")
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text(text)
    if names is not None:
        if isinstance(names, dict):
            body = "".join(f"  {k}: {v}\n" for k, v in names.items())
        else:
            body = "".join(f"  - {n}\n" for n in names)
        (root / "data.yaml").write_text(f"path: .\ntrain: images/train\nnames:\n{body}")
    return root
