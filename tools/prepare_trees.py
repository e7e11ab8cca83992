"""Build the bundled tree-crown dataset (VOC layout) from the installed deepforest==2.1.0 package data.

Usage: python tools/prepare_trees.py [--out data/trees] [--source DIR] [--whole data/trees_whole]

`--whole DIR` also writes the source orthophotos whole (same splits) for tiled evaluation (`tools/eval.py
data.root=DIR`), to compare with the per-tile evaluation of the same area.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from detector.data.trees import DeepForestNotFoundError, build_trees_dataset  # noqa: E402


def format_summary(summary: dict) -> str:
    """The per-split tile and box counts as a small text table."""
    rows = [("split", "sources", "tiles", "boxes")]
    for split, info in summary["splits"].items():
        rows.append((split, str(len(info["sources"])), str(info["tiles"]), str(info["boxes"])))
    rows.append(
        (
            "total",
            str(sum(len(i["sources"]) for i in summary["splits"].values())),
            str(sum(i["tiles"] for i in summary["splits"].values())),
            str(sum(i["boxes"] for i in summary["splits"].values())),
        )
    )
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    lines = [
        "  ".join(
            cell.ljust(w) if c == 0 else cell.rjust(w)
            for c, (cell, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/trees", help="output VOC year folder (default: data/trees)")
    parser.add_argument(
        "--source", default=None, help="folder with the source PNG+XML (default: deepforest's data/)"
    )
    parser.add_argument("--whole", metavar="DIR", help="also write the whole source images as VOC in DIR")
    args = parser.parse_args(argv)
    try:
        summary = build_trees_dataset(args.out, args.source)
        if args.whole:
            from detector.data.tree_sources import build_tree_sources

            whole = build_tree_sources(args.whole, args.source)
    except DeepForestNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"tree dataset in {summary['out_dir']} (from {summary['source_dir']}; "
        f"{summary['files_written']} file(s) written)"
    )
    print(format_summary(summary))
    if args.whole:
        print(f"whole source images in {whole['out_dir']} ({whole['files_written']} file(s) written)")
        for split, info in whole["splits"].items():
            print(f"  {split}: {', '.join(info['sizes'])} px, {info['boxes']} boxes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
