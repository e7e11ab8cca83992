"""Build the bundled tree-crown dataset (VOC layout) from the installed deepforest==2.1.0 package data.

Usage: python tools/prepare_trees.py [--out data/trees] [--source DIR]
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
    args = parser.parse_args(argv)
    try:
        summary = build_trees_dataset(args.out, args.source)
    except DeepForestNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"tree dataset in {summary['out_dir']} (from {summary['source_dir']}; "
        f"{summary['files_written']} file(s) written)"
    )
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
