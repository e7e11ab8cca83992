#!/usr/bin/env python
"""Time RetinaNet's two anchor assigners side by side in one process: the batched IoU matcher
(`model.assigner=iou`, the default), ATSS (`model.assigner=atss`) and the reference, torchvision's
`Matcher(0.5, 0.4, allow_low_quality_matches=True)` on `box_iou`, image by image (what torchvision's RetinaNet
runs), on one padded batch of random crown-sized boxes (20-80 px) over the trees config's anchor grid (P3-P7,
9 anchors per location) at --size. The IoU matcher's output is checked equal to the reference's first.

Medians of --repeats calls after warm-up, the three interleaved round-robin so that load changes on a shared
machine hit all alike; prints per box count the IoU matcher's speed-up over torchvision and ATSS / IoU, the
machine and its load average at start and end (a loaded machine inflates all; read the ratios then). Usage:
  python tools/bench_matcher.py --boxes 15,60 --json runs/bench_matcher.json
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a plain venv runs it from the checkout

from detector import cli  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = cli.ToolParser(__doc__, config=False)
    parser.add_argument("--size", type=int, default=416, help="square input side, a multiple of 32 (416)")
    parser.add_argument("--batch", type=int, default=4, help="images per batch (4)")
    parser.add_argument("--boxes", type=cli.comma_list(int), default=[15, 60], help="boxes per image (15,60)")
    parser.add_argument("--topk", type=int, default=9, help="ATSS candidates per level (9)")
    parser.add_argument("--repeats", type=int, default=9, help="timed calls per assigner (9)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (2)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--json", type=Path, help="write the figures here")
    return cli.run(parser, bench, argv, validate=check)


def check(args) -> None:  # noqa: ANN001
    if args.size <= 0 or args.size % 32:
        raise ValueError(f"--size must be a positive multiple of 32, got {args.size}")
    if args.batch < 1 or args.repeats < 1 or args.topk < 1 or min(args.boxes) < 1:
        raise ValueError("--batch, --repeats, --topk and --boxes must be >= 1")


def bench(args) -> int:  # noqa: ANN001
    import torch

    from detector.config import AnchorConfig
    from detector.models.anchors import AnchorGrid
    from detector.models.atss import ATSSMatcher
    from detector.models.matcher import BatchMatcher
    from detector.reporting import format_table, load_report, machine_description
    from detector.study.anchor_fit import pyramid_grid_sizes

    torch.set_num_threads(args.threads)
    device = torch.device(cli.resolve_device(args.device))
    print(f"# anchor assigners on {machine_description(device)}")
    print(f"# {load_report('start')}")
    a = AnchorConfig()
    grid = AnchorGrid([16.0, 32.0, 64.0, 128.0, 256.0], a.scales, a.ratios)  # the trees config's anchors
    anchors, per_level = grid.grid((args.size, args.size), pyramid_grid_sizes(args.size), device)
    from torchvision.models.detection._utils import Matcher
    from torchvision.ops import box_iou

    reference = Matcher(0.5, 0.4, allow_low_quality_matches=True)

    def torchvision_matcher(gt, valid, anchors, per_level):  # noqa: ANN001, ANN202
        return torch.stack([reference(box_iou(gt[b][valid[b]], anchors)) for b in range(gt.shape[0])])

    iou_matcher = BatchMatcher(0.5, 0.4)
    matchers = {"torchvision": torchvision_matcher, "iou": iou_matcher, "atss": ATSSMatcher(args.topk)}
    gen = torch.Generator().manual_seed(0)
    rows, results = [], []
    for count in args.boxes:
        xy = torch.rand(args.batch, count, 2, generator=gen) * (args.size - 80)
        wh = 20 + torch.rand(args.batch, count, 2, generator=gen) * 60
        gt = torch.cat([xy, xy + wh], dim=-1).to(device)
        valid = torch.ones(args.batch, count, dtype=torch.bool, device=device)
        expected = torchvision_matcher(gt, valid, anchors, per_level)
        if not torch.equal(iou_matcher(gt, valid, anchors), expected):
            raise RuntimeError(f"the IoU matcher differs from torchvision's at {count} boxes per image")

        def call(name: str, gt: torch.Tensor = gt, valid: torch.Tensor = valid) -> float:
            start = time.perf_counter()
            matchers[name](gt, valid, anchors, per_level)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return time.perf_counter() - start

        for name in matchers:  # warm-up
            call(name), call(name)
        times: dict[str, list[float]] = {name: [] for name in matchers}
        for _ in range(args.repeats):
            for name in matchers:
                times[name].append(call(name))
        median = {name: statistics.median(t) * 1000 for name, t in times.items()}
        speedup = median["torchvision"] / median["iou"]
        ratio = median["atss"] / median["iou"]
        rows.append([count, *(f"{median[n]:.1f}" for n in matchers), f"{speedup:.2f}x", f"{ratio:.2f}"])
        results.append({"boxes_per_image": count, **{f"{n}_ms": median[n] for n in matchers}})
    header = ["boxes/image", "torchvision ms", "iou ms", "atss ms", "iou speed-up", "atss / iou"]
    print(f"batch {args.batch} x {args.size} px, {anchors.shape[0]} anchors, ATSS topk {args.topk}, medians")
    print(format_table(rows, header))
    end = load_report("end", own_threads=args.threads)
    print(f"# {end}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {"machine": machine_description(device), "load_end": end, "results": results}
        args.json.write_text(json.dumps({**vars_of(args), **report}, indent=2))
    return 0


def vars_of(args) -> dict:  # noqa: ANN001
    keep = ("size", "batch", "boxes", "topk", "repeats", "threads", "device")
    return {k: getattr(args, k) for k in keep}


if __name__ == "__main__":
    sys.exit(main())
