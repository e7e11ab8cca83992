"""Convert a detection dataset between VOC, COCO and YOLO (the source format is detected, or data.format=...).

Usage: python tools/convert_dataset.py SRC_ROOT DST_ROOT --to coco|yolo|voc [--splits train,test]
       [--images copy|symlink|hardlink] [data.format=voc data.classes=[a,b] ...]

Default splits: the config's data.train_split, val_split and test_split (for a COCO source give the annotation
files: --splits annotations/train.json,annotations/val.json). Rounding: see detector/data/convert.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="source dataset folder (data.root)")
    parser.add_argument("dst", help="destination folder (created; files of the same names are replaced)")
    parser.add_argument("--to", required=True, choices=("voc", "coco", "yolo"), help="target format")
    parser.add_argument(
        "--splits", default=None, help="comma-separated source splits (default: the config's)"
    )
    parser.add_argument("--images", default="copy", choices=("copy", "symlink", "hardlink"))
    parser.add_argument("overrides", nargs="*", metavar="data.key=value", help="data config overrides")
    args = parser.parse_intermixed_args(argv)  # overrides may come before or after the options

    from detector.config import load_config
    from detector.data.convert import convert_dataset

    try:
        bad = [o for o in args.overrides if not o.startswith("data.")]
        if bad:
            raise ValueError(f"only data.* overrides apply here, got {bad}")
        cfg = load_config(None, [f"data.root={args.src}", *args.overrides])
        splits = [s for s in args.splits.split(",") if s] if args.splits else None
        summary = convert_dataset(cfg.data, args.dst, args.to, splits, images=args.images)
    except (ValueError, FileNotFoundError) as err:  # config, data and image errors are ValueError subclasses
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"converted {summary['from']} {args.src} -> {summary['to']} {summary['dst']} "
        f"({len(summary['class_names'])} classes: {', '.join(summary['class_names'])})"
    )
    for split, info in summary["splits"].items():
        extra = f", {info['ignored_left_out']} ignored box(es) left out" if info["ignored_left_out"] else ""
        print(
            f"  {split} -> data split {info['written_as']}: {info['images']} images, {info['boxes']} boxes"
            f"{extra}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
