#!/usr/bin/env python
"""Loss distribution of a trained RetinaNet (the focal-loss paper's Figure 4) on the test images.

For every anchor of every test image (letterboxed to `data.size`), the focal loss of the trained model's
logits against its matched labels (summed over classes; ignored anchors left out), for each --gammas. Per
gamma and per group (foreground, background) the losses are sorted, normalized to sum 1 and their cumulative
sum plotted against the fraction of anchors. Also reports the share of the background loss carried by the
hardest 1%, 5% and 10% of background anchors: as gamma grows, the loss concentrates on the few hard negatives.
Writes loss_distribution.md, .json and .png into --out.

Budget: one forward pass per test image (trees: 14 tiles, under a minute on a 2-core CPU; VOC07 test:
limit it with --max-images). The weights come from tools/train.py (our RetinaNet only), e.g.
  python tools/train.py
  python tools/loss_distribution.py --weights weights/retinanet_mbv2_trees.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from detector import cli

ROOT = Path(__file__).resolve().parents[1]
FRACTIONS = (0.01, 0.05, 0.10)


def main(argv: list[str] | None = None) -> int:
    parser = cli.ToolParser(__doc__, weights="optional")
    parser.add_argument(
        "--gammas",
        type=cli.comma_list(float),
        default=[0.0, 0.5, 1.0, 2.0],
        help="comma list (default 0,0.5,1,2)",
    )
    parser.add_argument("--split", help="split to use (default: data.test_split)")
    parser.add_argument("--max-images", type=int, help="stop after this many images")
    parser.add_argument(
        "--out", default=str(ROOT / "docs"), help="folder for loss_distribution.{md,json,png}"
    )
    parser.set_defaults(weights=str(ROOT / "weights" / "retinanet_mbv2_trees.safetensors"))
    return cli.run(parser, run, argv)


def run(args: argparse.Namespace, cfg) -> int:  # noqa: ANN001
    from detector.config import replace_section
    from detector.data.datamodule import DetectionDataModule
    from detector.inference.predict import load_detector
    from detector.reporting import fmt, machine_description, markdown_table, write_json
    from detector.study.anchors import hardest_shares, per_anchor_losses
    from detector.visualize import plot_loss_cdf

    if any(g < 0 for g in args.gammas):
        raise ValueError(f"--gammas must be >= 0, got {args.gammas}")
    if args.max_images is not None and args.max_images < 1:
        raise ValueError(f"--max-images must be >= 1, got {args.max_images}")
    model, _, class_names = load_detector(args.weights)
    if args.split:
        cfg = replace_section(cfg, "data", test_split=args.split)
    dm = DetectionDataModule(cfg.data, seed=cfg.train.seed, class_names=class_names)
    dm.setup("test")
    curves, counts = per_anchor_losses(model, dm.test_dataloader(), args.gammas, args.max_images)
    if counts["foreground"] == 0 or counts["background"] == 0:
        raise ValueError(f"need foreground and background anchors, got {counts} (no objects in the split?)")
    out = Path(args.out)
    png = plot_loss_cdf(curves, out / "loss_distribution.png")
    shares = {
        g: {
            "foreground": hardest_shares(fg, FRACTIONS),
            "background": hardest_shares(bg, FRACTIONS),
        }
        for g, (fg, bg) in curves.items()
    }
    machine = machine_description()
    rows = [
        [
            f"{g:g}",
            *(fmt(100 * shares[g]["background"][f], 1) for f in FRACTIONS),
            *(fmt(100 * shares[g]["foreground"][f], 1) for f in FRACTIONS),
        ]
        for g in curves
    ]
    header = [
        "gamma",
        *(f"bg hardest {f:.0%}" for f in FRACTIONS),
        *(f"fg hardest {f:.0%}" for f in FRACTIONS),
    ]
    markdown = "\n".join(
        [
            "# Loss distribution of a trained RetinaNet (focal-loss paper, Figure 4)",
            "",
            f"Weights `{args.weights}` ({cfg.model.backbone.name}, "
            f"trained with gamma {cfg.model.loss.gamma:g}); "
            f"{counts['images']} images of split `{cfg.data.test_split}` at {cfg.data.size} px: "
            f"{counts['foreground']} foreground and {counts['background']} background anchors.",
            "",
            "Share (%) of each group's total focal loss carried by its hardest anchors:",
            "",
            markdown_table(header, rows),
            f"Plot: `{png.name}`. Machine: {machine}.",
            "",
            "Command: `python tools/loss_distribution.py " + " ".join(args.argv) + "`",
            "",
        ]
    )
    (out / "loss_distribution.md").write_text(markdown)
    write_json(
        out / "loss_distribution.json",
        {
            "weights": str(args.weights),
            "machine": machine,
            "counts": counts,
            "gammas": list(curves),
            "shares": {
                str(g): {k: {str(f): v for f, v in s.items()} for k, s in d.items()}
                for g, d in shares.items()
            },
        },
    )
    print(markdown)
    print(f"written: {out / 'loss_distribution.md'}, {out / 'loss_distribution.json'}, {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
