"""Recipe selection on the validation split: a variant is a config plus overrides, trained once per seed and
scored on `data.val_split`; every variant tried is recorded (numbers, time, the command that reproduces it)
so docs/accuracy.md lists the failures next to the winner. The test split is scored only on request, for
confirming a winner chosen on validation.
"""

from __future__ import annotations

import fcntl
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detector.atomic import atomic_open
from detector.study.ablation import seed_summary
from detector.study.runs import TrainedModel, Variant, load_variant, study_config, train_variant

__all__ = ["TunePlan", "training_overrides", "render_accuracy", "run_variant", "score"]

# Post-processing keys: a variant that changes only these re-scores a recorded variant's weights (`--base`).
EVAL_ONLY_PREFIXES = (
    "model.score_thresh",
    "model.nms_thresh",
    "model.detections_per_img",
    "model.topk_candidates",
    "eval.",
)


@dataclass
class TunePlan:
    """What `tools/tune.py` was asked: one variant over seeds, where to record it."""

    name: str
    config: str
    overrides: list[str]
    seeds: list[int]
    out: Path
    work_dir: Path
    command: str
    note: str = ""
    base: str | None = None  # re-score this recorded variant's weights with eval-only overrides
    test: bool = False
    tta: tuple[str, ...] = ()


def training_overrides(overrides: Sequence[str]) -> list[str]:
    """The overrides that are not post-processing (empty: the variant can re-score another's weights)."""
    return [o for o in overrides if not o.split("=", 1)[0].startswith(EVAL_ONLY_PREFIXES)]


def score(trained: TrainedModel, split: str, tta: Sequence[str] = ()) -> dict[str, Any]:
    """VOC AP50 (area), AP at IoU 0.4, COCO AP and the F1 at IoU 0.4 and 0.5 of a model on `split`."""
    from detector.evaluation.report import evaluate_split

    kwargs = {"tta": tuple(tta)} if tta else {}
    start = time.perf_counter()
    report, _ = evaluate_split(trained.model, trained.cfg, trained.class_names, split, fps_iters=0, **kwargs)
    prf = report["prf"]
    return {
        "ap50": report["voc"]["map"],
        "ap40": report["voc"]["map40"],
        "coco_ap": report["coco"].get("AP"),
        "f1_40": prf.get("0.4", {}).get("f1"),
        "f1_50": prf.get("0.5", {}).get("f1"),
        "images": report["num_images"],
        "eval_seconds": time.perf_counter() - start,
    }


def run_variant(plan: TunePlan) -> dict[str, Any]:
    """Train (or take back) the variant for every seed, score it on validation (and test when asked) and
    record it in `<out>/accuracy.json`; returns the record."""
    from detector.inference.predict import set_detection_settings
    from detector.weights import read_metadata

    record: dict[str, Any] = {
        "name": plan.name,
        "note": plan.note,
        "config": plan.config,
        "overrides": list(plan.overrides),
        "base": plan.base,
        "tta": list(plan.tta),
        "command": plan.command,
        "seeds": {},
    }
    for seed in plan.seeds:
        if plan.base is not None:
            weights = plan.work_dir / "weights" / f"{plan.base}_s{seed}.safetensors"
            if not weights.is_file():
                raise FileNotFoundError(f"{weights}: --base {plan.base} has no weights for seed {seed}")
            trained = load_variant(plan.name, weights, plan.overrides)
            set_detection_settings(trained.model, trained.cfg.model)
            meta = read_metadata(weights)  # the training time and steps the weights were exported with
            trained.fit_seconds = float(meta["train_seconds"]) if meta.get("train_seconds") else None
            trained.steps = int(meta["global_step"]) if meta.get("global_step") else None
        else:
            variant = Variant(plan.name, plan.name, plan.config, tuple(plan.overrides))
            cfg = study_config(variant, (), plan.work_dir, seed=seed, tag=f"s{seed}")
            print(f"== {plan.name}, seed {seed}: training", flush=True)
            trained = train_variant(plan.name, cfg, reuse=True)
        result: dict[str, Any] = {
            "train_seconds": trained.fit_seconds,
            "steps": trained.steps,
            "val": score(trained, trained.cfg.data.val_split, plan.tta),
        }
        if plan.test:
            result["test"] = score(trained, trained.cfg.data.test_split, plan.tta)
        record["seeds"][str(seed)] = result
        print(f"   seed {seed}: val AP50 {result['val']['ap50']:.3f}", flush=True)
    for split in ("val", "test"):
        values = [s[split]["ap50"] for s in record["seeds"].values() if split in s]
        if values:
            record[f"{split}_ap50"] = seed_summary(values)
    _record(plan.out, plan.name, record)
    return record


def _record(out: Path, name: str, record: dict[str, Any]) -> None:
    """Store one variant's record in `<out>/accuracy.json`: read, update and atomic replace under an exclusive
    lock, so tune processes finishing at the same moment keep each other's records."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".accuracy.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        recorded = _recorded(out)
        recorded[name] = record
        with atomic_open(out / "accuracy.json") as fh:
            fh.write((json.dumps(recorded, indent=1) + "\n").encode())


def _recorded(out: Path) -> dict[str, Any]:
    path = out / "accuracy.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def render_accuracy(out: Path) -> str:
    """Every recorded variant, in the order tried: val (and test) AP50 over seeds, time, command."""
    from detector.reporting import fmt, markdown_table

    def spread(summary: dict[str, Any] | None) -> str:
        if not summary or summary["mean"] is None:
            return "-"
        each = ", ".join(fmt(v) for v in summary["values"])
        return (
            fmt(summary["mean"])
            if summary["n"] == 1
            else f"{fmt(summary['mean'])} ± {fmt(summary['std'])} ({each})"
        )

    rows = []
    for rec in _recorded(out).values():
        seeds = rec["seeds"].values()
        secs = [s["train_seconds"] for s in seeds if s.get("train_seconds")]
        rows.append(
            [
                f"`{rec['name']}`",
                rec.get("note", ""),
                spread(rec.get("val_ap50")),
                spread(rec.get("test_ap50")),
                f"{sum(secs) / len(secs):.0f}" if secs else "-",
                f"`{rec['command']}`",
            ]
        )
    header = ["variant", "what", "val VOC AP50 (seeds)", "test AP50", "train s", "command"]
    return markdown_table(header, rows)
