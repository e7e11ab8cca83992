#!/usr/bin/env python
"""Evaluate exported weights: `tools/eval.py --weights W [--config C] [--split S] [--out results.json]
[key=value ...]`.

Prints per-class AP (VOC area and VOC07 11-point at IoU 0.5), the means, COCO metrics, FPS and the parameter
count; writes the same numbers as JSON and one precision-recall PNG per class next to it. Precision,
recall and F1 (at IoU 0.4, 0.5 and `eval.iou`, score `eval.score`) and the F1-maximizing score come too;
`--report` also writes report.html, a self-contained page with an error gallery, next to the JSON. The
model always comes from the weights file; `--config` (its data section) and overrides change data and
evaluation settings (`model.score_thresh=...` and the other post-processing keys apply to the loaded model).
`--weights model.onnx` (from tools/export_onnx.py) evaluates the exported graph through onnxruntime on the
CPU, with the config and input size stored in it. `--tta hflip,vflip` (default: the config's `eval.tta`)
adds flip test-time augmentation (hflip, vflip, hvflip): each flipped copy's detections are mirrored back and
merged with the original's by one NMS at `model.nms_thresh` (for our RetinaNet over the pre-NMS candidates of
every view); FPS is measured without it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from detector import cli


def main(argv: list[str] | None = None) -> int:
    parser = cli.ToolParser(__doc__, weights="required", device=True)
    parser.add_argument("--split", help="split to evaluate (default: data.test_split)")
    parser.add_argument("--out", help="results JSON (default: <output.dir>/<output.name>/eval/results.json)")
    parser.add_argument("--fps-iters", type=int, default=10, help="timed batches per FPS figure; 0 skips FPS")
    parser.add_argument(
        "--report",
        action="store_true",
        help="also write report.html next to the results JSON: tables, PR curves, error gallery "
        "(at eval.iou and eval.score; opens from disk)",
    )
    parser.add_argument(
        "--report-images", type=int, default=200, help="gallery of --report: the worst N images (default 200)"
    )
    cli.add_prediction_options(parser)
    return cli.run(parser, evaluate, argv, validate=check)


def check(args) -> None:  # noqa: ANN001
    from detector.inference.tta import parse_tta

    args.tta = None if args.tta is None else parse_tta(args.tta)  # None: the config's eval.tta
    if args.fps_iters < 0:
        raise ValueError(f"--fps-iters must be >= 0, got {args.fps_iters}")
    if args.report_images < 1:
        raise ValueError(f"--report-images must be >= 1, got {args.report_images}")


def evaluate(args, cfg) -> int:  # noqa: ANN001
    from detector.evaluation.report import evaluate_split
    from detector.inference.predict import load_detector
    from detector.inference.tiling import TiledCollector, TileSettings, batch_predictor

    model, stored, class_names = load_detector(args.weights, cli.resolve_device(args.device), cfg.model)
    onnx = Path(args.weights).suffix == ".onnx"
    if onnx and cfg.data.size != stored.data.size:  # the graph's input size is fixed at export
        raise ValueError(
            f"{args.weights} was exported for size {stored.data.size}, got data.size={cfg.data.size}"
        )
    settings = TileSettings(args.tile, args.overlap, max(1, int(cfg.data.batch_size)), cfg.model.nms_thresh)
    settings.check()
    tta = tuple(cfg.eval.tta) if args.tta is None else args.tta
    predict_batch = batch_predictor(model, cfg.data.size, tta)
    collect = TiledCollector(predict_batch, cfg.data.size, settings, tta=tta)
    report, voc_result = evaluate_split(
        model, cfg, class_names, args.split, fps_iters=args.fps_iters, collect=collect, tta=tta
    )
    report["tiling"] = collect.describe()
    if onnx:
        report.update(backend="onnx", params=model.num_parameters())
    report["weights"] = str(args.weights)

    out = Path(args.out) if args.out else Path(cfg.output.dir) / cfg.output.name / "eval" / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report["pr_curves"] = cli.save_pr_curves(voc_result, class_names, out.parent)
    page = None
    if args.report:
        from detector.config import to_yaml
        from detector.html_report import write_eval_page

        device = "cpu" if onnx else cli.resolve_device(args.device)
        page = write_eval_page(
            out, report, voc_result, class_names, to_yaml(cfg), device=device, max_images=args.report_images
        )
        report["report_page"] = None if page is None else str(page)
    out.write_text(json.dumps(report, indent=2))
    cli.print_eval_report(report)
    if report["tiling"]["tiled"]:
        t = report["tiling"]
        print(f"\nfull-size images predicted by tiles: tile {t['tile']}, overlap {t['overlap']}")
    print(f"\nresults: {out}")
    if page is not None:
        print(f"report page: {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
