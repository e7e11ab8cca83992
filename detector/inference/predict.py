"""Prediction with exported weights: load the detector, letterbox any images, predict, map boxes back.

No Lightning here: exported `.safetensors` weights carry the config YAML and class names in their metadata,
so `load_detector(path)` alone rebuilds the model; nothing is unpickled. `predict` takes any module with the
detector interface, the ONNX runtime's `OnnxDetector` included.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from detector.config import Config, from_yaml
from detector.data.letterbox import boxes_to_original

__all__ = ["expand_image_paths", "letterbox_batch", "load_detector", "predict", "set_detection_settings"]


def load_detector(
    weights_path: str | Path, device: str | torch.device = "cpu", model_cfg: Any = None
) -> tuple[torch.nn.Module, Config, list[str]]:
    """Rebuild a detector from exported weights: (model in eval mode, config, class names).

    A `.onnx` file (tools/export_onnx.py) gives an `OnnxDetector` (onnxruntime, CPU) with the config stored at
    export and `data.size` set to the graph's fixed input size; any other file is read as safetensors.
    With `model_cfg` (the tool's resolved `model` section), its post-processing settings (score threshold,
    NMS IoU, candidates, detections per image) replace the stored ones; the architecture stays the file's.
    Raises WeightsError (naming the file) when the tensors do not fit the model its metadata describes.
    """
    from detector.models import build_model
    from detector.weights import load_state_dict_checked, load_weights

    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".onnx":
        from detector.config import replace_section
        from detector.export.runtime import OnnxDetector

        onnx_model = OnnxDetector(path)  # post-processing is part of the graph: model_cfg cannot change it
        cfg = replace_section(onnx_model.config(), "data", size=onnx_model.size)
        return onnx_model, cfg, onnx_model.class_names
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
    if model_cfg is not None:
        set_detection_settings(model, model_cfg)
    return model.to(device).eval(), cfg, class_names


def set_detection_settings(model: torch.nn.Module, model_cfg: Any) -> None:
    """Give a built detector the post-processing of a `model` config section (no weights change)."""
    from detector.models.faster_rcnn import FasterRCNNDetector
    from detector.models.retinanet import DetectionSettings, RetinaNet
    from detector.models.torchvision_retinanet import TorchvisionRetinaNet

    m = model_cfg
    if isinstance(model, RetinaNet):
        model.detection = DetectionSettings(
            score_thresh=m.score_thresh,
            topk_candidates=m.topk_candidates,
            nms_thresh=m.nms_thresh,
            detections_per_img=m.detections_per_img,
        )
    elif isinstance(model, TorchvisionRetinaNet):
        d = model.detector
        d.score_thresh, d.nms_thresh = m.score_thresh, m.nms_thresh
        d.detections_per_img, d.topk_candidates = m.detections_per_img, m.topk_candidates
    elif isinstance(model, FasterRCNNDetector):
        heads = model.detector.roi_heads
        heads.score_thresh, heads.nms_thresh, heads.detections_per_img = (
            m.score_thresh,
            m.nms_thresh,
            m.detections_per_img,
        )
    else:
        raise TypeError(f"cannot set the post-processing of a {type(model).__name__}")


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
    model: torch.nn.Module,
    images: Sequence[torch.Tensor],
    size: int,
    batch_size: int = 4,
    tta: Sequence[str] = (),
) -> list[dict[str, torch.Tensor]]:
    """Detections for uint8 images of any size, in each image's original pixel coordinates (on the CPU).

    `tta` ("hflip", "vflip", "hvflip"; empty: off) merges the flipped copies' detections
    (`detector.inference.tta.tta_detect`).
    """
    from detector.inference.tta import tta_detect

    device = next(model.parameters()).device
    model.eval()
    results: list[dict[str, torch.Tensor]] = []
    for start in range(0, len(images), batch_size):
        batch, metas = letterbox_batch(images[start : start + batch_size], size)
        outputs = tta_detect(model, batch.to(device), metas, tta) if tta else model(batch.to(device))
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
