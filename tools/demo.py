#!/usr/bin/env python
"""`make demo`: prepare the tree crowns, train the default detector, evaluate it on the test split, draw
two test images.

The test split is also scored with flip test-time augmentation (the three flips of `--tta`, 4 forward
passes per image; skipped with `--no-tta` or when the config's `eval.tta` already sets flips), the variant
that won on validation and was confirmed on test (docs/accuracy.md); the default prediction stays one pass.

Everything goes under `--out` (default demo_out/): the run (checkpoints, curves), the exported weights, the
evaluation (results.json, PR curves, report.html: the page to open) and the drawn detections. Sized to fit
in 20 minutes on a 2-core CPU; `key=value` overrides change the recipe (`train.max_steps=100`),
`data.root=D` where the trees are built.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from detector import cli


def main(argv: list[str] | None = None) -> int:
    from detector.lit import NonFiniteLossError

    parser = cli.ToolParser(__doc__)
    parser.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    parser.add_argument("--score", type=float, default=0.3, help="score threshold of the drawn detections")
    parser.add_argument("--fps-iters", type=int, default=5, help="timed batches per FPS figure; 0 skips FPS")
    parser.add_argument("--no-tta", action="store_true", help="skip the test score with flip TTA")
    return cli.run(parser, demo, argv, also=(NonFiniteLossError,))


def demo(args, cfg) -> int:  # noqa: ANN001
    from detector.config import replace_section, to_yaml
    from detector.data.trees import build_trees_dataset, summary_rows
    from detector.evaluation.report import evaluate_split
    from detector.html_report import write_eval_page
    from detector.inference.predict import load_detector
    from detector.inference.tta import TTA_FLIPS
    from detector.lit import fit

    out = Path(args.out)
    cfg = replace_section(cfg, "output", dir=str(out / "runs"), weights_dir=str(out / "weights"))
    timings: list[tuple[str, str]] = []
    start = time.perf_counter()
    summary = build_trees_dataset(cfg.data.root)  # idempotent: rewrites nothing when present
    print(f"tree dataset in {cfg.data.root}")
    print(cli.format_table(summary_rows(summary), header=("split", "sources", "tiles", "boxes")))
    timings.append(("prepare data", f"{time.perf_counter() - start:.1f} s"))

    t = time.perf_counter()
    result = fit(cfg)
    timings.append(("train", f"{time.perf_counter() - t:.1f} s"))

    t = time.perf_counter()
    model, cfg_w, class_names = load_detector(result.weights)
    report, voc_result = evaluate_split(
        model, cfg_w, class_names, cfg.data.test_split, fps_iters=args.fps_iters
    )
    timings.append(("evaluate", f"{time.perf_counter() - t:.1f} s"))
    tta_rows = []
    if not args.no_tta and not cfg_w.eval.tta:
        t = time.perf_counter()
        tta_report, _ = evaluate_split(model, cfg_w, class_names, cfg.data.test_split, tta=TTA_FLIPS)
        report["tta_voc_ap50"] = tta_report["voc"]["map"]
        name = f"VOC AP50, {cfg.data.test_split} split, flip TTA ({len(TTA_FLIPS) + 1} passes, --tta)"
        tta_rows.append((name, cli.fmt_metric(report["tta_voc_ap50"])))
        timings.append(("evaluate with flip TTA", f"{time.perf_counter() - t:.1f} s"))
    eval_dir = out / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    report["weights"] = str(result.weights)
    report["pr_curves"] = cli.save_pr_curves(voc_result, class_names, eval_dir)
    page = write_eval_page(eval_dir / "results.json", report, voc_result, class_names, to_yaml(cfg_w))
    report["report_page"] = None if page is None else str(page)
    (eval_dir / "results.json").write_text(json.dumps(report, indent=2))

    t = time.perf_counter()
    drawn = draw_examples(model, cfg_w, class_names, out / "detections", args.score)
    timings.append(("draw", f"{time.perf_counter() - t:.1f} s"))
    timings.append(("total", f"{time.perf_counter() - start:.1f} s"))

    cli.print_table("training summary", result.rows())
    cli.print_eval_report(report)
    cli.print_table(
        "demo",
        [
            (f"VOC AP50, {cfg.data.test_split} split", cli.fmt_metric(report["voc"]["map"])),
            *tta_rows,
            *timings,
            ("results", str(eval_dir / "results.json")),
            ("report page", str(page) if page else "not written (see the warning above)"),
            *[(f"drawn ({i + 1})", str(p)) for i, p in enumerate(drawn)],
        ],
    )
    return 0


def draw_examples(model, cfg, class_names, folder: Path, score: float, count: int = 2) -> list[Path]:  # noqa: ANN001
    """Detections (score >= `score`) drawn on the first `count` test images that have ground truth."""
    from detector.data.formats import build_dataset
    from detector.data.images import read_image
    from detector.inference.predict import predict
    from detector.visualize import draw_detections, save_image

    dataset = build_dataset(cfg.data, cfg.data.test_split, classes=list(class_names))
    records = [r for r in dataset.records if len(r.labels)][:count] or dataset.records[:count]
    written = []
    for rec in records:
        image = read_image(rec.image_path)
        det = predict(model, [image], cfg.data.size, tta=tuple(cfg.eval.tta))[0]
        drawn = draw_detections(
            image, det["boxes"], det["labels"], det["scores"], class_names, score_threshold=score
        )
        written.append(save_image(drawn, folder / f"{rec.image_id}.png"))
    return written


if __name__ == "__main__":
    sys.exit(main())
