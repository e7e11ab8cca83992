"""What the comparison study measures beyond accuracy: GFLOPs, train seconds per step, evaluation at several
input sizes, and where two AP-vs-latency curves cross.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from detector.config import Config, replace_section
from detector.study.runs import TrainedModel

__all__ = ["count_gflops", "curve_crossings", "evaluate_at_sizes", "first_train_batch", "time_train_steps"]


def count_gflops(model: torch.nn.Module, size: int, device: str | torch.device = "cpu") -> float:
    """GFLOPs of one eval forward at batch 1, `size` x `size` (FlopCounterMode: 2 FLOPs per multiply-add;
    convolutions and matmuls, the detector's bulk; NMS and elementwise ops are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    image = torch.zeros(1, 3, size, size, dtype=torch.uint8, device=device)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(image)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9


MIXED_PRECISION = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def time_train_steps(
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: list[dict],
    steps: int = 5,
    warmup: int = 1,
    precision: str = "32-true",
) -> float:
    """Median seconds of one training step (forward, loss, backward, SGD step) on a fixed batch, on the
    model's device, under autocast when `precision` (`train.precision`) is a mixed one, as Lightning trains.

    Runs on a deep copy, so the trained model is untouched; data loading and validation are excluded. On a
    GPU each step is timed from a synchronized start to a synchronized end (kernels run asynchronously).
    """
    from detector.evaluation.speed import synchronize

    if steps < 1 or warmup < 0:
        raise ValueError(f"steps must be >= 1 and warmup >= 0, got {steps}, {warmup}")
    work = copy.deepcopy(model).train()
    device = next(work.parameters()).device
    params = [p for p in work.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-6, momentum=0.9)
    images = images.to(device)
    plain = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]
    dtype = MIXED_PRECISION.get(precision)
    times = []
    for i in range(warmup + steps):
        synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = sum(work(images, plain).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return float(statistics.median(times))


def first_train_batch(cfg: Config) -> tuple[torch.Tensor, list[dict]]:
    """One training batch (augmented, letterboxed to `data.size`) of the config's train split."""
    from detector.data.datamodule import DetectionDataModule

    dm = DetectionDataModule(cfg.data, seed=cfg.train.seed)
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def evaluate_at_sizes(
    trained: TrainedModel, sizes: Sequence[int], fps_iters: int = 10
) -> list[dict[str, Any]]:
    """Evaluate on the test split at each input size: AP (VOC area, VOC07 11-point, COCO) and speed.

    Speed (when `fps_iters` > 0): model-only FPS at batch 1 on random images, and end-to-end latency at
    batch 1 (decode, letterbox, model, boxes back) on the test files.
    """
    from detector.evaluation.report import evaluate_split

    rows = []
    for size in sizes:
        cfg = replace_section(trained.cfg, "data", size=int(size))
        report, _ = evaluate_split(trained.model, cfg, trained.class_names, fps_iters=fps_iters)
        speed = report.get("speed", {})
        e2e = speed.get("end_to_end_bs1", {})
        rows.append(
            {
                "size": int(size),
                "voc_ap": report["voc"]["map"],
                "voc_ap_07": report["voc"]["map_07"],
                "coco": report["coco"],
                "fps_model_bs1": speed.get("model_bs1", {}).get("fps"),
                "fps_end_to_end_bs1": e2e.get("fps"),
                "latency_end_to_end_ms": e2e.get("latency_ms_median"),
                "num_images": report["num_images"],
            }
        )
    return rows


def curve_crossings(curves: Mapping[str, Sequence[tuple[float, float, int]]]) -> list[str]:
    """Where two AP-vs-latency curves cross: one sentence per crossing (latency interpolated linearly)."""
    names = sorted(curves)
    notes = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            pa = sorted((float(x), float(y)) for x, y, _ in curves[a])
            pb = sorted((float(x), float(y)) for x, y, _ in curves[b])
            if len(pa) < 2 or len(pb) < 2:
                continue
            lo, hi = max(pa[0][0], pb[0][0]), min(pa[-1][0], pb[-1][0])
            if hi <= lo:
                continue
            grid = np.linspace(lo, hi, 200)
            diff = np.interp(grid, *zip(*pa, strict=True)) - np.interp(grid, *zip(*pb, strict=True))
            flips = np.nonzero(np.sign(diff[:-1]) * np.sign(diff[1:]) < 0)[0]
            for k in flips:
                notes.append(f"{a} and {b} cross near {grid[k]:.0f} ms")
    return notes
