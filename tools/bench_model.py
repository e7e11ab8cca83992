"""Side-by-side speed of our RetinaNet and torchvision's RetinaNet with identical settings, in one process.

Both use a MobileNetV2-FPN backbone with the same weights (ours copied into torchvision's), 256-channel 4-conv
heads, the same anchors, thresholds and L1 box loss, on the same random batch and targets. It checks the
outputs agree, then times a train step (forward + loss + backward) and inference (forward + post-processing).
Our Faster R-CNN baseline (same backbone weights, FPN, anchor sizes) is timed alongside: the two-stage cost.

    python tools/bench_model.py --size 400 --batch 4 --repeats 7 [--device cuda --amp] [--json out.json]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a bare GPU box runs it from the checkout

from detector import cli  # noqa: E402
from detector.models.parity import (  # noqa: E402
    build_faster_rcnn,
    build_ours,
    check_equal,
    copy_weights,
    make_heads_fire,
    random_batch,
)
from detector.models.torchvision_retinanet import (  # noqa: E402
    build_torchvision_retinanet as build_torchvision,  # torchvision's RetinaNet on the same backbone/anchors
)
from detector.reporting import load_report, machine_description  # noqa: E402


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


def main(argv: list[str] | None = None) -> int:
    p = cli.ToolParser(__doc__, config=False)
    p.add_argument("--size", type=int, default=400)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--amp", action="store_true", help="autocast (float16 on cuda, bfloat16 on cpu) for both")
    p.add_argument("--quick", action="store_true", help="tiny smoke run: 128 px, batch 2, 1 repeat")
    p.add_argument("--infer-only", action="store_true", help="skip the train step (most of a CPU run's time)")
    p.add_argument("--no-pretrained", action="store_true", help="random backbone instead of ImageNet weights")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse(argv)
    print(load_report("start"))
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
    print(f"machine: {result['machine']}")
    print(load_report("end"))
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
