"""The model benchmark behind `tools/bench_model.py`: our RetinaNet, torchvision's with the same weights and
our Faster R-CNN, train step and inference timed side by side (interleaved) on one random batch, after the
outputs are checked to agree. Torch and torchvision only, so it runs on a bare GPU box.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from detector.models.parity import (
    build_faster_rcnn,
    build_ours,
    check_equal,
    copy_weights,
    make_heads_fire,
    random_batch,
)
from detector.models.torchvision_retinanet import build_torchvision_retinanet as build_torchvision
from detector.reporting import machine_description

__all__ = ["markdown_table", "median_time", "run"]


def median_time(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def markdown_table(result: dict) -> str:
    """Rows: train step and inference; columns: seconds per batch and images/s of each model, our speed-up."""
    batch = result["batch"]
    head = (
        "| step | ours s | torchvision RetinaNet s | ours vs torchvision | Faster R-CNN s "
        "| ours vs Faster R-CNN | ours img/s | torchvision img/s | Faster R-CNN img/s |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for phase in ("train", "infer"):
        ours, tv = result[f"{phase}_ours_s"], result[f"{phase}_torchvision_s"]
        if ours is None:  # --infer-only
            continue
        frcnn = result.get(f"{phase}_faster_rcnn_s")
        cells = [phase, f"{ours:.4f}", f"{tv:.4f}", f"{tv / ours:.2f}x"]
        cells += ["-", "-"] if frcnn is None else [f"{frcnn:.4f}", f"{frcnn / ours:.2f}x"]
        cells += [f"{batch / ours:.1f}", f"{batch / tv:.1f}"]
        cells.append("-" if frcnn is None else f"{batch / frcnn:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(args: Any) -> dict:
    """Build, check and time the three detectors for `args` (size, batch, classes, repeats, warmup, device,
    amp, quick, infer_only, no_pretrained); the result dict with medians, speed-ups and the parity check."""
    if args.quick:
        args.size, args.batch, args.repeats, args.warmup = 128, 2, 1, 1
    device = torch.device(args.device)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)

    ours = build_ours(args.classes, not args.no_pretrained)
    tv = build_torchvision(args.classes, args.size)
    make_heads_fire(ours)  # so post-processing and the detection check have real work
    copy_weights(ours, tv)
    frcnn = build_faster_rcnn(ours, args.classes)
    ours.to(device)
    tv.to(device)
    frcnn.to(device)
    images, targets = random_batch(args.batch, args.size, args.classes, gen)
    images = images.to(device)
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    quality = check_equal(ours, tv, images, targets)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp)

    def train_ours():
        with autocast():
            loss = sum(ours(images, targets).values())
        loss.backward()
        ours.zero_grad(set_to_none=True)

    tv_targets = [{"boxes": t["boxes"], "labels": t["labels"] - 1} for t in targets]

    def train_tv():
        with autocast():
            loss = sum(tv(list(images.float() / 255), tv_targets).values())
        loss.backward()
        tv.zero_grad(set_to_none=True)

    def train_frcnn():
        with autocast():
            loss = sum(frcnn(images, targets).values())
        loss.backward()
        frcnn.zero_grad(set_to_none=True)

    def infer_ours():
        with torch.inference_mode(), autocast():
            return ours(images)

    def infer_tv():
        with torch.inference_mode(), autocast():
            return tv(list(images.float() / 255))

    def infer_frcnn():
        with torch.inference_mode(), autocast():
            return frcnn(images)

    steps = {
        "train": {"ours": train_ours, "tv": train_tv, "frcnn": train_frcnn},
        "infer": {"ours": infer_ours, "tv": infer_tv, "frcnn": infer_frcnn},
    }
    if args.infer_only:
        del steps["train"]
    times: dict[str, list[float]] = {f"{phase}_{m}": [] for phase in steps for m in steps[phase]}
    for phase, fns in steps.items():
        for model in (ours, tv, frcnn):
            model.train(phase == "train")
        for i in range(args.warmup + args.repeats):  # alternate so background load hits all alike
            for name, fn in fns.items():
                t = median_time(fn, sync)
                if i >= args.warmup:
                    times[f"{phase}_{name}"].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}

    def ratio(a: str, b: str) -> float | None:
        return med[a] / med[b] if a in med else None

    result = {
        "machine": machine_description(device),
        "device": str(device),
        "amp": args.amp,
        "size": args.size,
        "batch": args.batch,
        "classes": args.classes,
        "repeats": args.repeats,
        "train_ours_s": med.get("train_ours"),
        "train_torchvision_s": med.get("train_tv"),
        "infer_ours_s": med["infer_ours"],
        "infer_torchvision_s": med["infer_tv"],
        "train_faster_rcnn_s": med.get("train_frcnn"),
        "infer_faster_rcnn_s": med["infer_frcnn"],
        "train_speedup": ratio("train_tv", "train_ours"),
        "infer_speedup": ratio("infer_tv", "infer_ours"),
        **quality,
        "times_s": times,
    }
    return result
