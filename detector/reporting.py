"""Output helpers every tool shares: table cells, plain-text and markdown tables, the machine line, the load
average, JSON without NaN. One place, so a benchmark, a study and an evaluation print the same way.

Imports only torch (and torchvision for its version), so the kernel benchmarks run on a bare GPU box.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "PRF_HEADER",
    "fmt",
    "fmt_metric",
    "fmt_spread",
    "format_table",
    "load_average",
    "load_report",
    "machine_description",
    "markdown_table",
    "print_table",
    "prf_rows",
    "write_json",
]

# Above this 1-minute load average per core a timing is marked as taken on a loaded machine.
LOADED_PER_CORE = 0.5


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: numbers rounded, None/NaN as '-'."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def fmt_spread(summary: Mapping[str, Any]) -> str:
    """A seed summary (mean, std, min, max, n) as 'mean ± std (min-max)', or the value for one seed."""
    if summary["mean"] is None:
        return "-"
    if summary["n"] == 1:
        return fmt(summary["mean"])
    return f"{fmt(summary['mean'])} ± {fmt(summary['std'])} ({fmt(summary['min'])}-{fmt(summary['max'])})"


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
    """Print a titled plain-text table to stdout."""
    print(f"\n== {title} ==")
    print(format_table(rows, header))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; every row must have as many cells as the header."""
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(f"row {i} has {len(row)} cells, the header {len(header)}")

    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "|".join("---" for _ in header) + "|", *map(line, rows)]) + "\n"


def _cpu_name() -> str:
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                return text.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def machine_description(device: Any = None) -> str:
    """CPU model (or GPU name), cores and threads, torch/torchvision versions and the Python environment:
    the line every measured result carries. `device`: what was measured; None: the GPU when there is one."""
    import torch

    try:
        import torchvision

        tv = f", torchvision {torchvision.__version__}"
    except ImportError:
        tv = ""
    on_gpu = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    name = torch.cuda.get_device_name(device) if on_gpu else _cpu_name()
    env = os.path.relpath(sys.prefix, Path.cwd()) if sys.prefix.startswith(str(Path.cwd())) else sys.prefix
    return (
        f"{name}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, torch {torch.__version__}{tv}, "
        f"Python {platform.python_version()} in {env}"
    )


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def load_report(when: str, own_threads: int = 0) -> str:
    """'load at <when>: 0.42 (2 cores)', with a warning when, less the `own_threads` the measuring process
    itself keeps busy (at the end of a run), it is above LOADED_PER_CORE per core: a timing taken then is from
    a loaded machine and must be labelled so."""
    load, cores = load_average(), os.cpu_count() or 1
    if load is None:
        return f"load at {when}: unknown"
    line = f"load at {when}: {load:.2f} ({cores} cores" + (
        f", {own_threads} of them this run's)" if own_threads else ")"
    )
    if load - own_threads > LOADED_PER_CORE * cores:
        line += f"  WARNING: above {LOADED_PER_CORE} per core: a loaded machine, timings are not idle figures"
    return line


def fmt_metric(value: float | None) -> str:
    """An AP, precision, recall or F1 for a table, 4 decimals ("n/a" when undefined)."""
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
                (
                    key,
                    c["class"],
                    c["tp"],
                    c["fp"],
                    c["fn"],
                    fmt_metric(c["precision"]),
                    fmt_metric(c["recall"]),
                    fmt_metric(c["f1"]),
                    fmt_metric(c["best_f1"]),
                    best,
                )
            )
    return rows


def write_json(path: str | Path, data: Any) -> Path:
    """JSON with NaN turned into null (strict JSON readers refuse NaN); creates the folder."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, Path):
            return str(x)
        return x

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean(data), indent=2))
    return path
