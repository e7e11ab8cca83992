"""The self-contained evaluation report page: metric tables, PR curves, score histogram and an error gallery.

One HTML file holds everything (images and plots as ``data:`` URIs, CSS and a little JavaScript inline), so it
opens from disk with no network and no server. Every mark and count comes from the evaluator's own match
records (``detector.evaluation.matching``), so the page cannot disagree with the printed numbers.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detector.evaluation.matching import (
    FP_KINDS,
    ImageResult,
    MatchRecords,
    best_f1,
    confusion,
    error_counts,
    image_results,
    prf_at,
)

__all__ = ["config_digest", "gallery_order", "write_eval_page", "write_report"]

KIND_TITLES = {
    "tp": "true positive",
    "duplicate": "duplicate",
    "localization": "localization",
    "wrong_class": "wrong class",
    "background": "background",
    "missed": "missed",
}

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.2em auto;max-width:1400px;
 padding:0 1em;color:#1b1b1b;background:#fafafa}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.4em 0 1em;font-size:.9em}
th,td{border:1px solid #d0d0d0;padding:.2em .55em;text-align:right} th{background:#eee}
td:first-child,th:first-child{text-align:left}
.tables{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}
.note{color:#555;font-size:.88em;max-width:70em}
.controls{position:sticky;top:0;background:#fafafa;padding:.5em 0;border-bottom:1px solid #ddd;z-index:2}
.controls label{margin-right:1em}
#gallery{display:flex;flex-wrap:wrap;gap:12px;margin-top:.8em}
.card{background:#fff;border:1px solid #ccc;border-radius:4px;padding:6px;margin:0;width:min-content}
.card[hidden]{display:none !important}
.card img{display:block;image-rendering:auto}
.card figcaption{font-size:.8em;margin-top:4px;min-width:12em}
.legend span{margin-right:1.4em;white-space:nowrap} .legend svg{vertical-align:middle;margin-right:.3em}
img.plot{max-width:100%;border:1px solid #ddd;background:#fff}
.kv td{text-align:left} .warn{color:#a00}
.side{display:flex;gap:8px;flex-wrap:nowrap} .side figure{margin:0}
"""

_JS = """
(function () {
  var gallery = document.getElementById('gallery');
  if (!gallery) { return; }
  var cards = Array.prototype.slice.call(gallery.querySelectorAll('.card'));
  var byClass = document.getElementById('filter-class');
  var byKind = document.getElementById('filter-kind');
  var sortBy = document.getElementById('sort');
  function matches(card) {
    var c = byClass.value, k = byKind.value;
    if (!c && !k) { return true; }
    return card.dataset.marks.split(' ').some(function (t) {
      var i = t.lastIndexOf(':'), tc = t.slice(0, i), tk = t.slice(i + 1);
      return (!c || tc === c) && (!k || tk === k || (k === 'errors' && tk !== 'tp'));
    });
  }
  function compare(a, b) {
    var ea = +a.dataset.errors, eb = +b.dataset.errors, fa = +a.dataset.f1, fb = +b.dataset.f1;
    var order = +a.dataset.index - +b.dataset.index;
    if (sortBy.value === 'name') { return a.dataset.name.localeCompare(b.dataset.name) || order; }
    if (sortBy.value === 'f1') { return (fa - fb) || (eb - ea) || order; }
    return (eb - ea) || (fa - fb) || order;
  }
  function update() {
    var shown = 0;
    cards.slice().sort(compare).forEach(function (card) {
      card.hidden = !matches(card);
      if (!card.hidden) { shown += 1; }
      gallery.appendChild(card);
    });
    document.getElementById('gallery-status').textContent =
      'showing ' + shown + ' of ' + cards.length + ' images';
  }
  [byClass, byKind, sortBy].forEach(function (el) { el.addEventListener('change', update); });
  update();
})();
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "n/a" if np.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], table_id: str | None = None) -> str:
    """An HTML table; a cell may be ``(text, {attribute: value})``."""

    def cell(tag: str, c: Any) -> str:
        if isinstance(c, tuple):
            text, attrs = c
            extra = "".join(f' {_e(k)}="{_e(v)}"' for k, v in attrs.items())
            return f"<{tag}{extra}>{_e(text)}</{tag}>"
        return f"<{tag}>{_e(c)}</{tag}>"

    head = "".join(cell("th", h) for h in header) if any(header) else ""
    body = "".join("<tr>" + "".join(cell("td", c) for c in row) + "</tr>" for row in rows)
    ident = f' id="{_e(table_id)}"' if table_id else ""
    thead = f"<thead><tr>{head}</tr></thead>" if head else ""
    return f"<table{ident}>{thead}<tbody>{body}</tbody></table>"


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def _png_uri_of(fig: Any) -> str:
    from detector.visualize import figure_png

    return _data_uri(figure_png(fig), "image/png")


def _jpeg_uri(image: Any, quality: int = 85) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return _data_uri(buf.getvalue(), "image/jpeg")


def config_digest(config_yaml: str) -> str:
    """sha256 of the config YAML (identifies the exact experiment settings)."""
    return hashlib.sha256(config_yaml.encode("utf-8")).hexdigest()


def _name(class_names: Sequence[str], label: int) -> str:
    return class_names[label - 1] if 1 <= label <= len(class_names) else str(label)


def _load_image(path: str | Path | None, size: tuple[int, int] | None = None) -> tuple[Any, str | None]:
    """(the image file as PIL RGB, None); a grey placeholder and the reason when it cannot be read."""
    from PIL import Image, ImageDraw

    try:
        with Image.open(path) as im:
            return im.convert("RGB"), None
    except (OSError, ValueError, TypeError) as err:
        w, h = size or (320, 240)
        im = Image.new("RGB", (max(w, 64), max(h, 48)), (120, 120, 120))
        ImageDraw.Draw(im).text(
            (6, 6), f"image not readable:\n{path}\n{type(err).__name__}", fill=(255, 255, 255)
        )
        return im, f"image file not readable: {path} ({type(err).__name__})"


def _image_size_hint(records: MatchRecords, index: int) -> tuple[int, int]:
    boxes = np.concatenate(
        [records.gts.boxes[records.gts.image == index], records.dets.boxes[records.dets.image == index]]
    )
    if boxes.size == 0:
        return (320, 240)
    return int(boxes[:, 2].max()) + 2, int(boxes[:, 3].max()) + 2


def gallery_order(results: Sequence[ImageResult]) -> list[int]:
    """Image indices worst first: most errors, then lowest per-image F1, then evaluation order."""
    return sorted(range(len(results)), key=lambda i: (-results[i].errors, results[i].f1, i))


def _marks(records: MatchRecords, r: ImageResult, class_names: Sequence[str]) -> list[tuple[str, Any, str]]:
    from detector.visualize import FP_KIND_SHORT

    d, g = records.dets, records.gts
    several = len(records.classes) > 1
    marks = []
    for k in r.tp:
        marks.append(
            ("tp", d.boxes[k], f"{_name(class_names, int(d.labels[k]))} " * several + f"{d.scores[k]:.2f}")
        )
    for k in r.fp:
        kind = str(records.kind[k])
        label = FP_KIND_SHORT[kind]
        if several:
            label += f" {_name(class_names, int(d.labels[k]))}"
            if kind == "wrong_class":
                label += f"≠{_name(class_names, int(records.confused_with[k]))}"
        marks.append(("fp", d.boxes[k], f"{label} {d.scores[k]:.2f}"))
    for j in r.missed:
        marks.append(("missed", g.boxes[j], _name(class_names, int(g.labels[j])) if several else ""))
    for j in r.ignored_gt:
        marks.append(("ignored", g.boxes[j], ""))
    return marks


def _tokens(records: MatchRecords, r: ImageResult) -> list[str]:
    """The card's marks as "label:kind" tokens (one per mark) for the gallery filters and the tests."""
    d, g = records.dets, records.gts
    tokens = [f"{int(d.labels[k])}:tp" for k in r.tp]
    tokens += [f"{int(d.labels[k])}:{records.kind[k]}" for k in r.fp]
    tokens += [f"{int(g.labels[j])}:missed" for j in r.missed]
    return tokens


def _card(
    records: MatchRecords, r: ImageResult, image_id: str, path: str, class_names: Sequence[str], side: int
) -> str:
    from detector.visualize import draw_marks

    image, problem = _load_image(path, _image_size_hint(records, r.index))
    scale = min(1.5, side / max(image.width, image.height))  # small tiles are enlarged up to 1.5x
    drawn = draw_marks(image, _marks(records, r, class_names), scale=scale)
    kinds = [str(records.kind[k]) for k in r.fp]
    fp_text = ", ".join(f"{KIND_TITLES[k]} {kinds.count(k)}" for k in FP_KINDS if k in kinds)
    caption = (
        f"<b>{_e(image_id)}</b><br>TP {r.tp.size} · FP {r.fp.size}"
        + (f" ({_e(fp_text)})" if fp_text else "")
        + f" · missed {r.missed.size} · F1 {r.f1:.2f}"
        + (f'<br><span class="warn">{_e(problem)}</span>' if problem else "")
    )
    attrs = {
        "class": "card",
        "data-index": r.index,
        "data-name": image_id,
        "data-errors": r.errors,
        "data-f1": f"{r.f1:.6f}",
        "data-marks": " ".join(_tokens(records, r)),
    }
    attr_text = " ".join(f'{k}="{_e(v)}"' for k, v in attrs.items())
    return (
        f'<figure {attr_text}><img src="{_jpeg_uri(drawn)}" width="{drawn.width}" height="{drawn.height}"'
        f' alt="{_e(image_id)}"><figcaption>{caption}</figcaption></figure>'
    )


def _legend() -> str:
    from detector.visualize import MARK_STYLES

    items = []
    for key in ("tp", "fp", "missed", "ignored"):
        s = MARK_STYLES[key]
        dash = " ".join(map(str, s["dash"])) if s["dash"] else "none"
        colour = "rgb({},{},{})".format(*s["color"])
        items.append(
            f'<span><svg width="44" height="12"><line x1="1" y1="6" x2="43" y2="6" stroke="black" '
            f'stroke-width="5" stroke-dasharray="{dash}"/>'
            f'<line x1="1" y1="6" x2="43" y2="6" stroke="{colour}"'
            f' stroke-width="3" stroke-dasharray="{dash}"/></svg>{_e(s["label"])}</span>'
        )
    return '<p class="legend">' + "".join(items) + "</p>"


def _class_curves(records: MatchRecords) -> dict[int, tuple[np.ndarray, np.ndarray, float]]:
    """Per class with ground truth: the devkit PR curve of these records (same order as voc_ap) and AP."""
    from detector.evaluation.voc import ap_from_pr

    d = records.dets
    curves = {}
    for c in records.classes:
        npos = records.num_gt.get(c, 0)
        if npos == 0:
            continue
        sel = np.flatnonzero(d.labels == c)
        o = records.outcome[sel[np.argsort(-d.scores[sel], kind="stable")]]
        tp = np.cumsum(o == 1, dtype=np.float64)
        fp = np.cumsum(o == 0, dtype=np.float64)
        recall = tp / npos
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        curves[c] = (recall, precision, ap_from_pr(recall, precision))
    return curves


def _plots(records: MatchRecords, score: float, class_names: Sequence[str]) -> str:
    from detector.visualize import plot_pr_operating_points, plot_score_histogram

    parts = []
    curves = _class_curves(records)
    at, best = prf_at(records, score), best_f1(records)
    if curves:
        points = {
            c: [
                (f"score >= {score:g}", at["per_class"][c]["recall"], at["per_class"][c]["precision"]),
                (
                    f"best F1 at {_fmt(best['per_class'][c]['best_f1_score'])}",
                    best["per_class"][c]["best_f1_recall"],
                    best["per_class"][c]["best_f1_precision"],
                ),
            ]
            for c in curves
        }
        fig = plot_pr_operating_points(
            curves, points, class_names, f"Precision-recall per class at IoU > {records.iou_threshold:g}"
        )
        parts.append(f'<img class="plot" id="pr-curves" alt="PR curves" src="{_png_uri_of(fig)}">')
    tp = records.dets.scores[records.outcome == 1]
    fp = records.dets.scores[records.outcome == 0]
    fig = plot_score_histogram(tp, fp, score, f"Scores of all detections (IoU > {records.iou_threshold:g})")
    parts.append(f'<img class="plot" id="score-histogram" alt="score histogram" src="{_png_uri_of(fig)}">')
    return "\n".join(parts)


def _summary_tables(report: Mapping[str, Any], first: str = "") -> str:
    """VOC, COCO and P/R/F1 tables (``first``: a block laid out beside them, the model table)."""
    from detector.reporting import PRF_HEADER, prf_rows

    parts = [first] if first else []
    voc = report.get("voc")
    if voc:
        rows = [
            (c["class"], c["num_gt"], c["num_det"], _fmt(c["ap"]), _fmt(c["ap_07"]), _fmt(c.get("ap40")))
            for c in voc["per_class"]
        ]
        rows.append(("mean", "", "", _fmt(voc["map"]), _fmt(voc["map_07"]), _fmt(voc.get("map40"))))
        parts.append(
            "<div><h3>VOC AP</h3>"
            + _table(
                ("class", "gt", "detections", "AP50 (area)", "AP50 (07 11-pt)", "AP40 (area)"),
                rows,
                "voc-table",
            )
            + "</div>"
        )
    if report.get("coco"):
        parts.append(
            "<div><h3>COCO</h3>"
            + _table(
                ("metric", "value"), [(k, _fmt(float(v))) for k, v in report["coco"].items()], "coco-table"
            )
            + "</div>"
        )
    html_parts = ['<div class="tables">' + "".join(parts) + "</div>"]
    if report.get("prf"):
        html_parts.append(
            f"<h3>Precision / recall / F1 at score &gt;= {_e(report['eval']['score'])}</h3>"
            + _table(
                PRF_HEADER, [tuple(_fmt(c) for c in row) for row in prf_rows(report["prf"])], "prf-table"
            )
            + '<p class="note">One-to-one matching by the VOC devkit rules (greedy in score order, IoU '
            "strictly "
            'above the threshold, difficult boxes neither TP nor FP); "all" pools the counts of every class; '
            'best F1 is the highest F1 over score thresholds and "at score" the threshold giving it.</p>'
        )
    return "\n".join(html_parts)


def _model_table(report: Mapping[str, Any], config_yaml: str | None, machine: str | None) -> str:
    rows = [
        (
            "model",
            f"{report.get('model', '?')} / {report.get('backbone', '?')} @ {report.get('size', '?')} px",
        ),
        ("parameters", f"{report['params']:,}" if "params" in report else "n/a"),
        ("weights", report.get("weights", "n/a")),
        ("config sha256", config_digest(config_yaml) if config_yaml else "n/a"),
        ("split", f"{report.get('split', '?')} ({report.get('num_images', '?')} images)"),
        ("data", ", ".join(map(str, report.get("data_root", []))) or "n/a"),
        ("machine", machine or "n/a"),
    ]
    for name, stats in report.get("speed", {}).items():
        if isinstance(stats, dict) and "fps" in stats:
            rows.append(
                (f"FPS {name}", f"{stats['fps']:.2f} (median {stats['latency_ms_median']:.1f} ms/batch)")
            )
    if "speed" in report:
        rows.append(("FPS device", report["speed"].get("device", "?")))
    return _table(("", ""), rows, "model-table").replace("<table", '<table class="kv"', 1)


def _counts_tables(records: MatchRecords, score: float, class_names: Sequence[str]) -> str:
    counts = error_counts(records, score)
    keys = ("tp", *FP_KINDS, "fp", "missed", "ignored")
    header = (
        "class",
        "TP",
        "duplicate",
        "localization",
        "wrong class",
        "background",
        "FP (all kinds)",
        "missed",
        "ignored (on difficult)",
    )
    rows = []
    for c, row in counts.items():
        name = _name(class_names, c)
        rows.append((name, *((row[k], {"data-class": c, "data-kind": k}) for k in keys)))
    if len(counts) > 1:
        rows.append(
            (
                "all",
                *((sum(r[k] for r in counts.values()), {"data-class": "all", "data-kind": k}) for k in keys),
            )
        )
    out = [_table(header, rows, "error-counts")]
    if len(records.classes) > 1:
        table = confusion(records, score)
        names = [_name(class_names, c) for c in records.classes]
        crow = [(f"true {n}", *table[i].tolist()) for i, n in enumerate([*names])]
        crow.append(("no object (other FP)", *table[-1].tolist()))
        out.append(
            "<h3>Confusion between classes</h3>"
            + _table(("", *(f"predicted {n}" for n in names), "missed"), crow, "confusion")
            + '<p class="note">Rows: the class of the ground truth; columns: the predicted class. The '
            "diagonal holds true positives, the rest of a row wrong-class detections on that class's "
            "objects; the last row counts each predicted class's duplicates, localization and background "
            "errors.</p>"
        )
    return "\n".join(out)


def _controls(records: MatchRecords, class_names: Sequence[str]) -> str:
    classes = "".join(f'<option value="{c}">{_e(_name(class_names, c))}</option>' for c in records.classes)
    kinds = "".join(f'<option value="{k}">{_e(KIND_TITLES[k])}</option>' for k in (*FP_KINDS, "missed", "tp"))
    return (
        '<div class="controls">'
        '<label>class <select id="filter-class"><option value="">all classes</option>'
        f"{classes}</select></label>"
        '<label>marks <select id="filter-kind"><option value="">any</option>'
        f'<option value="errors">any error</option>{kinds}</select></label>'
        '<label>sort <select id="sort"><option value="errors">most errors first</option>'
        '<option value="f1">lowest F1 first</option><option value="name">image name</option></select></label>'
        '<span id="gallery-status"></span></div>'
    )


def _write(path: Path, text: str) -> Path:
    """Write the page atomically (a killed run never leaves half a page)."""
    from detector.atomic import atomic_open

    with atomic_open(path) as fh:
        fh.write(text.encode("utf-8"))
    return path


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n{body}\n"
        f"<script>{_JS}</script></body></html>\n"
    )


def write_report(
    path: str | Path,
    report: Mapping[str, Any],
    records: MatchRecords,
    class_names: Sequence[str],
    image_ids: Sequence[str],
    image_paths: Sequence[str | Path],
    *,
    config_yaml: str | None = None,
    machine: str | None = None,
    max_images: int | None = 200,
    image_side: int = 380,
    title: str | None = None,
) -> Path:
    """Write the evaluation page (``report.html``) of an ``evaluate_split`` report and its match records.

    ``records`` are the evaluator's (``details["records"]``), at ``report["eval"]["iou"]``; marks are drawn
    at ``report["eval"]["score"]``. The gallery shows the worst ``max_images`` images (None: all), worst
    first. Returns the path written.
    """
    if len(image_ids) != records.gts.num_images or len(image_paths) != records.gts.num_images:
        raise ValueError(
            f"{len(image_ids)} image ids and {len(image_paths)} paths for "
            f"{records.gts.num_images} evaluated images"
        )
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be >= 1 or None, got {max_images}")
    score = float(report.get("eval", {}).get("score", 0.3))
    path = Path(path)
    results = image_results(records, score)
    order = gallery_order(results)
    shown = order if max_images is None else order[:max_images]
    cards = "\n".join(
        _card(records, results[i], str(image_ids[i]), str(image_paths[i]), class_names, image_side)
        for i in shown
    )
    title = title or f"focaldet evaluation: {report.get('model', 'model')} on {report.get('split', 'split')}"
    iou = records.iou_threshold
    which = (
        "every evaluated image"
        if len(shown) == len(results)
        else (f"the worst {len(shown)} of {len(results)} images (most errors, then lowest per-image F1)")
    )
    body = f"""
<h1>{_e(title)}</h1>
<p class="note">Written {_e(time.strftime("%Y-%m-%d %H:%M:%S %Z"))}. Marks and counts at IoU &gt; {iou:g} and
score &gt;= {score:g} (<code>eval.iou</code>, <code>eval.score</code>), from the evaluator's own matching.</p>
<h2>Summary</h2>
{_summary_tables(report, f"<div><h3>Model and run</h3>{_model_table(report, config_yaml, machine)}</div>")}
<h2>Errors by kind and class</h2>
{_counts_tables(records, score, class_names)}
<p class="note">A false positive is a <b>duplicate</b> when its ground truth was already matched by a
higher-scoring detection, <b>wrong class</b> when it overlaps another class's object with IoU &gt; {iou:g},
<b>localization</b> when its best IoU with an object of its class is in [0.1, {iou:g}], and <b>background</b>
otherwise. Detections on difficult (crowd) objects are neither true nor false positives.</p>
<h2>Precision-recall and scores</h2>
{_plots(records, score, class_names)}
<h2>Gallery</h2>
<p class="note">Showing {_e(which)}.</p>
{_legend()}
{_controls(records, class_names)}
<div id="gallery">
{cards}
</div>
"""
    return _write(path, _page(title, body))


def write_eval_page(
    results_json: str | Path,
    report: Mapping[str, Any],
    voc_result: Mapping[str, Any],
    class_names: Sequence[str],
    config_yaml: str | None = None,
    device: str | None = None,
    max_images: int | None = 200,
) -> Path | None:
    """``report.html`` next to the results JSON from ``evaluate_split``'s (report, voc result); a failure
    is printed as a warning and gives None (the numbers are already computed: never lose them over a page)."""
    import sys

    try:
        from detector.reporting import machine_description

        details = voc_result["details"]
        device = device or report.get("speed", {}).get("device")
        return write_report(
            Path(results_json).with_name("report.html"),
            report,
            details["records"],
            class_names,
            details["image_ids"],
            details["image_paths"],
            config_yaml=config_yaml,
            machine=machine_description(device),
            max_images=max_images,
        )
    except Exception as err:  # noqa: BLE001 - reported, not raised
        print(f"warning: could not write the report page: {type(err).__name__}: {err}", file=sys.stderr)
        return None
