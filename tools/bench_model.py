"""Side-by-side speed of our RetinaNet and torchvision's RetinaNet with identical settings, in one process.

Both use a MobileNetV2-FPN backbone with the same weights (ours copied into torchvision's), 256-channel 4-conv
heads, the same anchors, thresholds and L1 box loss, on the same random batch and targets. It checks the
outputs agree, then times a train step (forward + loss + backward) and inference (forward + post-processing).
Our Faster R-CNN baseline (same backbone weights, FPN, anchor sizes) is timed alongside: the two-stage cost.

    python tools/bench_model.py --size 400 --batch 4 --repeats 7 [--device cuda --amp] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torchvision.models.detection import RetinaNet as TVRetinaNet
from torchvision.ops import box_iou

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.models.backbones import build_backbone  # noqa: E402
from detector.models.faster_rcnn import FasterRCNNDetector  # noqa: E402
from detector.models.retinanet import RetinaNet  # noqa: E402
from detector.models.torchvision_retinanet import (  # noqa: E402
    build_torchvision_retinanet as build_torchvision,  # torchvision's RetinaNet on the same backbone/anchors
)

SIZES = (32.0, 64.0, 128.0, 256.0, 512.0)
SCALES = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
RATIOS = (0.5, 1.0, 2.0)


def machine(device: torch.device) -> str:
    """One line naming the CPU (or GPU), thread count and library versions."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or "cpu"
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    versions = f"torch {torch.__version__}, torchvision {torchvision.__version__}"
    return f"{name}, {torch.get_num_threads()} threads, {versions}"


def build_ours(num_classes: int, pretrained: bool, channels: int = 256) -> RetinaNet:
    """Our RetinaNet in the benchmark's settings (FPN and 4-conv heads `channels` wide, L1 box loss)."""
    backbone = build_backbone(
        "mobilenet_v2", pretrained=pretrained, trainable_layers=3, mobilenet_c5_layer=18
    )
    return RetinaNet(
        backbone,
        num_classes,
        fpn_channels=channels,
        head_channels=channels,
        head_depth=4,
        anchor_sizes=SIZES,
        anchor_scales=SCALES,
        anchor_ratios=RATIOS,
        box_loss="l1",
        p6_from="p5",
    )


def build_faster_rcnn(ours: RetinaNet, num_classes: int, channels: int = 256) -> FasterRCNNDetector:
    """Our Faster R-CNN baseline on the same backbone architecture and weights, FPN width and anchor sizes."""
    backbone = build_backbone("mobilenet_v2", pretrained=False, trainable_layers=3, mobilenet_c5_layer=18)
    backbone.load_state_dict(ours.backbone.state_dict())
    return FasterRCNNDetector(
        backbone, num_classes, fpn_channels=channels, anchor_sizes=SIZES, anchor_ratios=RATIOS
    )


def copy_weights(ours: RetinaNet, tv: TVRetinaNet) -> None:
    """Copy our parameters and buffers into torchvision's model, part by part in registration order."""
    src, dst = ours.state_dict(), tv.state_dict()
    pairs = [
        ("backbone.", "backbone.body."),
        ("fpn.", "backbone.fpn."),
        ("cls_head.", "head.classification_head."),
        ("box_head.", "head.regression_head."),
    ]
    new = {}
    for ours_prefix, tv_prefix in pairs:
        a = [k for k in src if k.startswith(ours_prefix)]
        b = [k for k in dst if k.startswith(tv_prefix)]
        if len(a) != len(b):
            raise RuntimeError(f"{ours_prefix}: {len(a)} tensors in ours vs {len(b)} in torchvision's")
        for ka, kb in zip(a, b, strict=True):
            if src[ka].shape != dst[kb].shape:
                raise RuntimeError(
                    f"shape mismatch {ka} {tuple(src[ka].shape)} vs {kb} {tuple(dst[kb].shape)}"
                )
            new[kb] = src[ka]
    missing = set(dst) - set(new)
    if missing:
        raise RuntimeError(f"torchvision tensors not covered: {sorted(missing)[:5]}")
    tv.load_state_dict(new)


def make_heads_fire(model: RetinaNet) -> None:
    """Re-initialize the heads so scores vary (an untrained head scores every anchor alike, all ties)."""
    with torch.no_grad():
        for head, std in ((model.cls_head, 0.05), (model.box_head, 0.01)):
            for m in head.tower.modules():
                if isinstance(m, torch.nn.Conv2d):
                    torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            head.predictor.weight.normal_(0, std)
        model.cls_head.predictor.bias.fill_(-2.0)


def random_batch(
    batch: int, size: int, num_classes: int, gen: torch.Generator
) -> tuple[torch.Tensor, list[dict]]:
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=gen)
    targets = []
    for i in range(batch):
        n = 3 + 2 * i
        xy = torch.rand(n, 2, generator=gen) * size * 0.7
        wh = 16 + torch.rand(n, 2, generator=gen) * size * 0.3
        boxes = torch.cat([xy, (xy + wh).clamp(max=size - 1)], 1)
        labels = torch.randint(1, num_classes + 1, (n,), generator=gen)
        targets.append({"boxes": boxes, "labels": labels})
    return images, targets


def median_time(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def check_equal(
    ours: RetinaNet, tv: TVRetinaNet, images: torch.Tensor, targets: list[dict]
) -> dict[str, float]:
    """Max differences of losses and detections between the two models holding the same weights."""
    tv_images = list(images.float() / 255)
    tv_targets = [{"boxes": t["boxes"], "labels": t["labels"] - 1} for t in targets]
    ours.train()
    tv.train()
    with torch.no_grad():
        tv_loss = tv(tv_images, tv_targets)
        normalize, ours.loss_normalize = ours.loss_normalize, "image"  # torchvision's reduction
        try:
            ours_loss = ours(images, targets)
        finally:
            ours.loss_normalize = normalize
    diffs = [abs(float(ours_loss[k]) - float(tv_loss[k])) for k in ours_loss]
    loss_diff = float("nan") if any(d != d for d in diffs) else max(diffs)  # a NaN loss must show
    ours.eval()
    tv.eval()
    with torch.inference_mode():
        a, b = ours(images), tv(tv_images)
    counts = sum(len(x["scores"]) for x in a), sum(len(x["scores"]) for x in b)
    # detections with equal scores may come out in a different order: pair each of ours with the
    # torchvision detection of the same class that overlaps it most. A score perturbation (TF32 convolutions
    # on a GPU) can swap which candidate is an image's 100th, so also count the share of ours matched closely.
    min_iou, score_diff, matched = 1.0, 0.0, 0
    for x, y in zip(a, b, strict=True):
        if len(x["scores"]) == 0 or len(y["scores"]) == 0:
            min_iou = min_iou if len(x["scores"]) == len(y["scores"]) else 0.0
            continue
        iou = box_iou(x["boxes"], y["boxes"]) * (x["labels"][:, None] == y["labels"][None, :] + 1)
        best, j = iou.max(dim=1)
        min_iou = min(min_iou, float(best.min()))
        close = best >= 0.99
        matched += int(close.sum())
        if close.any():
            score_diff = max(score_diff, float((x["scores"] - y["scores"][j])[close].abs().max()))
    return {
        "losses_ours": {k: float(v) for k, v in ours_loss.items()},
        "losses_torchvision": {k: float(v) for k, v in tv_loss.items()},
        "loss_max_abs_diff": loss_diff,
        "matched_fraction_iou99": matched / max(counts[0], 1),
        "detections_ours": counts[0],
        "detections_torchvision": counts[1],
        "matched_min_iou": min_iou,
        "matched_score_max_abs_diff": score_diff,
    }


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=400)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="autocast (float16 on cuda, bfloat16 on cpu) for both")
    p.add_argument("--quick", action="store_true", help="tiny smoke run: 128 px, batch 2, 1 repeat")
    p.add_argument("--infer-only", action="store_true", help="skip the train step (most of a CPU run's time)")
    p.add_argument("--no-pretrained", action="store_true", help="random backbone instead of ImageNet weights")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
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
        "machine": machine(device),
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
    print(f"machine: {result['machine']}")
    print(
        f"{args.size} px, batch {args.batch}, {args.classes} classes, "
        f"median of {args.repeats}, amp={args.amp}"
    )
    print(markdown_table(result))
    print("equal outputs: " + ", ".join(f"{k}={v:g}" for k, v in quality.items() if not isinstance(v, dict)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
