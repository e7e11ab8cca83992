#!/usr/bin/env python
"""Detect objects in images: `tools/infer.py --weights W IMAGES_OR_FOLDERS... [--out DIR] [--score 0.3]`.

With `--backend onnx --model model.onnx` (from tools/export_onnx.py) the same runs through onnxruntime on the
CPU instead of PyTorch, with the same outputs; needs `pip install 'focaldet[onnx]'`.

Any image size and mode. Large images run by tiles (`--tile N`, `--overlap F`; automatic above twice the
model input size, `--tile 0` turns it off), merged over the whole image. A georeferenced GeoTIFF also gets
`<stem>.geojson` (box polygons in its CRS; needs `pip install 'focaldet[geo]'`).
Writes each image with its detections drawn (class name and score) and one
COCO-results JSON (`detections.json`: image_id = file stem, category_id 1..C, bbox xywh in original pixels).
A file that is not a readable image is reported and skipped; the others still run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from detector.cli import fail, print_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", help="safetensors file written by tools/train.py (backend torch)")
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch", help="default torch")
    parser.add_argument("--model", help="ONNX file written by tools/export_onnx.py (backend onnx)")
    parser.add_argument("inputs", nargs="+", metavar="IMAGES_OR_FOLDERS", help="image files and/or folders")
    parser.add_argument("--out", default="outputs/infer", help="output folder (default outputs/infer)")
    parser.add_argument(
        "--score", type=float, default=0.3, help="minimum score to keep and draw (default 0.3)"
    )
    parser.add_argument("--size", type=int, help="letterbox size (default: data.size of the weights' config)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    # -- tiling (logic in detector.tiling; flags to port to detector.cli) --
    parser.add_argument(
        "--tile", type=int, help="tile side in px (default: the model size, for images over twice it; 0: off)"
    )
    parser.add_argument("--overlap", type=float, default=0.25, help="tile overlap fraction (default 0.25)")
    parser.add_argument("--tile-batch", type=int, default=4, help="tiles per forward pass (default 4)")
    parser.add_argument("--no-progress", action="store_true", help="no per-image progress bar on stderr")
    parser.add_argument("--max-pixels", type=int, help="largest image to decode, in pixels (0: no limit)")
    args = parser.parse_args(argv)
    if not 0.0 <= args.score <= 1.0:
        parser.error(f"--score must be in [0, 1], got {args.score}")
    if args.backend == "torch" and not args.weights:
        parser.error("--weights is required with --backend torch")
    if args.backend == "onnx" and not args.model:
        parser.error("--model model.onnx is required with --backend onnx")

    from detector.data.images import ImageReadError, read_image
    from detector.geo import GeoUnavailableError, write_image_geojson
    from detector.inference import expand_image_paths, load_detector, to_coco_results
    from detector.tiling import TileSettings, onnx_predict_batch, predict_image, torch_predict_batch
    from detector.visualize import draw_detections, save_image
    from detector.weights import WeightsError

    try:
        if args.backend == "onnx":
            from detector.onnx_runtime import OnnxDetector

            model = OnnxDetector(args.model)
            class_names, size = model.class_names, model.size
            if args.size and args.size != size:
                raise ValueError(f"{args.model} was exported for --size {size}, got --size {args.size}")
            predict_batch = onnx_predict_batch(model)
        else:
            model, cfg, class_names = load_detector(args.weights, device=args.device)
            size = args.size or cfg.data.size
            predict_batch = torch_predict_batch(model, size)
        nms = _nms_thresh(model) if args.backend == "onnx" else cfg.model.nms_thresh
        settings = TileSettings(
            args.tile, args.overlap, args.tile_batch, nms, progress=False if args.no_progress else None
        )
        settings.check()
    except (ImportError, FileNotFoundError, WeightsError, ValueError) as err:
        return fail(err)
    if size <= 0 or size % 32:
        return fail(ValueError(f"--size must be a positive multiple of 32, got {size}"))
    files, problems = expand_image_paths(args.inputs)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    ids, dets, rows = [], [], []
    geo_hint = ""
    used_names: set[str] = set()
    for path in files:
        try:
            image = read_image(path, max_pixels=args.max_pixels)
        except ImageReadError as err:
            problems.append(f"skipped (not a readable image): {err}")
            continue
        det = predict_image(predict_batch, image, size, settings, desc=path.name)
        keep = det["scores"] >= args.score
        det = {k: v[keep] for k, v in det.items()}
        drawn = draw_detections(image, det["boxes"], det["labels"], det["scores"], class_names)
        name = _unique_name(path.stem, used_names)
        save_image(drawn, out_dir / f"{name}.png")
        try:  # map coordinates for a georeferenced GeoTIFF
            write_image_geojson(path, det, class_names, out_dir / f"{name}.geojson")
        except GeoUnavailableError as err:
            geo_hint = str(err)
        ids.append(path.stem)
        dets.append({k: v.numpy() for k, v in det.items()})
        counts = {class_names[int(c) - 1]: int((det["labels"] == c).sum()) for c in det["labels"].unique()}
        rows.append(
            (
                str(path),
                f"{image.shape[2]}x{image.shape[1]}",
                len(det["scores"]),
                ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "-",
            )
        )

    results = to_coco_results(ids, dets)
    json_path = out_dir / "detections.json"
    json_path.write_text(json.dumps(results, indent=1))
    print_table(
        f"detections with score >= {args.score}", rows, header=("image", "size (WxH)", "boxes", "classes")
    )
    for problem in problems:
        print(problem, file=sys.stderr)
    if geo_hint:
        print(geo_hint, file=sys.stderr)
    summary = f"{len(rows)} image(s) processed, {len(problems)} problem(s)"
    print(f"\n{summary}; drawings and {json_path.name} in {out_dir}")
    return 0 if rows else 1


def _nms_thresh(model) -> float:
    """The exported model's NMS IoU from its stored config (0.5 when the export holds no config)."""
    try:
        return float(model.config().model.nms_thresh)
    except ValueError:
        return 0.5


def _unique_name(stem: str, used: set[str]) -> str:
    """Output file name for a stem, suffixed when two inputs share it (a/x.jpg, b/x.png)."""
    name, i = stem, 1
    while name in used:
        name, i = f"{stem}_{i}", i + 1
    used.add(name)
    return name


if __name__ == "__main__":
    sys.exit(main())
