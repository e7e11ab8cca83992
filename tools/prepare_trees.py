#!/usr/bin/env python
"""Build the bundled tree-crown dataset (VOC layout) from the installed deepforest==2.1.0 package data.

Usage: `python tools/prepare_trees.py [--out data/trees] [--source DIR] [--whole data/trees_whole]`.
Idempotent: a re-run rewrites nothing and gives byte-identical files. `--whole DIR` also writes the source
orthophotos whole (same splits) for tiled evaluation (`tools/eval.py data.root=DIR`), to compare with the
per-tile evaluation of the same area.
"""

from __future__ import annotations

import sys

from detector import cli


def main(argv: list[str] | None = None) -> int:
    parser = cli.ToolParser(__doc__, config=False)
    parser.add_argument("--out", default="data/trees", help="output VOC year folder (default: data/trees)")
    parser.add_argument(
        "--source", default=None, help="folder with the source PNG+XML (default: deepforest's data/)"
    )
    parser.add_argument("--whole", metavar="DIR", help="also write the whole source images as VOC in DIR")
    return cli.run(parser, prepare, argv)


def prepare(args) -> int:  # noqa: ANN001
    from detector.data.trees import SUMMARY_HEADER, build_trees_dataset, summary_rows

    summary = build_trees_dataset(args.out, args.source)
    print(
        f"tree dataset in {summary['out_dir']} (from {summary['source_dir']}; "
        f"{summary['files_written']} file(s) written)"
    )
    print(cli.format_table(summary_rows(summary), header=SUMMARY_HEADER))
    if args.whole:
        from detector.data.tree_sources import build_tree_sources

        whole = build_tree_sources(args.whole, args.source)
        print(f"whole source images in {whole['out_dir']} ({whole['files_written']} file(s) written)")
        for split, info in whole["splits"].items():
            print(f"  {split}: {', '.join(info['sizes'])} px, {info['boxes']} boxes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
