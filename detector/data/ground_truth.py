"""Ground truth and detections of letterboxed batches in each image's original pixels (numpy), for every
consumer of an evaluation loader: evaluation, the report page, the study tools. Below prediction and
evaluation alike, so neither imports the other for them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from detector.data.letterbox import boxes_to_original

__all__ = [
    "detections_to_original",
    "ground_truth_from_dataset",
    "ground_truth_to_original",
    "ground_truths_for",
]


def _to_numpy(x: Any) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def detections_to_original(outputs: list[dict], targets: list[dict]) -> list[dict[str, np.ndarray]]:
    """Map model outputs in the letterboxed frame back to each image's original pixels (numpy)."""
    result = []
    for out, t in zip(outputs, targets, strict=True):
        boxes = boxes_to_original(
            out["boxes"].detach().float().cpu(),
            t["scale"].cpu(),
            t["pad"].cpu(),
            tuple(int(v) for v in t["orig_size"]),
        )
        result.append(
            {
                "boxes": _to_numpy(boxes).reshape(-1, 4),
                "scores": _to_numpy(out["scores"]).reshape(-1),
                "labels": out["labels"].detach().cpu().numpy().astype(np.int64).reshape(-1),
            }
        )
    return result


def ground_truth_to_original(targets: list[dict]) -> list[dict[str, np.ndarray]]:
    """Ground truth of eval-transformed targets mapped back to original pixels, with the difficult flags.

    A fallback for loaders whose dataset has no `records`: the eval transform only letterboxes, so mapping its
    boxes back restores the annotation up to float rounding (a box that letterboxing made degenerate is lost).
    """
    result = []
    for t in targets:
        boxes = boxes_to_original(
            t["boxes"].float().cpu(), t["scale"].cpu(), t["pad"].cpu(), tuple(int(v) for v in t["orig_size"])
        )
        labels = t["labels"].cpu().numpy().astype(np.int64).reshape(-1)
        difficult = t.get("difficult")
        difficult = (
            np.zeros(len(labels), bool)
            if difficult is None
            else difficult.cpu().numpy().astype(bool).reshape(-1)
        )
        result.append({"boxes": _to_numpy(boxes).reshape(-1, 4), "labels": labels, "difficult": difficult})
    return result


def ground_truth_from_dataset(dataset: Any) -> dict[str, dict[str, np.ndarray]] | None:
    """Ground truth by image id straight from a VOC dataset's annotation records (original pixels, difficult).

    None when the dataset has no `records` (then callers map the transformed targets back instead).
    """
    records = getattr(dataset, "records", None)
    if records is None:
        return None
    return {
        str(r.image_id): {
            "boxes": np.asarray(r.boxes, dtype=np.float32).reshape(-1, 4),
            "labels": np.asarray(r.labels, dtype=np.int64).reshape(-1),
            "difficult": np.asarray(r.difficult, dtype=bool).reshape(-1),
        }
        for r in records
    }


def ground_truths_for(
    targets: list[dict], by_id: dict[str, dict[str, np.ndarray]] | None
) -> list[dict[str, np.ndarray]]:
    """Ground truth of a batch: from the annotation records when available, else mapped back from targets."""
    if by_id is not None and all(str(t["image_id"]) in by_id for t in targets):
        return [by_id[str(t["image_id"])] for t in targets]
    return ground_truth_to_original(targets)
