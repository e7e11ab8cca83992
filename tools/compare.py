#!/usr/bin/env python
"""One-stage vs two-stage: train several detectors the same way and compare accuracy, cost and speed.

Detectors (same data, schedule, input size, hardware, all through the shared Lightning loop):
  retinanet_compact      our RetinaNet as in the config (trees: 128-ch FPN, 128 x 3 GroupNorm heads)
  retinanet              our RetinaNet with the paper's head (256-ch FPN, 256 x 4 heads, no norm, L1 box loss)
  torchvision_retinanet  torchvision's RetinaNet (the reference) with exactly that architecture
  faster_rcnn            the two-stage baseline (torchvision Faster R-CNN on the same backbone/FPN)

Table: parameters, GFLOPs (one forward at the training size, 2 FLOPs per multiply-add), train s/step
(median, batch `data.batch_size`, data loading excluded), FPS at batch 1 (model only, end to end), VOC area AP
and 11-point AP, COCO AP/AP50/AP75 on the test split. Plot: VOC AP against end-to-end latency at each
`--sizes` (models trained at `data.size`, evaluated at each size). Writes compare.md, compare.json and
compare_speed_accuracy.png into --out; runs and weights go to --work-dir.

Seeds: with `--seeds 0,1,2` each detector trains once per seed; accuracy is the mean over the seeds (table:
mean ± sample std, min-max and each seed's VOC AP), speed and cost are measured on the first seed's model.
Each further seed costs its training again plus about a minute of evaluation per detector and size.

Budget: the defaults train 4 detectors for the configs' 300 steps (batch 4, 416 px) on the tree tiles
(data/trees, `python tools/prepare_trees.py`). Measured on a 2-core CPU (docs/compare.md): training takes
13 min for the compact RetinaNet (the demo's recipe), 30 min for each 256x4-head RetinaNet (4x its FLOPs),
21 min for Faster R-CNN, plus 3-5 min of timing and evaluation at 4 sizes per detector: about 1 h 45 min.
`train.max_steps=N` (an override, for every detector) scales the training part; `--only NAME,NAME` and
`--weights PATH` (repeated; each file stands in for the detector whose architecture its config has) skip
detectors; `--reuse` continues an interrupted run, or reads back weights
trained earlier (copied into --work-dir/weights as NAME_sSEED.safetensors). `--device` (default: the GPU
when there is one) is where training, timing and evaluation run; on an NVIDIA H100 the tree study above takes
about 4 minutes (docs/gpu/compare.md). On VOC, GPU:
  python tools/compare.py --config configs/retinanet_mbv2_voc0712.yaml \
      --faster-rcnn-config configs/faster_rcnn_r50_fpn_voc0712.yaml --sizes 320,416,512,608 --out docs/voc
"""

from __future__ import annotations

import sys
from pathlib import Path

from detector import cli

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    from detector.lit import NonFiniteLossError

    parser = cli.ToolParser(__doc__, weights="many", device=True)
    parser.add_argument("--faster-rcnn-config", default=str(ROOT / "configs" / "faster_rcnn_mbv2_trees.yaml"))
    parser.add_argument(
        "--only", type=cli.comma_list(str), help="run only these detectors (default: all four)"
    )
    parser.add_argument("--sizes", type=cli.comma_list(int), default=[256, 320, 416, 512], help="eval sizes")
    parser.add_argument("--fps-iters", type=int, default=10, help="timed batches per FPS figure (>= 1)")
    parser.add_argument("--time-steps", type=int, default=5, help="timed training steps per detector (>= 1)")
    parser.add_argument(
        "--time-warmup",
        type=int,
        default=2,
        help="untimed training steps first (the CPU focal loss compiles)",
    )
    parser.add_argument("--seeds", type=cli.comma_list(int), default=[0], help="train each detector per seed")
    parser.add_argument("--out", default=str(ROOT / "docs"), help="folder for compare.{md,json,html}, PNG")
    parser.add_argument(
        "--report-images", type=int, default=6, help="test images in compare.html per detector (0: no page)"
    )
    parser.add_argument("--work-dir", default=str(ROOT / "runs" / "compare"), help="runs and weights go here")
    parser.add_argument(
        "--reuse", action="store_true", help="load runs that finished in --work-dir with exactly this config"
    )
    return cli.run(parser, compare, argv, also=(NonFiniteLossError,))


def compare(args, cfg) -> int:  # noqa: ANN001 - cfg: the RetinaNet config, checked
    from detector.study.compare import ComparePlan, run_compare

    if args.report_images < 0:
        raise ValueError(f"--report-images must be >= 0, got {args.report_images}")
    if args.fps_iters < 1 or args.time_steps < 1 or args.time_warmup < 0:
        raise ValueError("--fps-iters and --time-steps must be >= 1, --time-warmup >= 0")
    if any(s <= 0 or s % 32 for s in args.sizes):
        raise ValueError(f"--sizes must be positive multiples of 32, got {args.sizes}")
    if len(set(args.seeds)) != len(args.seeds):
        raise ValueError(f"--seeds must not repeat, got {args.seeds}")
    if args.weights and len(args.seeds) > 1:
        raise ValueError("--weights gives one trained model per detector: use it with a single seed")
    device = cli.resolve_device(args.device)
    overrides = list(args.overrides)
    if args.device != "auto":  # train where the study measures
        overrides.append(f"trainer.accelerator={'gpu' if device.startswith('cuda') else 'cpu'}")
    plan = ComparePlan(
        retinanet_config=args.config or cli.DEFAULT_CONFIG,
        faster_rcnn_config=args.faster_rcnn_config,
        overrides=overrides,
        work_dir=args.work_dir,
        out=args.out,
        command="python tools/compare.py " + " ".join(args.argv),
        device=device,
        only=args.only,
        weights=args.weights,
        sizes=args.sizes,
        seeds=args.seeds,
        fps_iters=args.fps_iters,
        time_steps=args.time_steps,
        time_warmup=args.time_warmup,
        reuse=args.reuse,
        report_images=args.report_images,
    )
    run_compare(plan)
    return 0


if __name__ == "__main__":
    sys.exit(main())
