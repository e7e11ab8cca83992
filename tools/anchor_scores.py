#!/usr/bin/env python
"""How well trained RetinaNets separate foreground from background anchors on the test images.

For each --weights (repeat the option for several files): the probability every foreground anchor gives
its own class and the highest class probability of every background anchor (ignored anchors left out), as
quantiles; the share of background anchors at or above the model's score threshold (each one a candidate
detection); the share of foreground anchors above the background's 99.9th percentile; and VOC AP. A collapsed
classifier, one that scores every anchor alike (e.g. a fixed-budget OHEM run in docs/ablation.md), shows at a
glance: the quantiles of both groups coincide. Prints a markdown table; with --out also writes
anchor_scores.md and .json there.

Budget: one forward pass per test image and one evaluation per weights file (trees: ~15 s each on a 2-core
CPU), e.g.
  python tools/anchor_scores.py --weights weights/retinanet_mbv2_trees.safetensors data.root=data/trees
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from detector import cli

HEADER = [
    "weights",
    "fg p10",
    "fg p50",
    "fg p90",
    "bg p50",
    "bg p99",
    "bg p99.9",
    "bg >= thresh",
    "fg > bg p99.9",
    "VOC AP",
]


def main(argv: list[str] | None = None) -> int:
    parser = cli.ToolParser(__doc__, weights="many")
    parser.add_argument("--split", help="split to use (default: data.test_split)")
    parser.add_argument("--max-images", type=int, help="score the anchors of this many images at most")
    parser.add_argument("--out", help="folder for anchor_scores.{md,json} (default: print only)")
    return cli.run(parser, run, argv)


def run(args: argparse.Namespace, cfg) -> int:  # noqa: ANN001 - cfg: the overrides checked, unused
    from detector.reporting import machine_description, markdown_table, write_json

    if not args.weights:
        raise ValueError("give at least one --weights file")
    if args.max_images is not None and args.max_images < 1:
        raise ValueError(f"--max-images must be >= 1, got {args.max_images}")
    rows = [score_weights(Path(w), args) for w in args.weights]
    table = markdown_table(HEADER, [_cells(r) for r in rows])
    markdown = "\n".join(
        [
            "# Foreground vs background anchor scores",
            "",
            "fg: each foreground anchor's probability of its own class; bg: each background anchor's highest "
            "class probability (quantiles over the split's anchors); bg >= thresh: background anchors at or "
            "above the model's score threshold; fg > bg p99.9: foreground anchors above the background's "
            "99.9th percentile.",
            "",
            table,
            f"Machine: {machine_description()}.",
            "",
            "Command: `python tools/anchor_scores.py " + " ".join(args.argv) + "`",
            "",
        ]
    )
    print(markdown)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "anchor_scores.md").write_text(markdown)
        write_json(out / "anchor_scores.json", {"command": args.argv, "results": rows})
        print(f"written: {out / 'anchor_scores.md'}, {out / 'anchor_scores.json'}")
    return 0


def score_weights(weights: Path, args: argparse.Namespace) -> dict:
    """The score quantiles, shares and VOC AP of one weights file on the split."""
    import numpy as np

    from detector.config import apply_overrides, replace_section
    from detector.data.datamodule import DetectionDataModule
    from detector.evaluation.report import evaluate_split
    from detector.inference.predict import load_detector
    from detector.study.anchors import anchor_scores

    model, cfg, class_names = load_detector(weights)
    cfg = apply_overrides(cfg, args.overrides)
    if args.split:
        cfg = replace_section(cfg, "data", test_split=args.split)
    dm = DetectionDataModule(cfg.data, seed=cfg.train.seed, class_names=class_names)
    dm.setup("test")
    fg, bg, images = anchor_scores(model, dm.test_dataloader(), args.max_images)
    if fg.size == 0 or bg.size == 0:
        raise ValueError(f"{weights}: need foreground and background anchors, got {fg.size} and {bg.size}")
    report, _ = evaluate_split(model, cfg, class_names, split=args.split, fps_iters=0)
    bg_top = float(np.quantile(bg, 0.999))
    return {
        "weights": str(weights),
        "images": images,
        "foreground": int(fg.size),
        "background": int(bg.size),
        "fg": {str(q): float(np.quantile(fg, q)) for q in (0.1, 0.5, 0.9)},
        "bg": {str(q): float(np.quantile(bg, q)) for q in (0.5, 0.99, 0.999)},
        "score_thresh": float(model.score_thresh),
        "bg_at_or_above_thresh": float((bg >= model.score_thresh).mean()),
        "fg_above_bg_p999": float((fg > bg_top).mean()),
        "voc_ap": report["voc"]["map"],
    }


def _cells(r: dict) -> list[str]:
    from detector.reporting import fmt

    quantiles = [fmt(r["fg"][q]) for q in ("0.1", "0.5", "0.9")] + [
        fmt(r["bg"][q]) for q in ("0.5", "0.99", "0.999")
    ]
    shares = [f"{100 * r['bg_at_or_above_thresh']:.1f}%", f"{100 * r['fg_above_bg_p999']:.1f}%"]
    return [Path(r["weights"]).stem, *quantiles, *shares, fmt(r["voc_ap"])]


if __name__ == "__main__":
    sys.exit(main())
