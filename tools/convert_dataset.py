"""Convert a detection dataset between VOC, COCO and YOLO (the source format is detected, or data.format=...).

Usage: python tools/convert_dataset.py SRC_ROOT DST_ROOT --to coco|yolo|voc [--splits train,test]
       [--images copy|symlink|hardlink] [data.format=voc data.classes=[a,b] ...]  (overrides anywhere)

Default splits: the config's data.train_split, val_split and test_split (for a COCO source give the annotation
files: --splits annotations/train.json,annotations/val.json). Rounding: see detector/data/convert.py.
"""

from __future__ import annotations

import sys

from detector import cli


def main(argv: list[str] | None = None) -> int:
    parser = cli.ToolParser(__doc__, default_config=None)
    parser.add_argument("src", help="source dataset folder (data.root)")
    parser.add_argument("dst", help="destination folder (created; files of the same names are replaced)")
    parser.add_argument("--to", required=True, choices=("voc", "coco", "yolo"), help="target format")
    parser.add_argument("--splits", type=cli.comma_list(str), help="source splits (default: the config's)")
    parser.add_argument("--images", default="copy", choices=("copy", "symlink", "hardlink"))
    return cli.run(parser, convert, argv)


def convert(args, cfg) -> int:  # noqa: ANN001
    from detector.config import replace_section
    from detector.data.convert import convert_dataset

    data = replace_section(cfg, "data", root=args.src).data
    summary = convert_dataset(data, args.dst, args.to, args.splits, images=args.images)
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
