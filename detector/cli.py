"""Small printing helpers shared by the command-line tools (tables, error exits)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = [
    "add_reuse_option",
    "fail",
    "format_table",
    "print_eval_report",
    "prf_rows",
    "print_table",
    "run_reporting_errors",
    "save_pr_curves",
]


def _numeric(cell: str) -> bool:
    """A number (or the "n/a" that stands for an undefined one)."""
    return cell == "n/a" or cell.replace(",", "").replace(".", "", 1).lstrip("-").isdigit()


def format_table(rows: Sequence[Sequence[object]], header: Sequence[str] | None = None) -> str:
    """Rows of cells as an aligned plain-text table (columns of numbers right-aligned)."""
    body = [[str(c) for c in row] for row in rows]
    cells = ([[str(c) for c in header]] if header else []) + body
    if not cells:
        return ""
    n_cols = max(map(len, cells))
    widths = [max(len(row[i]) for row in cells if i < len(row)) for i in range(n_cols)]
    right = [
        all(_numeric(row[i]) for row in body if i < len(row) and row[i])
        and any(i < len(r) and r[i] for r in body)
        for i in range(n_cols)
    ]

    def line(row: list[str]) -> str:
        return "  ".join(
            c.rjust(widths[i]) if right[i] else c.ljust(widths[i]) for i, c in enumerate(row)
        ).rstrip()

    out = [line(r) for r in cells]
    if header:
        out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def print_table(title: str, rows: Sequence[Sequence[object]], header: Sequence[str] | None = None) -> None:
    """Print a titled table to stdout."""
    print(f"\n== {title} ==")
    print(format_table(rows, header))


def add_reuse_option(parser: argparse.ArgumentParser) -> None:
    """`--reuse` of the study tools (`detector.study.finished_run` decides what counts as finished)."""
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="load runs that already finished in --work-dir with exactly this config instead of "
        "training them again (continue an interrupted study, add seeds to it)",
    )


def run_reporting_errors(
    run: Callable[[argparse.Namespace], int],
    args: argparse.Namespace,
    also: tuple[type[Exception], ...] = (),
) -> int:
    """`run(args)` of a tool that reads weights and data: a bad config, data set, weights file or value
    (weights of the wrong model type too), or one of `also` (a training tool passes NonFiniteLossError),
    becomes `error: <message>` and exit code 2, not a traceback."""
    from detector.config import ConfigError
    from detector.data.voc import VOCFormatError
    from detector.weights import WeightsError

    try:
        return run(args)
    except (
        ConfigError,
        FileNotFoundError,
        ValueError,
        TypeError,
        VOCFormatError,
        WeightsError,
        *also,
    ) as err:
        return fail(err)


def fail(err: BaseException, code: int = 2) -> int:
    """Print `error: <message>` to stderr and return the exit code (tools `return fail(err)`)."""
    print(f"error: {err}", file=sys.stderr)
    return code


def save_pr_curves(voc_result: dict, class_names: list[str], folder: Path) -> list[str]:
    """`pr_<class>.png` per evaluated class plus `pr_curves.png` with all; failures are only reported."""
    from detector.visualize import plot_pr_curves

    written = []
    try:
        for cls in sorted(voc_result["ap"]):
            one = {
                "map": voc_result["ap"][cls],
                "ap": {cls: voc_result["ap"][cls]},
                "precision": {cls: voc_result["precision"][cls]},
                "recall": {cls: voc_result["recall"][cls]},
            }
            name = _safe(class_names[cls - 1])
            written.append(plot_pr_curves(one, class_names, folder / f"pr_{name}.png"))
        if len(voc_result["ap"]) > 1:
            written.append(plot_pr_curves(voc_result, class_names, folder / "pr_curves.png"))
    except Exception as err:  # the numbers are already computed; never lose them over a plot
        print(f"warning: could not plot PR curves: {err}", file=sys.stderr)
    return [str(p) for p in written]


def _safe(name: str) -> str:
    """A class name usable as part of a file name."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name) or "class"


def _fmt(value: float | None) -> str:
    """An AP for a table ("n/a" when undefined)."""
    return "n/a" if value is None else f"{value:.4f}"


PRF_HEADER = ("IoU", "class", "TP", "FP", "FN", "precision", "recall", "F1", "best F1", "at score")


def prf_rows(prf: dict) -> list[tuple]:
    """Rows of the P/R/F1 table: per IoU, each class then "all" (pooled counts); `n/a` where undefined."""
    rows = []
    for key, sec in prf.items():
        several = len(sec["per_class"]) > 1  # one class: its row is the overall row
        for c in [*sec["per_class"], *([{**sec, "class": "all"}] if several else [])]:
            best = "n/a" if c["best_f1_score"] is None else f"{c['best_f1_score']:.3f}"
            rows.append(
                (key, c["class"], c["tp"], c["fp"], c["fn"], _fmt(c["precision"]), _fmt(c["recall"]),
                 _fmt(c["f1"]), _fmt(c["best_f1"]), best)
            )
    return rows


def print_eval_report(report: dict) -> None:
    """Per-class AP table, COCO metrics and the model/speed table of an `evaluate_split` report."""
    voc = report["voc"]
    rows = [
        (c["class"], c["num_gt"], c["num_det"], _fmt(c["ap"]), _fmt(c["ap_07"]), _fmt(c.get("ap40")))
        for c in voc["per_class"]
    ]
    rows.append(("mean", "", "", _fmt(voc["map"]), _fmt(voc["map_07"]), _fmt(voc.get("map40"))))
    print_table(
        f"VOC AP@0.5 on {report['split']} ({report['num_images']} images)",
        rows,
        header=("class", "gt", "detections", "AP (area)", "AP (07 11-pt)", "AP40 (area)"),
    )
    if "prf" in report:
        print_table(
            f"precision / recall / F1 at score >= {report['eval']['score']:g} (one-to-one, devkit matching)",
            prf_rows(report["prf"]),
            header=PRF_HEADER,
        )
    print_table(
        "COCO metrics", [(k, f"{v:.4f}") for k, v in report["coco"].items()], header=("metric", "value")
    )
    rows = [
        ("model", f"{report['model']} / {report['backbone']} @ {report['size']} px"),
        ("parameters", f"{report['params']:,}"),
    ]
    for name, stats in report.get("speed", {}).items():
        if isinstance(stats, dict):
            rows.append(
                (f"FPS {name}", f"{stats['fps']:.2f} (median {stats['latency_ms_median']:.1f} ms/batch)")
            )
    if "speed" in report:
        rows.append(("FPS device", report["speed"]["device"]))
    print_table("model", rows)
