"""Inference helpers shared by the tools: load exported weights, letterbox, predict, collect, COCO results.

No Lightning here: exported `.safetensors` weights carry the config YAML and class names in their metadata,
so `load_detector(path)` alone rebuilds the model; nothing is unpickled.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detector.config import Config, ConfigError, from_yaml, split_roots

__all__ = [
    "apply_overrides",
    "collect_predictions",
    "count_parameters",
    "detections_to_original",
    "evaluate_split",
    "expand_image_paths",
    "ground_truth_from_dataset",
    "ground_truth_to_original",
    "ground_truths_for",
    "letterbox_batch",
    "load_detector",
    "measure_speed",
    "predict",
    "to_coco_results",
    "voc_metrics",
]


def _to_numpy(x: Any) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def detections_to_original(outputs: list[dict], targets: list[dict]) -> list[dict[str, np.ndarray]]:
    """Map model outputs in the letterboxed frame back to each image's original pixels (numpy)."""
    from detector.data.transforms import boxes_to_original

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
    from detector.data.transforms import boxes_to_original

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


def voc_metrics(
    detections: list[dict], ground_truths: list[dict], num_classes: int | None = None
) -> dict[str, float]:
    """VOC area mAP@0.5 and VOC07 11-point mAP@0.5 (0.0 when there is no ground truth at all)."""
    from detector.evaluation.voc import voc_ap

    if not any(len(g["labels"]) for g in ground_truths):
        return {"map": 0.0, "map50_07": 0.0}
    area = float(voc_ap(detections, ground_truths, 0.5, use_07_metric=False, num_classes=num_classes)["map"])
    p11 = float(voc_ap(detections, ground_truths, 0.5, use_07_metric=True, num_classes=num_classes)["map"])
    return {"map": 0.0 if math.isnan(area) else area, "map50_07": 0.0 if math.isnan(p11) else p11}


def apply_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
    """`cfg` with dotted `key=value` overrides; unknown keys and bad values raise ConfigError naming them."""
    if not overrides:
        return cfg
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"overrides must be key=value, got {bad}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cfg), OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as err:
        raise ConfigError(f"invalid override: {err}".replace("\n", "; ")) from None
    return from_yaml(OmegaConf.to_yaml(merged))


def load_detector(
    weights_path: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, Config, list[str]]:
    """Rebuild a detector from exported safetensors weights: (model in eval mode, config, class names).

    Raises WeightsError (naming the file) when the tensors do not fit the model its metadata describes.
    """
    from detector.models import build_model
    from detector.weights import load_state_dict_checked, load_weights

    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    state, meta = load_weights(path)
    if "config" not in meta or "class_names" not in meta:
        raise ValueError(
            f"{path}: no focaldet config/class_names in the metadata (not exported by tools/train.py)"
        )
    cfg = from_yaml(meta["config"])
    class_names = list(json.loads(meta["class_names"]))
    cfg.model.backbone.pretrained = False  # every weight comes from the file; no ImageNet lookup needed
    model = build_model(cfg.model, len(class_names))
    # The metadata's config and class names must describe the tensors; a file whose tensors come from another
    # architecture or class count (edited metadata, mixed-up files) fails here with what differs.
    load_state_dict_checked(model, state, path, num_classes=len(class_names))
    return model.to(device).eval(), cfg, class_names


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters (trainable or frozen) of the model."""
    return sum(p.numel() for p in model.parameters())


def letterbox_batch(images: Sequence[torch.Tensor], size: int) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Letterbox uint8 images `[3, H, W]` of any size into one `[B, 3, S, S]` batch + per-image scale/pad."""
    from detector.data.transforms import build_eval_transforms

    transform = build_eval_transforms(size)
    batch, metas = [], []
    for image in images:
        h, w = int(image.shape[-2]), int(image.shape[-1])
        out, target = transform(image, None)
        batch.append(out)
        metas.append({"scale": target["scale"], "pad": target["pad"], "orig_size": (h, w)})
    return torch.stack(batch), metas


@torch.inference_mode()
def predict(
    model: torch.nn.Module, images: Sequence[torch.Tensor], size: int, batch_size: int = 4
) -> list[dict[str, torch.Tensor]]:
    """Detections for uint8 images of any size, in each image's original pixel coordinates (on the CPU)."""
    from detector.data.transforms import boxes_to_original

    device = next(model.parameters()).device
    model.eval()
    results: list[dict[str, torch.Tensor]] = []
    for start in range(0, len(images), batch_size):
        batch, metas = letterbox_batch(images[start : start + batch_size], size)
        outputs = model(batch.to(device))
        for out, meta in zip(outputs, metas, strict=True):
            boxes = boxes_to_original(
                out["boxes"].float().cpu(), meta["scale"], meta["pad"], meta["orig_size"]
            )
            results.append(
                {
                    "boxes": boxes,
                    "scores": out["scores"].float().cpu(),
                    "labels": out["labels"].cpu().to(torch.int64),
                }
            )
    return results


@torch.inference_mode()
def collect_predictions(
    model: torch.nn.Module, loader: Any
) -> tuple[list[str], list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    """Run the model over an eval loader: (image ids, detections, ground truths), all in original pixels.

    Ground truth comes from the loader's dataset annotation records when it has them.
    """
    by_id = ground_truth_from_dataset(getattr(loader, "dataset", None))
    device = next(model.parameters()).device
    model.eval()
    ids: list[str] = []
    dets: list[dict[str, np.ndarray]] = []
    gts: list[dict[str, np.ndarray]] = []
    for images, targets in loader:
        outputs = model(images.to(device))
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


def expand_image_paths(paths: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """Files named directly, plus the files inside named folders (sorted, recursive, hidden ones left out).

    Returns (files, problems); a missing path is a problem, not an exception, so the rest still run.
    Whether each file is really an image is decided when it is read.
    """
    files: list[Path] = []
    problems: list[str] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(
                f
                for f in p.rglob("*")
                if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
            if not found:
                problems.append(f"{p}: folder has no files")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            problems.append(f"{p}: no such file or folder")
    return files, problems


def evaluate_split(
    model: torch.nn.Module,
    cfg: Config,
    class_names: Sequence[str],
    split: str | None = None,
    fps_iters: int = 10,
    collect: Any = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Evaluate on `split` (default `data.test_split`): (JSON-ready report, `voc_ap` area result).

    The report holds per-class AP (VOC area and VOC07 11-point, IoU 0.5), their means, the COCO metrics,
    FPS (model only at batch 1 and `data.batch_size`, end to end at batch 1; skipped when `fps_iters` is 0)
    and the parameter count. The `voc_ap` result (with precision/recall curves) is what the PR plots need.
    `collect(model, loader) -> (ids, detections, ground truths)` replaces `collect_predictions` (tiled
    prediction on full-size images: `detector.tiling.TiledCollector`).
    """
    from detector.data.datamodule import VOCDataModule
    from detector.evaluation.coco import coco_ap
    from detector.evaluation.voc import voc_ap

    if list(cfg.data.classes) != list(class_names):
        raise ConfigError(
            f"data.classes = {list(cfg.data.classes)} differ from the classes the weights were trained on "
            f"({list(class_names)}); evaluate on data with the same class list"
        )
    split = split or cfg.data.test_split
    data_cfg = apply_overrides(cfg, [f"data.test_split={split}"]).data
    dm = VOCDataModule(data_cfg, seed=cfg.train.seed)
    dm.setup("test")
    loader = dm.test_dataloader()
    ids, dets, gts = (collect or collect_predictions)(model, loader)
    n_cls = len(class_names)
    area = voc_ap(dets, gts, 0.5, use_07_metric=False, num_classes=n_cls)
    p11 = voc_ap(dets, gts, 0.5, use_07_metric=True, num_classes=n_cls)
    coco = coco_ap(dets, gts, list(class_names))
    per_class = []
    for c, name in enumerate(class_names, start=1):
        per_class.append(
            {
                "class": name,
                "num_gt": int(area["num_gt"].get(c, 0)),
                "num_det": int(sum(int((np.asarray(d["labels"]) == c).sum()) for d in dets)),
                "ap": _finite_or_none(area["ap"].get(c)),
                "ap_07": _finite_or_none(p11["ap"].get(c)),
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
        "voc": {
            "map": _finite_or_none(area["map"]),
            "map_07": _finite_or_none(p11["map"]),
            "per_class": per_class,
        },
        "coco": {k: float(v) for k, v in coco.items()},
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
