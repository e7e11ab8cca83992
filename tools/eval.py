#!/usr/bin/env python
"""Evaluate exported weights: `tools/eval.py --weights W [--config C] [key=value ...] [--out results.json]`.

Prints per-class AP (VOC area and VOC07 11-point at IoU 0.5), the means, COCO metrics, FPS and the parameter
count; writes the same numbers as JSON and one precision-recall PNG per class next to it. Precision,
recall and F1 (at IoU 0.4, 0.5 and `eval.iou`, score `eval.score`) and the F1-maximizing score come too;
`--report` also writes report.html, a self-contained page with an error gallery, next to the JSON.
The model always comes from the weights file; `--config` and overrides change data and evaluation settings.
With `--backend onnx --model model.onnx` (from tools/export_onnx.py) the exported model is evaluated the same
way through onnxruntime on the CPU, with the config and input size stored in it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from detector.cli import fail, print_eval_report, save_pr_curves


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", help="safetensors file written by tools/train.py (backend torch)")
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch", help="default torch")
    parser.add_argument("--model", help="ONNX file written by tools/export_onnx.py (backend onnx)")
    parser.add_argument("--config", help="YAML whose data section replaces the one stored in the weights")
    parser.add_argument("--split", help="split to evaluate (default: data.test_split)")
    parser.add_argument("--out", help="results JSON (default: <output.dir>/<output.name>/eval/results.json)")
    parser.add_argument("--fps-iters", type=int, default=10, help="timed batches per FPS figure; 0 skips FPS")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu", help="cpu or cuda (default: best)")
    parser.add_argument(
        "--report",
        action="store_true",
        help="also write report.html next to the results JSON: tables, PR curves, error gallery "
        "(at eval.iou and eval.score; opens from disk)",
    )
    parser.add_argument(
        "--report-images", type=int, default=200, help="gallery of --report: the worst N images (default 200)"
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    args = parser.parse_args(argv)
    if args.fps_iters < 0:
        parser.error(f"--fps-iters must be >= 0, got {args.fps_iters}")
    if args.report_images < 1:
        parser.error(f"--report-images must be >= 1, got {args.report_images}")
    if args.backend == "torch" and not args.weights:
        parser.error("--weights is required with --backend torch")
    if args.backend == "onnx" and not args.model:
        parser.error("--model model.onnx is required with --backend onnx")

    from detector.config import ConfigError, load_config
    from detector.inference import apply_overrides, evaluate_split, load_detector
    from detector.weights import WeightsError

    try:
        if args.backend == "onnx":
            from detector.onnx_runtime import OnnxDetector

            model = OnnxDetector(args.model)
            cfg, class_names = model.config(), model.class_names
        else:
            model, cfg, class_names = load_detector(args.weights, device=args.device)
        if args.config:
            cfg.data = load_config(args.config).data
        cfg = apply_overrides(cfg, args.overrides)
        if args.backend == "onnx":  # the graph's input size is fixed at export
            if any(o.startswith("data.size=") for o in args.overrides) and cfg.data.size != model.size:
                raise ConfigError(
                    f"{args.model} was exported for size {model.size}, got data.size={cfg.data.size}"
                )
            cfg = apply_overrides(cfg, [f"data.size={model.size}"])
        report, voc_result = evaluate_split(model, cfg, class_names, args.split, fps_iters=args.fps_iters)
        if args.backend == "onnx":
            report.update(backend="onnx", params=model.num_parameters())
    except (ConfigError, ImportError, FileNotFoundError, WeightsError, ValueError) as err:
        return fail(err)
    report["weights"] = str(args.model if args.backend == "onnx" else args.weights)

    out = Path(args.out) if args.out else Path(cfg.output.dir) / cfg.output.name / "eval" / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report["pr_curves"] = save_pr_curves(voc_result, class_names, out.parent)
    page = None
    if args.report:
        from detector.config import to_yaml
        from detector.html_report import write_eval_page

        device = "cpu" if args.backend == "onnx" else args.device
        page = write_eval_page(
            out, report, voc_result, class_names, to_yaml(cfg), device=device, max_images=args.report_images
        )
        report["report_page"] = None if page is None else str(page)
    out.write_text(json.dumps(report, indent=2))
    print_eval_report(report)
    print(f"\nresults: {out}")
    if page is not None:
        print(f"report page: {page}")
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
