#!/usr/bin/env python
"""Evaluate exported weights: `tools/eval.py --weights W [--config C] [key=value ...] [--out results.json]`.

Prints per-class AP (VOC area and VOC07 11-point at IoU 0.5), the means, COCO metrics, FPS and the parameter
count; writes the same numbers as JSON and one precision-recall PNG per class next to it.
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
    # -- tiling of full-size images (logic in detector.tiling; flags to port to detector.cli) --
    parser.add_argument(
        "--tile", type=int, help="tile side in px (default: the model size, for images over twice it; 0: off)"
    )
    parser.add_argument("--overlap", type=float, default=0.25, help="tile overlap fraction (default 0.25)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    args = parser.parse_args(argv)
    if args.fps_iters < 0:
        parser.error(f"--fps-iters must be >= 0, got {args.fps_iters}")
    if args.backend == "torch" and not args.weights:
        parser.error("--weights is required with --backend torch")
    if args.backend == "onnx" and not args.model:
        parser.error("--model model.onnx is required with --backend onnx")

    from detector.config import ConfigError, load_config
    from detector.inference import apply_overrides, evaluate_split, load_detector
    from detector.tiling import TiledCollector, TileSettings, onnx_predict_batch, torch_predict_batch
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
        settings = TileSettings(
            args.tile, args.overlap, max(1, int(cfg.data.batch_size)), nms_thresh=cfg.model.nms_thresh
        )
        settings.check()
        predict_batch = (
            onnx_predict_batch(model) if args.backend == "onnx" else torch_predict_batch(model, cfg.data.size)
        )
        collect = TiledCollector(predict_batch, cfg.data.size, settings)
        report, voc_result = evaluate_split(
            model, cfg, class_names, args.split, fps_iters=args.fps_iters, collect=collect
        )
        report["tiling"] = collect.describe()
        if args.backend == "onnx":
            report.update(backend="onnx", params=model.num_parameters())
    except (ConfigError, ImportError, FileNotFoundError, WeightsError, ValueError) as err:
        return fail(err)
    report["weights"] = str(args.model if args.backend == "onnx" else args.weights)

    out = Path(args.out) if args.out else Path(cfg.output.dir) / cfg.output.name / "eval" / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report["pr_curves"] = save_pr_curves(voc_result, class_names, out.parent)
    out.write_text(json.dumps(report, indent=2))
    print_eval_report(report)
    if report["tiling"]["tiled"]:
        t = report["tiling"]
        print(f"\nfull-size images predicted by tiles: tile {t['tile']}, overlap {t['overlap']}")
    print(f"\nresults: {out}")
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
