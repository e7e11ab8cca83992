#!/usr/bin/env python
"""Export trained weights to ONNX: `tools/export_onnx.py --weights W [--size S] [--out model.onnx]
[--dynamic-batch | --batch N] [--opset N]`.

The graph takes uint8 images [B, 3, S, S] (letterboxed RGB) and holds normalization, the network, box
decoding, the score threshold, per-class NMS (ONNX NonMaxSuppression) and the top detections, so a client
needs only onnxruntime. Both detectors export; the Faster R-CNN baseline only with a fixed batch
(torchvision's RPN and RoI heads loop over the traced batch's images). Outputs: boxes [B, D, 4] (xyxy in the
S x S frame), scores [B, D] (descending), labels [B, D] (1..C) and num_detections [B]; rows past
num_detections are padding with score 0. Class names, input size and the config are in the model's
metadata. The export is checked with onnx.checker and, unless --no-verify, run with onnxruntime on a test
pattern against PyTorch. Needs `pip install 'focaldet[onnx]'`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from detector import cli


def main(argv: list[str] | None = None) -> int:
    parser = cli.ToolParser(__doc__, weights="required")
    parser.add_argument("--size", type=int, help="input size S (default: data.size of the weights' config)")
    parser.add_argument("--out", default="model.onnx", help="output file (default model.onnx)")
    parser.add_argument(
        "--dynamic-batch", action="store_true", help="dynamic batch dimension (RetinaNet only)"
    )
    parser.add_argument("--batch", type=int, default=1, help="fixed batch size of the graph (default 1)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 11; default 17)")
    parser.add_argument(
        "--no-verify", action="store_true", help="skip the onnxruntime-vs-PyTorch check after export"
    )
    return cli.run(parser, export, argv, also=(NotImplementedError,))


def export(args, cfg) -> int:  # noqa: ANN001
    from detector.config import to_yaml
    from detector.export.onnx import export_onnx, require_onnx
    from detector.export.verify import verify_export
    from detector.inference.predict import load_detector

    require_onnx("onnx", *(() if args.no_verify else ("onnxruntime",)))
    model, _, class_names = load_detector(args.weights)
    size = args.size or cfg.data.size
    out = export_onnx(
        model,
        args.out,
        size,
        class_names,
        config_yaml=to_yaml(cfg),
        dynamic_batch=args.dynamic_batch,
        opset=args.opset,
        batch_size=args.batch,
    )
    report = None if args.no_verify else verify_export(model, out)
    print(
        f"exported {cfg.model.name} ({len(class_names)} classes, input uint8 [B, 3, {size}, {size}]) to {out}"
    )
    print(f"size: {Path(out).stat().st_size / 1e6:.1f} MB; onnx.checker: ok")
    if report is not None:
        print(
            f"onnxruntime vs PyTorch on a test input: {report['detections']} detection(s) match "
            f"(max |box diff| {report['max_box_diff']:.2e} px, "
            f"max |score diff| {report['max_score_diff']:.2e})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
