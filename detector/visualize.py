"""Drawing detections on images, and the project's plots: PR, training, speed/accuracy and loss-CDF curves.

Figures are built with ``matplotlib.figure.Figure`` and its Agg canvas directly, never pyplot: no display and
no global backend state, so this works headless and inside other programs.
"""

from __future__ import annotations

import colorsys
import inspect
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image
from torchvision.utils import draw_bounding_boxes

__all__ = [
    "MARK_STYLES",
    "class_color",
    "draw_detections",
    "draw_marks",
    "figure_png",
    "loss_cdf",
    "loss_share_of_hardest",
    "plot_loss_cdf",
    "plot_pr_curves",
    "plot_pr_operating_points",
    "plot_score_histogram",
    "plot_speed_accuracy",
    "plot_training_curves",
    "save_image",
]

PathLike = str | os.PathLike[str]
_HAS_FILLED_LABELS = "fill_labels" in inspect.signature(draw_bounding_boxes).parameters


def class_color(label: int) -> tuple[int, int, int]:
    """A distinct, stable RGB colour per class index (golden-ratio hue steps, bright and saturated)."""
    hue = (0.11 + 0.618033988749895 * int(label)) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _check_image(image: torch.Tensor) -> None:
    if not (isinstance(image, torch.Tensor) and image.dtype == torch.uint8 and image.ndim == 3
            and image.shape[0] == 3):
        got = f"{image.dtype} {tuple(image.shape)}" if isinstance(image, torch.Tensor) else type(image)
        raise ValueError(f"expected a uint8 image tensor [3, H, W], got {got}")


def _label_text(label: int, class_names: Sequence[str] | None) -> str:
    if class_names is not None and 1 <= label <= len(class_names):
        return class_names[label - 1]
    return str(label)


def draw_detections(
    image: torch.Tensor,
    boxes: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    scores: torch.Tensor | np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    score_threshold: float = 0.0,
    width: int = 2,
) -> torch.Tensor:
    """Draw boxes with "name 0.87" captions (one colour per class) on a copy of a uint8 [3, H, W] image.

    Labels are 1..C and index ``class_names`` (``class_names[label - 1]``); boxes are xyxy pixels, clipped to
    the image. Detections scoring below ``score_threshold`` are skipped; ``scores=None`` draws ground truth.
    """
    _check_image(image)
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4).cpu()
    labels = torch.as_tensor(labels).reshape(-1).long().cpu()
    if labels.shape[0] != boxes.shape[0]:
        raise ValueError(f"{boxes.shape[0]} boxes but {labels.shape[0]} labels")
    if scores is not None:
        scores = torch.as_tensor(scores, dtype=torch.float32).reshape(-1).cpu()
        if scores.shape[0] != boxes.shape[0]:
            raise ValueError(f"{boxes.shape[0]} boxes but {scores.shape[0]} scores")
        keep = scores >= score_threshold
        boxes, labels, scores = boxes[keep], labels[keep], scores[keep]
    if not torch.isfinite(boxes).all():
        raise ValueError("boxes contain NaN or infinite coordinates")
    height, width_px = image.shape[1:]
    boxes = boxes.clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width_px - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height - 1)
    ordered = (boxes[:, 2] >= boxes[:, 0]) & (boxes[:, 3] >= boxes[:, 1])
    if not bool(ordered.all()):
        raise ValueError("boxes must be xyxy with x2 >= x1 and y2 >= y1")
    if boxes.shape[0] == 0:
        return image.clone()
    captions = [
        _label_text(int(lab), class_names) + ("" if scores is None else f" {float(s):.2f}")
        for lab, s in zip(labels.tolist(), scores.tolist() if scores is not None else [None] * len(labels),
                          strict=True)
    ]
    colors = [class_color(int(lab)) for lab in labels.tolist()]
    extra: dict[str, Any] = {}
    if _HAS_FILLED_LABELS:  # newer torchvision: captions on a filled box of the class colour
        bright = [0.299 * r + 0.587 * g + 0.114 * b > 140 for r, g, b in colors]
        text = [(0, 0, 0) if b else (255, 255, 255) for b in bright]
        extra = {"fill_labels": True, "label_colors": text}
    return draw_bounding_boxes(image.cpu(), boxes, labels=captions, colors=colors, width=width, **extra)


def save_image(image: torch.Tensor, path: PathLike) -> Path:
    """Write a uint8 [3, H, W] tensor as an image file (format from the extension), creating the folder."""
    _check_image(image)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = image.detach().cpu().permute(1, 2, 0).contiguous().numpy()
    Image.fromarray(array).save(path)
    return path


def _save_figure(fig: Figure, path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=fig.dpi, bbox_inches="tight")
    return path


def plot_pr_curves(
    voc_result: Mapping[str, Any], class_names: Sequence[str] | None, path: PathLike, columns: int = 4
) -> Path:
    """One precision-recall panel per evaluated class of a ``voc_ap`` result (curve and monotone envelope)."""
    classes = sorted(voc_result["ap"])
    if not classes:
        raise ValueError("voc_result has no evaluated class (no ground truth): nothing to plot")
    columns = max(1, min(columns, len(classes)))
    rows = -(-len(classes) // columns)
    fig = Figure(figsize=(3.2 * columns, 2.9 * rows), dpi=100)
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, cls in zip(axes.flat, classes, strict=False):
        recall = np.asarray(voc_result["recall"][cls], dtype=np.float64)
        precision = np.asarray(voc_result["precision"][cls], dtype=np.float64)
        color = np.array(class_color(cls)) / 255.0
        if recall.size:
            # The envelope holds on each recall interval (r[i-1], r[i]]; the shaded area is the (area) AP.
            envelope = np.maximum.accumulate(precision[::-1])[::-1]
            r = np.concatenate(([0.0], recall))
            e = np.concatenate((envelope[:1], envelope))
            ax.plot(recall, precision, color=color, lw=1.2, label="precision")
            ax.step(r, e, where="pre", color="0.3", lw=0.9, ls="--", label="envelope")
            ax.fill_between(r, e, step="pre", color=color, alpha=0.15)
        else:
            ax.text(0.5, 0.5, "no detections", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"{_label_text(cls, class_names)}  AP {voc_result['ap'][cls]:.3f}", fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(classes):]:
        ax.set_axis_off()
    fig.suptitle(f"Precision-recall per class (mAP {voc_result['map']:.3f})")
    fig.tight_layout()
    return _save_figure(fig, path)


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or values.size < window:
        return values
    kernel = np.ones(window) / window
    valid = np.convolve(values, kernel, mode="valid")
    return np.concatenate([np.cumsum(values[: window - 1]) / np.arange(1, window), valid])


def plot_training_curves(history: Mapping[str, Sequence[float]], path: PathLike) -> Path:
    """Training loss against step (raw and smoothed) and validation mAP per epoch, side by side.

    ``history`` keys: ``train_loss`` (required), ``step`` (x of the losses, default 0..n-1), any further
    ``train_*`` series of the same length (e.g. ``train_loss_cls``), ``val_map`` with ``epoch`` (default
    1..n) and further ``val_*`` series of its length (e.g. ``val_map50_07``); other keys are ignored.
    """
    if "train_loss" not in history or len(history["train_loss"]) == 0:
        raise ValueError(f"history needs a non-empty 'train_loss' list (has keys {sorted(history)})")
    loss = np.asarray(history["train_loss"], dtype=np.float64)
    steps = np.asarray(history.get("step", np.arange(loss.size)), dtype=np.float64)
    if steps.shape != loss.shape:
        raise ValueError(f"history['step'] has {steps.size} values but 'train_loss' has {loss.size}")
    val = np.asarray(history.get("val_map", []), dtype=np.float64)
    epochs = np.asarray(history.get("epoch", np.arange(1, val.size + 1)), dtype=np.float64)
    if epochs.shape != val.shape:
        raise ValueError(f"history['epoch'] has {epochs.size} values but 'val_map' has {val.size}")

    fig = Figure(figsize=(11, 4), dpi=100)
    ax_loss, ax_val = fig.subplots(1, 2)
    window = max(1, loss.size // 20)
    ax_loss.plot(steps, loss, color="tab:blue", alpha=0.3, lw=0.8, label="train_loss")
    ax_loss.plot(steps, _moving_average(loss, window), color="tab:blue", lw=1.6, label=f"smoothed ({window})")
    extra = [k for k in sorted(history) if k.startswith("train_") and k != "train_loss"]
    palette = ("tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
    for key, color in zip(extra, palette, strict=False):
        series = np.asarray(history[key], dtype=np.float64)
        if series.shape == loss.shape:
            ax_loss.plot(steps, _moving_average(series, window), color=color, lw=1.2, label=key)
    finite = loss[np.isfinite(loss)]
    if finite.size and finite.min() > 0 and finite.max() / finite.min() > 50:
        ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("Training loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(fontsize=8)
    if val.size:
        ax_val.plot(epochs, val, "o-", color="tab:green", label="val_map")
        others = [k for k in sorted(history) if k.startswith("val_") and k not in ("val_map", "val_step")]
        for key, color in zip(others, ("tab:olive", "tab:cyan", "tab:gray"), strict=False):
            series = np.asarray(history[key], dtype=np.float64)
            if series.shape == val.shape:
                ax_val.plot(epochs, series, "s--", color=color, ms=4, lw=1.0, label=key)
        ax_val.legend(fontsize=8, loc="lower right")
        best = int(np.nanargmax(val)) if np.isfinite(val).any() else None
        if best is not None:
            ax_val.annotate(f"best {val[best]:.3f}", (epochs[best], val[best]), textcoords="offset points",
                            xytext=(0, 8), ha="center", fontsize=9)
        ax_val.set_ylim(0, max(1.0, float(np.nanmax(val)) * 1.05) if np.isfinite(val).any() else 1.0)
    else:
        ax_val.text(0.5, 0.5, "no validation yet", ha="center", va="center", transform=ax_val.transAxes)
    ax_val.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_val.set_xlabel("epoch")
    ax_val.set_ylabel("val mAP")
    ax_val.set_title("Validation mAP")
    ax_val.grid(alpha=0.3)
    fig.tight_layout()
    return _save_figure(fig, path)


def plot_speed_accuracy(
    curves: Mapping[str, Sequence[tuple[float, float, int]]],
    path: PathLike,
    ylabel: str = "VOC AP50",
    title: str = "Speed / accuracy",
) -> Path:
    """AP against latency, one curve per detector through its input sizes; points labelled with the size."""
    if not curves:
        raise ValueError("curves is empty: give {detector name: [(latency_ms, ap, size), ...]}")
    fig = Figure(figsize=(7, 5), dpi=100)
    ax = fig.subplots()
    for name, points in curves.items():
        pts = sorted(((float(lat), float(ap), int(size)) for lat, ap, size in points), key=lambda p: p[2])
        if not pts:
            raise ValueError(f"curve {name!r} has no points")
        if any(lat <= 0 or not np.isfinite(lat) for lat, _, _ in pts):
            latencies = [p[0] for p in pts]
            raise ValueError(f"curve {name!r}: latencies must be positive and finite, got {latencies}")
        lat, ap, sizes = zip(*pts, strict=True)
        (line,) = ax.plot(lat, ap, "o-", lw=1.6, label=name)
        for x, y, s in zip(lat, ap, sizes, strict=True):
            ax.annotate(str(s), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8,
                        color=line.get_color())
    ax.set_xlabel("end-to-end latency per image (ms)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save_figure(fig, path)


def loss_cdf(
    losses: torch.Tensor | np.ndarray, max_points: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Focal-loss paper Figure 4 curve: losses sorted ascending, normalized to sum 1, cumulative sum.

    Returns (fraction of samples in (0, 1], cumulative normalized loss). ``max_points`` subsamples evenly (the
    last point is always kept) for plotting millions of anchors.
    """
    if isinstance(losses, torch.Tensor):
        losses = losses.detach().double().cpu().numpy()
    values = np.asarray(losses)
    values = np.sort(values.astype(np.float64).reshape(-1))
    if values.size == 0:
        raise ValueError("losses is empty")
    if not np.isfinite(values).all() or values[0] < 0:
        raise ValueError("losses must be finite and non-negative")
    total = values.sum()
    if total <= 0:
        raise ValueError("losses sum to zero: the normalized distribution is undefined")
    cumulative = np.cumsum(values) / total
    fraction = np.arange(1, values.size + 1) / values.size
    if max_points is not None and values.size > max_points:
        index = np.unique(np.linspace(0, values.size - 1, max_points).round().astype(np.int64))
        fraction, cumulative = fraction[index], cumulative[index]
    return fraction, cumulative


def loss_share_of_hardest(losses: torch.Tensor | np.ndarray, fraction: float) -> float:
    """Share of the total loss carried by the hardest ``fraction`` of the samples (0.05: the top 5%)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    x, cumulative = loss_cdf(losses)
    n = x.size
    keep = n - max(1, int(round(fraction * n)))  # samples outside the hardest group
    return float(1.0 - (cumulative[keep - 1] if keep > 0 else 0.0))


def plot_loss_cdf(
    curves: Mapping[float, tuple[torch.Tensor | np.ndarray, torch.Tensor | np.ndarray]],
    path: PathLike,
    max_points: int = 2000,
) -> Path:
    """Cumulative normalized loss of foreground and background samples by gamma (paper's Fig. 4)."""
    if not curves:
        raise ValueError("curves is empty: give {gamma: (foreground_losses, background_losses)}")
    fig = Figure(figsize=(11, 4.5), dpi=100)
    axes = fig.subplots(1, 2)
    for gamma in sorted(curves):
        fg, bg = curves[gamma]
        for ax, losses in zip(axes, (fg, bg), strict=True):
            x, y = loss_cdf(losses, max_points=max_points)
            ax.plot(x, y, lw=1.6, label=f"$\\gamma$ = {gamma:g}")
    for ax, kind in zip(axes, ("foreground", "background"), strict=True):
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel(f"fraction of {kind} examples")
        ax.set_ylabel("cumulative normalized loss")
        ax.set_title(f"{kind.capitalize()} loss CDF")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
    fig.tight_layout()
    return _save_figure(fig, path)


# ---- Marks of the evaluation report: true positives, false positives (by kind) and missed ground truth
# Okabe-Ito colours (distinguishable with the common colour-vision deficiencies) AND a line style each, drawn
# over a dark halo so they stay visible on any background.
MARK_STYLES: dict[str, dict[str, Any]] = {
    "tp": {"color": (86, 180, 233), "dash": None, "label": "true positive (solid)"},
    "fp": {"color": (213, 94, 0), "dash": (9, 5), "label": "false positive (dashed, with its kind)"},
    "missed": {"color": (240, 228, 66), "dash": (2, 4), "label": "missed ground truth (dotted)"},
    "ignored": {"color": (170, 170, 170), "dash": (12, 4, 2, 4), "label": "difficult / ignored (dash-dot)"},
}
FP_KIND_SHORT = {"duplicate": "dup", "localization": "loc", "wrong_class": "cls", "background": "bg"}


def _dashed_line(draw: Any, p: tuple[float, float], q: tuple[float, float], dash: Sequence[int] | None,
                 fill: tuple[int, ...], width: int) -> None:
    """A straight line from p to q, solid or with an on/off dash pattern (pixels)."""
    if not dash:
        draw.line([p, q], fill=fill, width=width)
        return
    length = float(np.hypot(q[0] - p[0], q[1] - p[1]))
    if length == 0:
        return
    ux, uy = (q[0] - p[0]) / length, (q[1] - p[1]) / length
    pos, i = 0.0, 0
    while pos < length:
        step = float(dash[i % len(dash)])
        if i % 2 == 0:
            end = min(pos + step, length)
            draw.line([(p[0] + ux * pos, p[1] + uy * pos), (p[0] + ux * end, p[1] + uy * end)], fill=fill,
                      width=width)
        pos += step
        i += 1


def _styled_box(draw: Any, box: Sequence[float], style: Mapping[str, Any], width: int) -> None:
    x1, y1, x2, y2 = box
    corners = [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
    for colour, w in (((0, 0, 0), width + 2), (style["color"], width)):  # halo, then the colour
        for a, b in zip(corners, corners[1:] + corners[:1], strict=True):
            _dashed_line(draw, a, b, style["dash"], colour, w)


def draw_marks(
    image: Image.Image, marks: Sequence[tuple[str, Sequence[float], str]], scale: float = 1.0, width: int = 2
) -> Image.Image:
    """A copy of a PIL image with ``(style, xyxy box, caption)`` marks; ``style`` is a key of MARK_STYLES.

    Boxes are in the image's original pixels and multiplied by ``scale`` (the copy may be resized first).
    """
    from PIL import ImageDraw, ImageFont

    out = image.convert("RGB")
    if scale != 1.0:
        size = (max(1, round(out.width * scale)), max(1, round(out.height * scale)))
        out = out.resize(size, Image.BILINEAR)
    draw = ImageDraw.Draw(out)
    try:
        font = ImageFont.load_default(size=11)  # Pillow >= 10.1 with FreeType
    except (TypeError, ImportError, OSError):
        font = ImageFont.load_default()
    order = {"ignored": 0, "missed": 1, "tp": 2, "fp": 3}  # errors on top
    for style, box, caption in sorted(marks, key=lambda m: order.get(m[0], 9)):
        if style not in MARK_STYLES:
            raise ValueError(f"unknown mark style {style!r}; expected one of {sorted(MARK_STYLES)}")
        b = [float(v) * scale for v in box]
        b = [min(max(b[0], 0), out.width - 1), min(max(b[1], 0), out.height - 1),
             min(max(b[2], 0), out.width - 1), min(max(b[3], 0), out.height - 1)]
        _styled_box(draw, b, MARK_STYLES[style], width)
        if caption:
            left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
            tw, th = right - left, bottom - top
            x = min(max(b[0], 0), max(out.width - tw - 4, 0))
            y = b[1] - th - 4 if b[1] - th - 4 >= 0 else b[3] + 1
            draw.rectangle([x, y, x + tw + 3, y + th + 3], fill=(0, 0, 0))
            draw.text((x + 2 - left, y + 1 - top), caption, fill=MARK_STYLES[style]["color"], font=font)
    return out


def figure_png(fig: Figure) -> bytes:
    """A matplotlib figure as PNG bytes (for embedding in a page)."""
    import io

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight")
    return buf.getvalue()


def plot_pr_operating_points(
    curves: Mapping[int, tuple[np.ndarray, np.ndarray, float]],
    points: Mapping[int, Sequence[tuple[str, float | None, float | None]]],
    class_names: Sequence[str] | None,
    title: str,
    columns: int = 3,
) -> Figure:
    """PR panels per class (``{cls: (recall, precision, ap)}``) with named operating points marked.

    ``points``: ``{cls: [(label, recall, precision), ...]}``; a point with a None coordinate is skipped.
    """
    classes = sorted(curves)
    if not classes:
        raise ValueError("no class with ground truth: nothing to plot")
    columns = max(1, min(columns, len(classes)))
    rows = -(-len(classes) // columns)
    fig = Figure(figsize=(3.6 * columns, 3.2 * rows), dpi=90)
    axes = fig.subplots(rows, columns, squeeze=False)
    markers = ("o", "s", "^", "D")
    for ax, cls in zip(axes.flat, classes, strict=False):
        recall, precision, ap = curves[cls]
        if len(recall):
            ax.plot(recall, precision, color="#0072B2", lw=1.4)
        for (label, r, p), marker in zip(points.get(cls, []), markers, strict=False):
            if r is not None and p is not None:
                ax.plot([r], [p], marker=marker, ms=8, ls="none", mfc="none" if marker != "o" else "#D55E00",
                        mec="#D55E00" if marker == "o" else "black", mew=1.6, label=label)
        ax.set_title(f"{_label_text(cls, class_names)}  AP {ap:.3f}", fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower left")
    for ax in list(axes.flat)[len(classes):]:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def plot_score_histogram(
    tp_scores: np.ndarray, fp_scores: np.ndarray, threshold: float, title: str
) -> Figure:
    """Histogram of true-positive against false-positive scores (filled vs hatched), threshold marked."""
    fig = Figure(figsize=(6, 3.4), dpi=90)
    ax = fig.subplots()
    bins = np.linspace(0.0, 1.0, 21)
    ax.hist(np.asarray(tp_scores, dtype=float), bins=bins, color="#56B4E9", alpha=0.8,
            label=f"true positives ({len(tp_scores)})")
    ax.hist(np.asarray(fp_scores, dtype=float), bins=bins, histtype="step", hatch="///", color="#D55E00",
            lw=1.5, label=f"false positives ({len(fp_scores)})")
    ax.axvline(threshold, color="black", ls="--", lw=1, label=f"score threshold {threshold:g}")
    ax.set_xlabel("score")
    ax.set_ylabel("detections")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
