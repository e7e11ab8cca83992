#!/usr/bin/env python
"""Fit `model.anchors` (sizes, scales, ratios) to the training boxes as the model sees them (letterboxed to
data.size): every candidate of a small grid is scored by the share of boxes whose best anchor on the real
P3-P7 grid reaches the matcher's foreground IoU (model.fg_iou_thresh); ties go to fewer anchors per location
(a cheaper head), then to the higher mean best IoU. Prints the top candidates, the config's own anchors for
comparison, and the override line of the winner; --out also writes the whole table as JSON.

Candidates: P3 base sizes --bases (each level doubles it), scale sets [1, 2^1/3, 2^2/3], [1, 2^1/2], [1],
ratio sets [0.5, 1, 2], [1], [0.75, 1, 1.33], [0.8, 1, 1.25]. Reads and letterboxes every training image once
(trees: a few seconds), e.g.
  python tools/fit_anchors.py data.root=data/trees --out runs/fit_anchors.json
"""

from __future__ import annotations

import argparse
import sys

from detector import cli


def main(argv: list[str] | None = None) -> int:
    parser = cli.ToolParser(__doc__)
    parser.add_argument("--split", help="split whose boxes are fitted (default: data.train_split)")
    parser.add_argument(
        "--bases", type=cli.comma_list(float), help="P3 anchor sizes to try (default: 8,12,16,24,32)"
    )
    parser.add_argument("--top", type=int, default=10, help="candidates printed (default 10)")
    parser.add_argument("--max-images", type=int, help="read at most this many images (evenly spaced)")
    parser.add_argument("--out", help="JSON file for every candidate's scores (default: print only)")
    return cli.run(parser, run, argv, validate=check)


def check(args: argparse.Namespace) -> None:
    if args.top < 1:
        raise ValueError(f"--top must be >= 1, got {args.top}")
    if args.max_images is not None and args.max_images < 1:
        raise ValueError(f"--max-images must be >= 1, got {args.max_images}")


def run(args: argparse.Namespace, cfg) -> int:  # noqa: ANN001 - the resolved Config
    from detector.reporting import machine_description, write_json
    from detector.study.anchor_fit import BASES, AnchorCandidate, candidate_grid, fit_anchors, score_candidate

    split = args.split or cfg.data.train_split
    boxes, images = training_boxes(cfg, split, args.max_images)
    size, fg_iou = int(cfg.data.size), float(cfg.model.fg_iou_thresh)
    ranked = fit_anchors(boxes, size, candidate_grid(args.bases or BASES), fg_iou)
    a = cfg.model.anchors
    current = score_candidate(
        boxes, size, AnchorCandidate(tuple(a.sizes), tuple(a.scales), tuple(a.ratios)), fg_iou
    )
    header = ["rank", "sizes (P3..P7)", "scales", "ratios", "per loc", f"IoU >= {fg_iou:g}", "mean best IoU"]
    rows = [_row(str(i + 1), r) for i, r in enumerate(ranked[: args.top])] + [_row("config", current)]
    print(
        f"{len(boxes)} boxes of {images} images of split {split!r}, letterboxed to {size} px; "
        f"{len(ranked)} candidates"
    )
    print(cli.format_table(rows, header))
    best = ranked[0]
    print(
        f"\nbest: {100 * best['covered']:.1f}% of boxes at IoU >= {fg_iou:g} "
        f"(the config's anchors: {100 * current['covered']:.1f}%)"
    )
    print(best["override"])
    if args.out:
        path = write_json(
            args.out,
            {
                "command": args.argv,
                "split": split,
                "images": images,
                "boxes": len(boxes),
                "size": size,
                "fg_iou_thresh": fg_iou,
                "best": best,
                "config": current,
                "candidates": ranked,
                "machine": machine_description(),
            },
        )
        print(f"written: {path}")
    return 0


def training_boxes(cfg, split: str, max_images: int | None):  # noqa: ANN001, ANN201 - Config -> (array, int)
    """All boxes [N, 4] of `split` after the eval letterbox (the training geometry without augmentation),
    read by the data module's reader, and the number of images read."""
    import numpy as np
    from torch.utils.data import DataLoader, Subset

    from detector.data.datamodule import collate_detection
    from detector.data.formats import build_dataset, dataset_class_names
    from detector.data.transforms import build_eval_transforms

    dataset = build_dataset(
        cfg.data, split, build_eval_transforms(cfg.data.size), dataset_class_names(cfg.data)
    )
    if len(dataset) == 0:
        raise ValueError(f"split {split!r} holds no images")
    if max_images is not None and max_images < len(dataset):
        dataset = Subset(dataset, np.linspace(0, len(dataset) - 1, max_images).round().astype(int).tolist())
    loader = DataLoader(
        dataset, batch_size=8, num_workers=int(cfg.data.workers), collate_fn=collate_detection
    )
    boxes = [t["boxes"].numpy() for _, targets in loader for t in targets]
    stacked = np.concatenate(boxes).reshape(-1, 4) if boxes else np.zeros((0, 4), np.float32)
    if len(stacked) == 0:
        raise ValueError(f"split {split!r} holds no boxes to fit anchors to")
    return stacked, len(dataset)


def _row(rank: str, r: dict) -> list[str]:
    def values(xs: list[float]) -> str:
        return ",".join(f"{x:.4g}" for x in xs)

    return [
        rank,
        values(r["sizes"]),
        values(r["scales"]),
        values(r["ratios"]),
        str(r["anchors_per_location"]),
        f"{100 * r['covered']:.1f}%",
        f"{r['mean_best_iou']:.3f}",
    ]


if __name__ == "__main__":
    sys.exit(main())
