"""Inference speed: model-only FPS on random input; end-to-end FPS (decode, letterbox, model, box mapping).

Both warm up first, run under ``torch.inference_mode``, synchronize CUDA before reading the clock, and
report the median and 90th-percentile latency per batch besides the throughput. AMP (autocast) is for CUDA
devices only.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch

__all__ = ["measure_end_to_end_fps", "measure_fps", "synchronize"]

ImageSource = str | os.PathLike[str] | torch.Tensor


def _device(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device} requested but CUDA is not available")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels (CUDA runs them asynchronously): a clock read then counts them."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_amp(device: torch.device, amp: bool) -> None:
    if amp and device.type != "cuda":
        raise ValueError(f"amp=True needs a CUDA device (got {device}); measure CPU speed in fp32")


def _autocast(device: torch.device, amp: bool, amp_dtype: torch.dtype) -> AbstractContextManager:
    _check_amp(device, amp)
    return torch.autocast("cuda", dtype=amp_dtype) if amp else nullcontext()


def _check_counts(warmup: int, iters: int) -> None:
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")


def _latency_stats(seconds: Sequence[float], images: int) -> dict[str, float]:
    times = np.asarray(seconds, dtype=np.float64)
    return {
        "fps": images / float(times.sum()),
        "latency_ms_median": float(np.median(times) * 1e3),
        "latency_ms_p90": float(np.percentile(times, 90) * 1e3),
        "latency_ms_mean": float(times.mean() * 1e3),
        "latency_ms_min": float(times.min() * 1e3),
    }


def measure_fps(
    model: torch.nn.Module,
    size: int,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    warmup: int = 5,
    iters: int = 20,
    amp: bool = False,
    amp_dtype: torch.dtype = torch.float16,
    seed: int = 0,
) -> dict[str, Any]:
    """Model-only speed: forward passes on random uint8 images [B, 3, size, size] in eval mode.

    The model is moved to ``device`` and put in eval mode for the measurement (its train/eval mode is restored
    afterwards). Returns ``fps`` (images per second), per-batch ``latency_ms_median``, ``latency_ms_p90``,
    ``latency_ms_mean``, ``latency_ms_min`` and the settings used.
    """
    if size < 1 or batch_size < 1:
        raise ValueError(f"size and batch_size must be positive, got size={size}, batch_size={batch_size}")
    _check_counts(warmup, iters)
    dev = _device(device)
    generator = torch.Generator().manual_seed(seed)
    shape = (batch_size, 3, size, size)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator).to(dev)
    was_training = model.training
    model.to(dev).eval()
    times: list[float] = []
    try:
        with torch.inference_mode(), _autocast(dev, amp, amp_dtype):
            for i in range(warmup + iters):
                synchronize(dev)
                start = time.perf_counter()
                model(images)
                synchronize(dev)
                if i >= warmup:
                    times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    stats = _latency_stats(times, batch_size * iters)
    return {**stats, "batch_size": batch_size, "size": size, "device": str(dev), "amp": amp, "iters": iters}


class _Stages:
    """Accumulates wall time per pipeline stage."""

    def __init__(self, names: Sequence[str]) -> None:
        self.seconds = dict.fromkeys(names, 0.0)

    def timed(self, name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        out = fn()
        self.seconds[name] += time.perf_counter() - start
        return out


def measure_end_to_end_fps(
    model: torch.nn.Module,
    images: Sequence[ImageSource],
    size: int,
    device: str | torch.device = "cpu",
    batch_size: int = 1,
    warmup: int = 2,
    iters: int | None = None,
    amp: bool = False,
    amp_dtype: torch.dtype = torch.float16,
) -> dict[str, Any]:
    """End-to-end speed of the inference pipeline: decode, letterbox, model, boxes back to the original frame.

    ``images`` are file paths (decoded with ``detector.data.images.read_image`` each time, as in deployment)
    or uint8 tensors [3, H, W] (decode time 0). Batches of ``batch_size`` images cycle through the list:
    ``warmup`` untimed batches, then ``iters`` timed ones (default: one pass over the list). Returns ``fps``,
    per-batch latency statistics, and the mean milliseconds per batch of each stage (``decode_ms``,
    ``preprocess_ms``, ``model_ms`` with the host-to-device copy and synchronization, ``postprocess_ms``).
    """
    from detector.data.images import read_image
    from detector.data.letterbox import boxes_to_original
    from detector.data.transforms import build_eval_transforms

    if len(images) == 0:
        raise ValueError("images is empty: give at least one image path or tensor")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    iters = math.ceil(len(images) / batch_size) if iters is None else iters
    _check_counts(warmup, iters)
    dev = _device(device)
    _check_amp(dev, amp)
    letterbox = build_eval_transforms(size)
    stage_names = ("decode", "preprocess", "model", "postprocess")

    def decode(source: ImageSource) -> torch.Tensor:
        if isinstance(source, torch.Tensor):
            if source.dtype != torch.uint8 or source.ndim != 3 or source.shape[0] != 3:
                got = f"{source.dtype} {tuple(source.shape)}"
                raise ValueError(f"image tensors must be uint8 [3, H, W], got {got}")
            return source
        return read_image(source)

    def run_batch(batch: Sequence[ImageSource], stages: _Stages) -> list[dict[str, torch.Tensor]]:
        decoded = stages.timed("decode", lambda: [decode(s) for s in batch])

        def preprocess() -> tuple[torch.Tensor, list[dict[str, Any]]]:
            pairs = [letterbox(image, None) for image in decoded]
            return torch.stack([p[0] for p in pairs]), [p[1] for p in pairs]

        tensor, metas = stages.timed("preprocess", preprocess)

        def forward() -> list[dict[str, torch.Tensor]]:
            with _autocast(dev, amp, amp_dtype):
                out = model(tensor.to(dev, non_blocking=True))
            synchronize(dev)
            return out

        outputs = stages.timed("model", forward)

        def postprocess() -> list[dict[str, torch.Tensor]]:
            results = []
            for out, meta in zip(outputs, metas, strict=True):
                boxes = out["boxes"].float().cpu()
                boxes = boxes_to_original(boxes, meta["scale"], meta["pad"], meta["orig_size"])
                scores, labels = out["scores"].float().cpu(), out["labels"].cpu()
                results.append({"boxes": boxes, "scores": scores, "labels": labels})
            return results

        return stages.timed("postprocess", postprocess)

    was_training = model.training
    model.to(dev).eval()
    times: list[float] = []
    timed_stages = _Stages(stage_names)
    timed_images = 0
    try:
        with torch.inference_mode():
            for i in range(warmup + iters):
                start_index = (i * batch_size) % len(images)
                batch = [images[(start_index + j) % len(images)] for j in range(batch_size)]
                stages = timed_stages if i >= warmup else _Stages(stage_names)
                synchronize(dev)
                start = time.perf_counter()
                run_batch(batch, stages)
                if i >= warmup:
                    times.append(time.perf_counter() - start)
                    timed_images += len(batch)
    finally:
        model.train(was_training)
    stats = _latency_stats(times, timed_images)
    per_stage = {f"{name}_ms": seconds * 1e3 / iters for name, seconds in timed_stages.seconds.items()}
    return {
        **stats,
        **per_stage,
        "batch_size": batch_size,
        "size": size,
        "device": str(dev),
        "amp": amp,
        "iters": iters,
        "images": timed_images,
    }
