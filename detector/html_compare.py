"""The one-stage vs two-stage study page (compare.html): the side-by-side table, AP by input size, the
speed/accuracy plot, and each detector's marks on the same test images. Built from the evaluation page's
pieces (`detector.html_report`), so both pages look and behave alike and stay self-contained.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from detector.evaluation.matching import FP_KINDS, ImageResult, MatchRecords, image_results, match_records
from detector.html_report import (
    KIND_TITLES,
    _data_uri,
    _e,
    _fmt,
    _jpeg_uri,
    _legend,
    _load_image,
    _marks,
    _page,
    _table,
    _tokens,
    _write,
)

__all__ = ["write_compare_report"]


def _compare_cell(
    image: Any,
    gt: Mapping[str, Any],
    det: Mapping[str, Any],
    class_names: Sequence[str],
    iou: float,
    score: float,
    side: int,
) -> tuple[str, ImageResult, MatchRecords]:
    """One detector's marks on one image, from the evaluator's matching of that image alone."""
    from detector.visualize import draw_marks

    records = match_records([det], [gt], iou, num_classes=len(class_names))
    result = image_results(records, score)[0]
    scale = min(2.0, side / max(image.width, image.height))
    drawn = draw_marks(image, _marks(records, result, class_names), scale=scale)
    return _jpeg_uri(drawn), result, records


def write_compare_report(
    path: str | Path,
    results: Sequence[Mapping[str, Any]],
    examples: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    *,
    speed_accuracy_png: str | Path | None = None,
    iou: float = 0.5,
    score: float = 0.3,
    machine: str | None = None,
    command: str | None = None,
    image_side: int = 360,
) -> Path:
    """The one-stage vs two-stage study page: side-by-side table, AP/latency by size, the speed/accuracy plot
    and the same test images with each detector's detections side by side.

    ``results``: ``tools/compare.py`` rows (``label``, ``params``, ``gflops``, ``train_s_per_step``,
    ``at_train_size``, ``by_size``). ``examples``: ``{"image_id", "path", "gt": {boxes, labels[, difficult]},
    "detections": {detector label: {boxes, scores, labels}}}``, marked by the evaluator's matching at
    (``iou``, ``score``).
    """
    path = Path(path)
    from detector.study.compare import ap_by_size, side_by_side

    header, rows = side_by_side(list(results), _fmt)

    sizes, by_size = ap_by_size(list(results), _fmt)
    plot = ""
    if speed_accuracy_png is not None and Path(speed_accuracy_png).is_file():
        uri = _data_uri(Path(speed_accuracy_png).read_bytes(), "image/png")
        plot = f'<img class="plot" id="speed-accuracy" alt="speed / accuracy" src="{uri}">'
    labels = [r["label"] for r in results]
    cards = []
    for i, ex in enumerate(examples):
        image, problem = _load_image(ex.get("path"))
        cells, errors, f1s = [], 0, []
        tokens: list[str] = []
        for label in labels:
            det = ex["detections"].get(label)
            if det is None:
                continue
            uri, res, recs = _compare_cell(image, ex["gt"], det, class_names, iou, score, image_side)
            errors += res.errors
            f1s.append(res.f1)
            tokens += _tokens(recs, res)
            cells.append(
                f'<figure><img src="{uri}" alt="{_e(ex["image_id"])}: {_e(label)}">'
                f"<figcaption><b>{_e(label)}</b><br>TP {res.tp.size} · FP {res.fp.size} · "
                f"missed {res.missed.size} · F1 {res.f1:.2f}</figcaption></figure>"
            )
        f1 = min(f1s) if f1s else 1.0
        cards.append(
            f'<div class="card" data-index="{i}" data-name="{_e(ex["image_id"])}" data-errors="{errors}" '
            f'data-f1="{f1:.6f}" data-marks="{_e(" ".join(tokens))}"><div><b>{_e(ex["image_id"])}</b>'
            + (f' <span class="warn">{_e(problem)}</span>' if problem else "")
            + "</div>"
            f'<div class="side">{"".join(cells)}</div></div>'
        )
    classes = "".join(f'<option value="{c}">{_e(n)}</option>' for c, n in enumerate(class_names, start=1))
    kinds = "".join(f'<option value="{k}">{_e(KIND_TITLES[k])}</option>' for k in (*FP_KINDS, "missed", "tp"))
    controls = (
        '<div class="controls"><label>class <select id="filter-class"><option value="">all classes</option>'
        f'{classes}</select></label><label>marks <select id="filter-kind"><option value="">any</option>'
        f'<option value="errors">any error</option>{kinds}</select></label>'
        '<label>sort <select id="sort"><option value="errors">most errors first</option>'
        '<option value="f1">lowest F1 first</option><option value="name">image name</option></select></label>'
        '<span id="gallery-status"></span></div>'
    )
    title = "focaldet: one-stage vs two-stage detectors"
    body = f"""
<h1>{_e(title)}</h1>
<p class="note">Written {_e(time.strftime("%Y-%m-%d %H:%M:%S %Z"))}. Machine: {_e(machine or "n/a")}.
{("Command: <code>" + _e(command) + "</code>") if command else ""}</p>
<h2>Side by side (at the training size)</h2>
{_table(header, rows, "compare-table")}
<h3>VOC AP50 / end-to-end latency per image at batch 1, by input size</h3>
{_table(("detector", *(f"{s} px" for s in sizes)), by_size, "by-size-table")}
{plot}
<h2>The same test images, each detector's detections</h2>
<p class="note">Marks at IoU &gt; {iou:g} and score &gt;= {score:g}, from the evaluator's matching of each
image; a card's error count adds up the detectors' errors.</p>
{_legend()}
{controls}
<div id="gallery">
{"".join(cards)}
</div>
"""
    return _write(path, _page(title, body))
