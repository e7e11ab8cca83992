#!/usr/bin/env python
"""Detect objects in images: `tools/infer.py --weights W IMAGES_OR_FOLDERS... [--out DIR] [--score 0.3]`.

Any image size and mode; images, folders, options and `key=value` overrides in any order (`data.size=512`
letterboxes at 512). Large images run by tiles (`--tile N`, `--overlap F`; automatic above twice the model
input size, `--tile 0` turns it off), merged over the whole image. A georeferenced GeoTIFF also gets
`<stem>.geojson` (box polygons in its CRS; needs `pip install 'focaldet[geo]'`). `--weights model.onnx`
(from tools/export_onnx.py) runs the exported graph through onnxruntime on the CPU instead of PyTorch, with
the same outputs; needs `pip install 'focaldet[onnx]'`. `--tta hflip,vflip` (also hvflip; default: the
config's `eval.tta`) merges the detections of flipped copies of each image (or tile) with one NMS at
`model.nms_thresh`.
Writes each image with its detections drawn (class name and score) and one COCO-results JSON
(`detections.json`: image_id = file stem, category_id 1..C, bbox xywh in original pixels). A file that is not
a readable image is reported and skipped; the others still run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from detector import cli


def main(argv: list[str] | None = None) -> int:
    parser = cli.ToolParser(__doc__, weights="required", device=True)
    parser.add_argument("inputs", nargs="+", metavar="IMAGES_OR_FOLDERS", help="image files and/or folders")
    parser.add_argument("--out", default="outputs/infer", help="output folder (default outputs/infer)")
    parser.add_argument(
        "--score", type=float, default=0.3, help="minimum score to keep and draw (default 0.3)"
    )
    cli.add_prediction_options(parser)
    parser.add_argument("--tile-batch", type=int, default=4, help="tiles per forward pass (default 4)")
    parser.add_argument("--no-progress", action="store_true", help="no per-image progress bar on stderr")
    parser.add_argument("--max-pixels", type=int, help="largest image to decode, in pixels (0: no limit)")
    return cli.run(parser, infer, argv, validate=check)


def check(args) -> None:  # noqa: ANN001
    from detector.inference.tta import parse_tta

    args.tta = None if args.tta is None else parse_tta(args.tta)  # None: the config's eval.tta
    if not 0.0 <= args.score <= 1.0:
        raise ValueError(f"--score must be in [0, 1], got {args.score}")


def infer(args, cfg) -> int:  # noqa: ANN001
    from detector.data.images import ImageReadError, read_image
    from detector.data.letterbox import check_letterbox_size
    from detector.evaluation.report import to_coco_results
    from detector.inference.geo import GeoUnavailableError, write_image_geojson
    from detector.inference.predict import expand_image_paths, load_detector
    from detector.inference.tiling import TileSettings, batch_predictor, predict_image
    from detector.visualize import draw_detections, save_image

    model, stored, class_names = load_detector(args.weights, cli.resolve_device(args.device), cfg.model)
    size = check_letterbox_size(int(cfg.data.size))
    if Path(args.weights).suffix == ".onnx" and size != stored.data.size:
        raise ValueError(
            f"{args.weights} was exported for data.size={stored.data.size}, got data.size={size}"
        )
    predict_batch = batch_predictor(model, size, tuple(cfg.eval.tta) if args.tta is None else args.tta)
    progress = False if args.no_progress else None
    settings = TileSettings(args.tile, args.overlap, args.tile_batch, cfg.model.nms_thresh, progress=progress)
    settings.check()
    geo_hint = ""
    files, problems = expand_image_paths(args.inputs)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    ids, dets, rows = [], [], []
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
    cli.print_table(
        f"detections with score >= {args.score}", rows, header=("image", "size (WxH)", "boxes", "classes")
    )
    for problem in problems:
        print(problem, file=sys.stderr)
    if geo_hint:
        print(geo_hint, file=sys.stderr)
    summary = f"{len(rows)} image(s) processed, {len(problems)} problem(s)"
    print(f"\n{summary}; drawings and {json_path.name} in {out_dir}")
    return 0 if rows else 1


def _unique_name(stem: str, used: set[str]) -> str:
    """Output file name for a stem, suffixed when two inputs share it (a/x.jpg, b/x.png)."""
    name, i = stem, 1
    while name in used:
        name, i = f"{stem}_{i}", i + 1
    used.add(name)
    return name


if __name__ == "__main__":
    sys.exit(main())
