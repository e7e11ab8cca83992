#!/usr/bin/env python
"""Build the bundled tree-crown dataset (VOC layout) from the installed deepforest==2.1.0 package data.

Usage: `python tools/prepare_trees.py [--out data/trees] [--source DIR]`. Idempotent: a re-run rewrites
nothing and gives byte-identical files.
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
    return cli.run(parser, prepare, argv)


def prepare(args) -> int:  # noqa: ANN001
    from detector.data.trees import build_trees_dataset, summary_rows

    summary = build_trees_dataset(args.out, args.source)
    print(
        f"tree dataset in {summary['out_dir']} (from {summary['source_dir']}; "
        f"{summary['files_written']} file(s) written)"
    )
    print(cli.format_table(summary_rows(summary), header=("split", "sources", "tiles", "boxes")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
