"""Shared logic of the study tools (`tools/compare.py`, `tools/ablate_loss.py`, `tools/loss_distribution.py`).

Every detector is trained through the same Lightning loop (`detector.lit.fit`) and evaluated the same way
(`detector.inference.evaluate_split`: VOC area and 11-point AP, COCO AP, FPS); this module adds what the
studies need on top: per-variant configs, GFLOPs (`torch.utils.flop_counter`), train seconds per step, the
loss-ablation grid, per-anchor focal losses of a trained RetinaNet, and markdown tables.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import platform
import statistics
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detector.config import Config, load_config

__all__ = [
    "LossVariant",
    "TrainedModel",
    "Variant",
    "anchor_logits_and_labels",
    "anchor_scores",
    "best_alpha_per_gamma",
    "count_gflops",
    "curve_crossings",
    "evaluate_at_sizes",
    "finished_run",
    "fmt",
    "fmt_spread",
    "hardest_shares",
    "loss_grid",
    "machine_description",
    "markdown_table",
    "per_anchor_losses",
    "plot_ablation",
    "seed_summary",
    "study_config",
    "time_train_steps",
    "train_variant",
    "trained_with",
    "training_config",
    "write_json",
]

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------------
# Variants and their configs
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One detector of a study: a config file plus overrides, under a short name used for files."""

    name: str
    label: str
    config: str
    overrides: tuple[str, ...] = ()


def study_config(
    variant: Variant, common: Sequence[str], work_dir: str | Path, seed: int | None = None, tag: str = ""
) -> Config:
    """The variant's config with the common overrides on top, writing runs/weights under `work_dir`.

    Order: config file, variant overrides, common overrides (so `train.max_steps=5` reaches every variant),
    then the study's own output settings (one run folder and weights file per variant and seed).
    """
    name = variant.name + (f"_{tag}" if tag else "")
    work = Path(work_dir)
    own = [
        f"output.dir={work / 'runs'}",
        f"output.name={name}",
        f"output.weights_dir={work / 'weights'}",
        "output.progress_bar=false",
    ]
    if seed is not None:
        own.append(f"train.seed={seed}")
    return load_config(variant.config, [*variant.overrides, *common, *own])


@dataclass
class TrainedModel:
    """A trained detector in eval mode, with the config and class names it was trained with."""

    name: str
    cfg: Config
    class_names: list[str]
    model: torch.nn.Module
    weights: Path | None
    fit_seconds: float | None = None
    steps: int | None = None


def train_variant(name: str, cfg: Config, reuse: bool = False) -> TrainedModel:
    """Train `cfg` with the shared Lightning loop and reload the exported weights (eval mode, CPU).

    With `reuse`, a finished run of exactly this config is loaded instead of trained again (see
    `finished_run`), so a study too long for one sitting continues where it stopped, or gains seeds later.
    """
    from detector.lit import fit

    if reuse:
        found = finished_run(name, cfg)
        if found is not None:
            return found
    result = fit(cfg)
    if result.weights is None:
        raise RuntimeError(f"{name}: training finished without exporting weights (see {result.run_dir})")
    return _trained_from_weights(name, cfg, result.weights, result.seconds, result.steps)


def _trained_from_weights(
    name: str, cfg: Config, weights: Path, seconds: float | None, steps: int | None
) -> TrainedModel:
    from detector.inference import load_detector

    model, cfg_w, class_names = load_detector(weights)
    cfg_w.data = cfg.data  # the study's data settings (the weights store the same)
    return TrainedModel(name, cfg_w, class_names, model, weights, seconds, steps)


def finished_run(name: str, cfg: Config) -> TrainedModel | None:
    """The run `fit(cfg)` would produce, if it already finished: its exported weights, whose metadata holds
    the config they were trained with, exist and that config equals `cfg` (same model, data, schedule, seed);
    otherwise None, saying why when a file is there but was trained differently. Where the run was written
    (`OUTPUT_LOCATION`) is not compared, so weights copied into another study's work dir are reused too."""
    from detector.config import ConfigError, from_yaml
    from detector.weights import read_metadata

    path = Path(cfg.output.weights_dir) / f"{cfg.output.name}.safetensors"
    if not path.is_file():
        return None
    meta = read_metadata(path)
    try:
        stored = from_yaml(meta["config"]) if "config" in meta else None
    except ConfigError:
        stored = None
    if stored is None or not _same_training(stored, cfg):
        print(f"   {path} was trained with another config: training again", flush=True)
        return None
    seconds = float(meta["train_seconds"]) if meta.get("train_seconds") else None
    steps = int(meta["global_step"]) if meta.get("global_step") else None
    print(f"   reusing the finished run {path}", flush=True)
    return _trained_from_weights(name, cfg, path, seconds, steps)


OUTPUT_LOCATION = ("dir", "name", "weights_dir", "progress_bar")


def training_config(cfg: Config) -> dict[str, Any]:
    """The config that decides how a run trains (all but where it is written), JSON-ready: a recorded result
    carries it, so a study can take the result back later without the weights (`tools/ablate_loss.py`)."""
    fields = dataclasses.asdict(cfg)
    for key in OUTPUT_LOCATION:
        del fields["output"][key]
    return fields


def trained_with(recorded: Mapping[str, Any], cfg: Config) -> bool:
    """Whether a recorded `training_config` is `cfg`'s. Fields added to the config since take their defaults
    (as for old weights in `finished_run`); a record the config cannot read any more matches nothing."""
    from detector.config import ConfigError, from_yaml

    try:
        stored = from_yaml(json.dumps(dict(recorded)))
    except ConfigError:
        return False
    return _same_training(stored, cfg)


def _same_training(a: Config, b: Config) -> bool:
    """Whether two configs train alike: equal but for the output fields that say where a run is written."""
    a, b = copy.deepcopy(a), copy.deepcopy(b)
    for cfg in (a, b):
        for key in OUTPUT_LOCATION:
            setattr(cfg.output, key, None)
    return a == b


def load_variant(name: str, weights: str | Path, overrides: Sequence[str] = ()) -> TrainedModel:
    """A detector from exported weights (`tools/train.py` output), with data/eval overrides applied."""
    from detector.inference import apply_overrides, load_detector

    model, cfg, class_names = load_detector(weights)
    return TrainedModel(name, apply_overrides(cfg, list(overrides)), class_names, model, Path(weights))


# ----------------------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------------------


def count_gflops(model: torch.nn.Module, size: int, device: str | torch.device = "cpu") -> float:
    """GFLOPs of one eval forward at batch 1, `size` x `size` (FlopCounterMode: 2 FLOPs per multiply-add;
    convolutions and matmuls, the detector's bulk; NMS and elementwise ops are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    image = torch.zeros(1, 3, size, size, dtype=torch.uint8, device=device)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(image)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9


MIXED_PRECISION = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def time_train_steps(
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: list[dict],
    steps: int = 5,
    warmup: int = 1,
    precision: str = "32-true",
) -> float:
    """Median seconds of one training step (forward, loss, backward, SGD step) on a fixed batch, on the
    model's device, under autocast when `precision` (`train.precision`) is a mixed one, as Lightning trains.

    Runs on a deep copy, so the trained model is untouched; data loading and validation are excluded. On a
    GPU each step is timed from a synchronized start to a synchronized end (kernels run asynchronously).
    """
    from detector.evaluation.speed import synchronize

    if steps < 1 or warmup < 0:
        raise ValueError(f"steps must be >= 1 and warmup >= 0, got {steps}, {warmup}")
    work = copy.deepcopy(model).train()
    device = next(work.parameters()).device
    params = [p for p in work.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-6, momentum=0.9)
    images = images.to(device)
    plain = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]
    dtype = MIXED_PRECISION.get(precision)
    times = []
    for i in range(warmup + steps):
        synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = sum(work(images, plain).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return float(statistics.median(times))


def first_train_batch(cfg: Config) -> tuple[torch.Tensor, list[dict]]:
    """One training batch (augmented, letterboxed to `data.size`) of the config's train split."""
    from detector.data.datamodule import VOCDataModule

    dm = VOCDataModule(cfg.data, seed=cfg.train.seed)
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def evaluate_at_sizes(
    trained: TrainedModel, sizes: Sequence[int], fps_iters: int = 10
) -> list[dict[str, Any]]:
    """Evaluate on the test split at each input size: AP (VOC area, VOC07 11-point, COCO) and speed.

    Speed (when `fps_iters` > 0): model-only FPS at batch 1 on random images, and end-to-end latency at
    batch 1 (decode, letterbox, model, boxes back) on the test files.
    """
    from detector.inference import apply_overrides, evaluate_split

    rows = []
    for size in sizes:
        cfg = apply_overrides(trained.cfg, [f"data.size={int(size)}"])
        report, _ = evaluate_split(trained.model, cfg, trained.class_names, fps_iters=fps_iters)
        speed = report.get("speed", {})
        e2e = speed.get("end_to_end_bs1", {})
        rows.append(
            {
                "size": int(size),
                "voc_ap": report["voc"]["map"],
                "voc_ap_07": report["voc"]["map_07"],
                "coco": report["coco"],
                "fps_model_bs1": speed.get("model_bs1", {}).get("fps"),
                "fps_end_to_end_bs1": e2e.get("fps"),
                "latency_end_to_end_ms": e2e.get("latency_ms_median"),
                "num_images": report["num_images"],
            }
        )
    return rows


def curve_crossings(curves: Mapping[str, Sequence[tuple[float, float, int]]]) -> list[str]:
    """Where two AP-vs-latency curves cross: one sentence per crossing (latency interpolated linearly)."""
    names = sorted(curves)
    notes = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            pa = sorted((float(x), float(y)) for x, y, _ in curves[a])
            pb = sorted((float(x), float(y)) for x, y, _ in curves[b])
            if len(pa) < 2 or len(pb) < 2:
                continue
            lo, hi = max(pa[0][0], pb[0][0]), min(pa[-1][0], pb[-1][0])
            if hi <= lo:
                continue
            grid = np.linspace(lo, hi, 200)
            diff = np.interp(grid, *zip(*pa, strict=True)) - np.interp(grid, *zip(*pb, strict=True))
            flips = np.nonzero(np.sign(diff[:-1]) * np.sign(diff[1:]) < 0)[0]
            for k in flips:
                notes.append(f"{a} and {b} cross near {grid[k]:.0f} ms")
    return notes


# ----------------------------------------------------------------------------------------------------------
# The loss ablation (focal-loss paper, Table 1)
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LossVariant:
    """One classification loss of the ablation: family, alpha, gamma, OHEM setting, config overrides."""

    name: str
    family: str  # ce | alpha_ce | focal | ohem
    alpha: float | None
    gamma: float
    overrides: tuple[str, ...] = field(default=())
    ohem: str = ""  # "1:3" or "budget N", with ", NMS T" when an NMS precedes the pick


def _num(x: float) -> str:
    return f"{x:g}"


def loss_grid(
    ce_alphas: Sequence[float] = (0.25, 0.5, 0.75),
    gammas: Sequence[float] = (0.5, 1.0, 2.0, 5.0),
    focal_alphas: Sequence[float] = (0.25, 0.5, 0.75),
    ohem_ratios: Sequence[float] = (3.0,),
    ohem_budgets: Sequence[int] = (256,),
    ohem_nms: Sequence[float] = (0.5,),
) -> list[LossVariant]:
    """The ablation's variants: CE; alpha-balanced CE per alpha; FL per (gamma, alpha); OHEM per ratio and
    budget, each also with an NMS over the anchors before the pick at each `ohem_nms` IoU (the paper's).

    Only `model.loss.*` changes between variants; the prior initialization (`model.loss.prior`) is the
    config's for all of them, as in the paper's Table 1.
    """
    variants = [
        LossVariant(
            "ce", "ce", None, 0.0, ("model.loss.cls=focal", "model.loss.gamma=0.0", "model.loss.alpha=null")
        )
    ]
    for a in ce_alphas:
        variants.append(
            LossVariant(
                f"ce_a{_num(a)}",
                "alpha_ce",
                float(a),
                0.0,
                ("model.loss.cls=focal", "model.loss.gamma=0.0", f"model.loss.alpha={a}"),
            )
        )
    for g in gammas:
        for a in focal_alphas:
            variants.append(
                LossVariant(
                    f"fl_g{_num(g)}_a{_num(a)}",
                    "focal",
                    float(a),
                    float(g),
                    ("model.loss.cls=focal", f"model.loss.gamma={g}", f"model.loss.alpha={a}"),
                )
            )
    for n in ohem_budgets:
        if n <= 0:
            raise ValueError(f"OHEM budgets must be positive anchor counts per image, got {n}")
    if any(not 0.0 < t <= 1.0 for t in ohem_nms):
        raise ValueError(f"OHEM NMS IoU thresholds must be in (0, 1], got {list(ohem_nms)}")
    rules = [
        (
            f"ohem_1to{_num(r)}",
            f"1:{_num(r)}",
            ("model.loss.cls=ohem", f"model.loss.ohem_neg_pos_ratio={r}", "model.loss.ohem_budget=0"),
        )
        for r in ohem_ratios
    ] + [
        (f"ohem_b{int(n)}", f"budget {int(n)}", ("model.loss.cls=ohem", f"model.loss.ohem_budget={int(n)}"))
        for n in ohem_budgets
    ]
    for name, ohem, overrides in rules:
        variants.append(LossVariant(name, "ohem", None, 0.0, overrides, ohem=ohem))
        for t in ohem_nms:
            variants.append(
                LossVariant(
                    f"{name}_nms{_num(t)}",
                    "ohem",
                    None,
                    0.0,
                    (*overrides, f"model.loss.ohem_nms={t}"),
                    ohem=f"{ohem}, NMS {_num(t)}",
                )
            )
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"the ablation grid has repeated variants: {names}")
    return variants


def seed_summary(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, sample std, min, max, the count `n` they come from and the per-seed values (None, for an
    undefined AP or a seed that did not finish, is dropped from the statistics)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0, "values": list(values)}
    return {
        "n": len(vals),
        "mean": float(np.mean(vals)),
        "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
        "min": min(vals),
        "max": max(vals),
        "values": list(values),
    }


def best_alpha_per_gamma(results: Sequence[Mapping[str, Any]], key: str = "voc_ap") -> dict[float, dict]:
    """For each gamma among the focal variants, the result with the best mean `key` (ties: lower alpha)."""
    best: dict[float, dict] = {}
    for r in results:
        if r["family"] != "focal" or r[key]["mean"] is None:
            continue
        g = float(r["gamma"])
        cur = best.get(g)
        if cur is None or (r[key]["mean"], -r["alpha"]) > (cur[key]["mean"], -cur["alpha"]):
            best[g] = dict(r)
    return dict(sorted(best.items()))


def plot_ablation(results: Sequence[Mapping[str, Any]], path: str | Path, key: str = "voc_ap") -> Path:
    """AP against gamma, one line per alpha (error bars: min-max over seeds); CE/OHEM as horizontal lines."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=100)
    ax = fig.subplots()
    focal = [r for r in results if r["family"] == "focal" and r[key]["mean"] is not None]
    for alpha in sorted({r["alpha"] for r in focal}):
        pts = sorted((r["gamma"], r[key]) for r in focal if r["alpha"] == alpha)
        g = [p[0] for p in pts]
        m = np.array([p[1]["mean"] for p in pts])
        lo = m - np.array([p[1]["min"] for p in pts])
        hi = np.array([p[1]["max"] for p in pts]) - m
        ax.errorbar(g, m, yerr=[lo, hi], marker="o", capsize=3, label=f"FL, $\\alpha$ = {alpha:g}")
    styles = iter([":", "--", "-.", (0, (1, 3)), (0, (5, 2)), (0, (3, 1, 1, 1))] * 4)
    for r in results:
        if r["family"] != "focal" and r[key]["mean"] is not None:
            ax.axhline(r[key]["mean"], ls=next(styles), color="0.35", lw=1.2, label=r["name"])
    ax.set_xlabel("$\\gamma$")
    ax.set_ylabel("VOC AP50 (area)" if key == "voc_ap" else key)
    ax.set_title("Classification loss ablation")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # every run may have diverged
        ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


# ----------------------------------------------------------------------------------------------------------
# Per-anchor losses of a trained RetinaNet (focal-loss paper, Figure 4)
# ----------------------------------------------------------------------------------------------------------


@torch.no_grad()
def anchor_logits_and_labels(
    model: torch.nn.Module, images: torch.Tensor, targets: Sequence[dict[str, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class logits [B*A, C] and matched integer labels [B*A] (class 0..C-1, -1 background, -2 ignore).

    The same head outputs and matching that `RetinaNet.compute_loss` uses (public pieces of our RetinaNet:
    `head_outputs`, `matcher`, `classification_targets`).
    """
    from detector.models.retinanet import RetinaNet, pad_targets

    if not isinstance(model, RetinaNet):
        raise TypeError(f"per-anchor losses and scores need our RetinaNet, got {type(model).__name__}")
    cls_logits, _, anchors, _ = model.head_outputs(images)
    gt_boxes, gt_labels, valid = pad_targets(targets, model.num_classes, cls_logits.device)
    matches = model.matcher(gt_boxes, valid, anchors)
    labels = model.classification_targets(matches, gt_labels)
    return cls_logits.reshape(-1, cls_logits.shape[-1]).float(), labels.reshape(-1)


@torch.no_grad()
def per_anchor_losses(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, list[dict]]],
    gammas: Sequence[float] = (0.0, 0.5, 1.0, 2.0),
    max_images: int | None = None,
) -> tuple[dict[float, tuple[np.ndarray, np.ndarray]], dict[str, int]]:
    """Focal loss per anchor (summed over classes, alpha None) for each gamma, split foreground/background.

    Ignored anchors (IoU between the thresholds) are left out. Returns ({gamma: (fg, bg)}, counts).
    Alpha is left out because each curve is normalized within its group, where alpha is a constant factor.
    """
    from detector.losses.focal import sigmoid_focal_loss

    fg: dict[float, list[np.ndarray]] = {float(g): [] for g in gammas}
    bg: dict[float, list[np.ndarray]] = {float(g): [] for g in gammas}
    seen = 0
    for logits, labels, n_images in _anchor_batches(model, batches, max_images):
        seen += n_images
        is_fg, is_bg = labels >= 0, labels == -1
        for g in fg:
            loss = sigmoid_focal_loss(logits, labels, alpha=None, gamma=g, reduction="none").sum(dim=1)
            fg[g].append(loss[is_fg].double().cpu().numpy())
            bg[g].append(loss[is_bg].double().cpu().numpy())
    curves = {g: (np.concatenate(fg[g]), np.concatenate(bg[g])) for g in fg}
    first = curves[next(iter(curves))]
    return curves, {"images": seen, "foreground": int(first[0].size), "background": int(first[1].size)}


@torch.no_grad()
def anchor_scores(
    model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, list[dict]]], max_images: int | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Scores of a trained RetinaNet per anchor: (foreground anchors' probability of their own class,
    background anchors' highest class probability, images). Ignored anchors are left out. A classifier
    that separates the two groups scores most background near 0; a collapsed one scores everything alike."""
    fg, bg, seen = [], [], 0
    for logits, labels, n_images in _anchor_batches(model, batches, max_images):
        seen += n_images
        probs = logits.sigmoid()
        is_fg = labels >= 0
        fg.append(probs[is_fg].gather(1, labels[is_fg, None]).squeeze(1).double().cpu().numpy())
        bg.append(probs[labels == -1].amax(dim=1).double().cpu().numpy())
    return np.concatenate(fg), np.concatenate(bg), seen


def _anchor_batches(
    model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, list[dict]]], max_images: int | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """(logits, labels, images) of `anchor_logits_and_labels` per batch, in eval mode, up to `max_images`."""
    model.eval()
    seen = 0
    for images, targets in batches:
        if max_images is not None and seen >= max_images:
            break
        if max_images is not None:
            images, targets = images[: max_images - seen], targets[: max_images - seen]
        seen += images.shape[0]
        yield (*anchor_logits_and_labels(model, images, targets), images.shape[0])
    if seen == 0:
        raise ValueError("no images to score anchors on (empty split?)")


def hardest_shares(losses: np.ndarray, fractions: Sequence[float] = (0.01, 0.05, 0.10)) -> dict[float, float]:
    """Share of the total loss carried by the hardest `fraction` of the samples, for each fraction."""
    from detector.visualize import loss_share_of_hardest

    return {float(f): loss_share_of_hardest(losses, f) for f in fractions}


# ----------------------------------------------------------------------------------------------------------
# Output helpers
# ----------------------------------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: numbers rounded, None/NaN as '-'."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def fmt_spread(summary: Mapping[str, Any]) -> str:
    """A `seed_summary` as a cell: 'mean ± std (min-max)', or just the value when one seed has it."""
    if summary["mean"] is None:
        return "-"
    if summary["n"] == 1:
        return fmt(summary["mean"])
    return f"{fmt(summary['mean'])} ± {fmt(summary['std'])} ({fmt(summary['min'])}-{fmt(summary['max'])})"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; every row must have as many cells as the header."""
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(f"row {i} has {len(row)} cells, the header {len(header)}")

    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "|".join("---" for _ in header) + "|", *map(line, rows)]) + "\n"


def machine_description(device: str | torch.device | None = None) -> str:
    """CPU model (or GPU name), thread count, torch/torchvision versions: the line every result carries.

    `device`: what the results were measured on; None means the GPU when there is one."""
    import torchvision

    on_gpu = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if on_gpu:
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or "cpu"
        try:
            for text in Path("/proc/cpuinfo").read_text().splitlines():
                if text.startswith("model name"):
                    name = text.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    versions = f"torch {torch.__version__}, torchvision {torchvision.__version__}"
    return f"{name}, {torch.get_num_threads()} threads, {versions}"


def write_json(path: str | Path, data: Any) -> Path:
    """JSON with NaN turned into null (strict JSON readers refuse NaN)."""

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
