"""Side-by-side speed of our RetinaNet and torchvision's RetinaNet with identical settings, in one process.

Both use a MobileNetV2-FPN backbone with the same weights (ours copied into torchvision's), 256-channel 4-conv
heads, the same anchors, thresholds and L1 box loss, on the same random batch and targets. It checks the
outputs agree, then times a train step (forward + loss + backward) and inference (forward + post-processing).
Our Faster R-CNN baseline (same backbone weights, FPN, anchor sizes) is timed alongside: the two-stage cost.

    python tools/bench_model.py --size 400 --batch 4 --repeats 7 [--device cuda --amp] [--json out.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a bare GPU box runs it from the checkout

from detector import cli  # noqa: E402
from detector.bench.model import markdown_table, run  # noqa: E402
from detector.reporting import load_report  # noqa: E402


def _threads() -> int:
    import torch

    return torch.get_num_threads()


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
    result = run(args)
    print(f"machine: {result['machine']}")
    print(load_report("end", _threads()))
    print(
        f"{args.size} px, batch {args.batch}, {args.classes} classes, "
        f"median of {args.repeats}, amp={args.amp}"
    )
    print(markdown_table(result))
    checks = ("loss_max_abs_diff", "detections_ours", "detections_torchvision", "matched_min_iou")
    checks += ("matched_score_max_abs_diff", "matched_fraction_iou99")
    print("equal outputs: " + ", ".join(f"{k}={result[k]:g}" for k in checks))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
