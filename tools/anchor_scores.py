#!/usr/bin/env python
"""How well trained RetinaNets separate foreground from background anchors on the test images.

For each --weights: the probability every foreground anchor gives its own class and the highest class
probability of every background anchor (ignored anchors left out), as quantiles; the share of background
anchors at or above the model's score threshold (each one a candidate detection); the share of foreground
anchors above the background's 99.9th percentile; and VOC AP. A collapsed classifier, one that scores every
anchor alike (e.g. a fixed-budget OHEM run in docs/ablation.md), shows at a glance: the quantiles of both
groups coincide. Prints a markdown table; with --out also writes anchor_scores.md and .json there.

Budget: one forward pass per test image and one evaluation per weights file (trees: ~15 s each on a 2-core
CPU), e.g.
  python tools/anchor_scores.py weights/retinanet_mbv2_trees.safetensors data.root=data/trees
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from detector.cli import run_reporting_errors  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
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
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--split", help="split to use (default: data.test_split)")
    parser.add_argument("--max-images", type=int, help="score the anchors of this many images at most")
    parser.add_argument("--out", help="folder for anchor_scores.{md,json} (default: print only)")
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="WEIGHTS | key=value",
        help="our RetinaNet's safetensors files (tools/train.py), and data overrides (data.root=...)",
    )
    args = parser.parse_intermixed_args(argv)  # weights and overrides may come before and after options
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.overrides = [a for a in args.inputs if "=" in a and not Path(a).exists()]
    args.weights = [a for a in args.inputs if a not in args.overrides]
    if not args.weights:
        parser.error("give at least one weights file")
    missing = [w for w in args.weights if not Path(w).is_file()]
    if missing:
        parser.error(f"weights files not found: {', '.join(missing)}")
    if args.max_images is not None and args.max_images < 1:
        parser.error(f"--max-images must be >= 1, got {args.max_images}")
    return run_reporting_errors(run, args)


def run(args: argparse.Namespace) -> int:
    from detector import study

    rows = [score_weights(Path(w), args) for w in args.weights]
    table = study.markdown_table(HEADER, [_cells(r) for r in rows])
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
            f"Machine: {study.machine_description()}.",
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
        study.write_json(out / "anchor_scores.json", {"command": args.argv, "results": rows})
        print(f"written: {out / 'anchor_scores.md'}, {out / 'anchor_scores.json'}")
    return 0


def score_weights(weights: Path, args: argparse.Namespace) -> dict:
    """The score quantiles, shares and VOC AP of one weights file on the split."""
    import numpy as np

    from detector import study
    from detector.data.datamodule import VOCDataModule
    from detector.inference import apply_overrides, evaluate_split, load_detector

    model, cfg, class_names = load_detector(weights)
    cfg = apply_overrides(cfg, args.overrides + ([f"data.test_split={args.split}"] if args.split else []))
    dm = VOCDataModule(cfg.data, seed=cfg.train.seed)
    dm.setup("test")
    fg, bg, images = study.anchor_scores(model, dm.test_dataloader(), args.max_images)
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
    from detector.study import fmt

    quantiles = [fmt(r["fg"][q]) for q in ("0.1", "0.5", "0.9")] + [
        fmt(r["bg"][q]) for q in ("0.5", "0.99", "0.999")
    ]
    shares = [f"{100 * r['bg_at_or_above_thresh']:.1f}%", f"{100 * r['fg_above_bg_p999']:.1f}%"]
    return [Path(r["weights"]).stem, *quantiles, *shares, fmt(r["voc_ap"])]


if __name__ == "__main__":
    sys.exit(main())
