"""Evaluate a split: run the model over the eval loader, VOC and COCO metrics, speed, COCO results export.

`evaluate_split(model, cfg, class_names)` gives the report every tool prints and writes (tools/eval.py,
the demo, the study tools); ground truth comes from the dataset's own records (`detector.data.ground_truth`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from detector.config import Config, replace_section, split_roots
from detector.data.ground_truth import detections_to_original, ground_truth_from_dataset, ground_truths_for

__all__ = ["collect_predictions", "count_parameters", "evaluate_split", "measure_speed", "to_coco_results"]


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters (trainable or frozen) of the model."""
    return sum(p.numel() for p in model.parameters())


@torch.inference_mode()
def collect_predictions(
    model: torch.nn.Module, loader: Any, tta: Sequence[str] = ()
) -> tuple[list[str], list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    """Run the model over an eval loader: (image ids, detections, ground truths), all in original pixels.

    Ground truth comes from the loader's dataset annotation records when it has them. `tta` (flips, empty:
    off) merges flipped copies of each batch (`detector.inference.tta.tta_detect`).
    """
    from detector.inference.tta import tta_detect

    by_id = ground_truth_from_dataset(getattr(loader, "dataset", None))
    device = next(model.parameters()).device
    model.eval()
    ids: list[str] = []
    dets: list[dict[str, np.ndarray]] = []
    gts: list[dict[str, np.ndarray]] = []
    for images, targets in loader:
        images = images.to(device)
        outputs = tta_detect(model, images, targets, tta) if tta else model(images)
        dets.extend(detections_to_original(outputs, targets))
        gts.extend(ground_truths_for(targets, by_id))
        ids.extend(str(t["image_id"]) for t in targets)
    return ids, dets, gts


def to_coco_results(image_ids: Sequence[str], detections: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """COCO results records: image_id, category_id (1..C), bbox [x, y, w, h] in original pixels, score."""
    records = []
    for image_id, det in zip(image_ids, detections, strict=True):
        boxes = np.asarray(det["boxes"], dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(det["scores"], dtype=np.float64).reshape(-1)
        labels = np.asarray(det["labels"], dtype=np.int64).reshape(-1)
        for (x1, y1, x2, y2), score, label in zip(boxes, scores, labels, strict=True):
            records.append(
                {
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": [
                        round(float(x1), 2),
                        round(float(y1), 2),
                        round(float(x2 - x1), 2),
                        round(float(y2 - y1), 2),
                    ],
                    "score": round(float(score), 5),
                }
            )
    return records


def evaluate_split(
    model: torch.nn.Module,
    cfg: Config,
    class_names: Sequence[str],
    split: str | None = None,
    fps_iters: int = 10,
    collect: Any = None,
    tta: Sequence[str] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Evaluate on `split` (default `data.test_split`): (JSON-ready report, `voc_ap` area result).

    The report holds per-class AP (VOC area and VOC07 11-point, IoU 0.5), their means, the COCO metrics,
    FPS (model only at batch 1 and `data.batch_size`, end to end at batch 1; skipped when `fps_iters` is 0)
    and the parameter count. The `voc_ap` result (with precision/recall curves) is what the PR plots need.

    The report also holds VOC AP at IoU 0.4 (`voc.map40`, per class `ap40`) and, under `prf` keyed by IoU
    ("0.4", "0.5" and `eval.iou`), precision / recall / F1 at `eval.score` and the best-F1 threshold. The
    area result carries `details` (match records at `eval.iou`, image ids and files) for the report page.
    `collect(model, loader) -> (ids, detections, ground truths)` replaces `collect_predictions` (tiled
    prediction of full-size images: `detector.inference.tiling.TiledCollector`, which then takes the same
    `tta`). `tta`: flip test-time augmentation ("hflip", "vflip", "hvflip"; empty: off; None: `eval.tta`),
    recorded in the report as `tta`; FPS is measured without it.
    """
    from functools import partial

    from detector.data.datamodule import DetectionDataModule
    from detector.evaluation.coco import coco_ap
    from detector.evaluation.matching import iou_key, prf_by_iou
    from detector.evaluation.voc import voc_ap
    from detector.inference.tta import parse_tta

    split = split or cfg.data.test_split
    data_cfg = replace_section(cfg, "data", test_split=split).data
    dm = DetectionDataModule(data_cfg, seed=cfg.train.seed, class_names=class_names)  # refuses other classes
    dm.setup("test")
    loader = dm.test_dataloader()
    tta = parse_tta(cfg.eval.tta if tta is None else tta)
    if collect is None:
        collect = partial(collect_predictions, tta=tta)
    elif tuple(getattr(collect, "tta", ())) != tta:
        applied = list(getattr(collect, "tta", ()))
        raise ValueError(f"evaluate_split: tta={list(tta)} but the collect function applies {applied}")
    ids, dets, gts = collect(model, loader)
    n_cls = len(class_names)
    area = voc_ap(dets, gts, 0.5, use_07_metric=False, num_classes=n_cls)
    p11 = voc_ap(dets, gts, 0.5, use_07_metric=True, num_classes=n_cls)
    coco = coco_ap(dets, gts, list(class_names))
    # precision / recall / F1 at IoU 0.4, 0.5 and eval.iou, at eval.score (one matching: the devkit's)
    prf, records = prf_by_iou(dets, gts, class_names, cfg.eval.score, (0.4, 0.5, cfg.eval.iou))
    ap40 = prf[iou_key(0.4)]
    per_class = []
    for c, name in enumerate(class_names, start=1):
        per_class.append(
            {
                "class": name,
                "num_gt": int(area["num_gt"].get(c, 0)),
                "num_det": int(sum(int((np.asarray(d["labels"]) == c).sum()) for d in dets)),
                "ap": _finite_or_none(area["ap"].get(c)),
                "ap_07": _finite_or_none(p11["ap"].get(c)),
                "ap40": _finite_or_none(ap40["per_class"][c - 1]["ap"]),
            }
        )
    report: dict[str, Any] = {
        "split": split,
        "data_root": split_roots(data_cfg, split),
        "num_images": len(ids),
        "size": int(cfg.data.size),
        "model": cfg.model.name,
        "backbone": cfg.model.backbone.name,
        "params": count_parameters(model),
        "tta": list(tta),
        "voc": {
            "map": _finite_or_none(area["map"]),
            "map_07": _finite_or_none(p11["map"]),
            "map40": ap40["map"],
            "per_class": per_class,
        },
        "coco": {k: float(v) for k, v in coco.items()},
        "eval": {"iou": float(cfg.eval.iou), "score": float(cfg.eval.score)},
        "prf": prf,
    }
    # what the report page needs (detector.html_report): the match records at eval.iou and the image files
    paths = {str(r.image_id): str(r.image_path) for r in getattr(loader.dataset, "records", [])}
    area["details"] = {
        "records": records[iou_key(cfg.eval.iou)],
        "image_ids": ids,
        "image_paths": [paths.get(i, "") for i in ids],
    }
    if fps_iters > 0:
        report["speed"] = measure_speed(
            model,
            cfg,
            [str(getattr(r, "image_path", "")) for r in getattr(loader.dataset, "records", [])],
            fps_iters,
        )
    return report, area


def measure_speed(
    model: torch.nn.Module, cfg: Config, image_paths: Sequence[str], iters: int
) -> dict[str, Any]:
    """Model-only FPS at batch 1 and `data.batch_size`; end-to-end FPS at batch 1 on the given files."""
    from detector.evaluation.speed import measure_end_to_end_fps, measure_fps

    device = next(model.parameters()).device
    size = int(cfg.data.size)
    batch = max(1, int(cfg.data.batch_size))
    speed: dict[str, Any] = {"device": str(device), "size": size, "iters": iters}
    speed["model_bs1"] = measure_fps(model, size, batch_size=1, device=device, warmup=2, iters=iters)
    if batch > 1:
        speed[f"model_bs{batch}"] = measure_fps(
            model, size, batch_size=batch, device=device, warmup=1, iters=max(1, iters // batch)
        )
    paths = [p for p in image_paths if p]
    if paths:
        speed["end_to_end_bs1"] = measure_end_to_end_fps(
            model, paths, size, device=device, batch_size=1, warmup=2, iters=iters
        )
    return speed


def _finite_or_none(value: Any) -> float | None:
    """JSON-safe float: NaN/None (undefined AP) become None."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value
