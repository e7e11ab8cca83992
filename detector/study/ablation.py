"""The classification-loss ablation (the focal-loss paper's Table 1): its grid of variants, seed summaries,
the best alpha per gamma and the AP-against-gamma plot.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detector.config import Config

__all__ = [
    "AblationPlan",
    "LossVariant",
    "best_alpha_per_gamma",
    "loss_grid",
    "plot_ablation",
    "read_recorded",
    "run_ablation",
    "seed_summary",
]


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


@dataclass
class AblationPlan:
    """What `run_ablation` trains and where: the grid, seeds, base config and overrides, work and output
    folders, reuse of finished runs, tabling only, an earlier ablation.json to take results from."""

    grid: list[LossVariant]
    seeds: list[int]
    config: str
    overrides: list[str]
    work_dir: str
    out: str
    command: str
    only: list[str] | None = None
    reuse: bool = False
    table_only: bool = False
    recorded: str | None = None


def run_ablation(plan: AblationPlan) -> Path:
    """Train (or take back) every variant and seed of the plan, evaluate on the test split, and write
    ablation.md, .json and .png into `plan.out`; returns the markdown file."""
    from detector.lit import NonFiniteLossError
    from detector.reporting import machine_description, write_json
    from detector.study.cost import evaluate_at_sizes
    from detector.study.runs import (
        Variant,
        finished_run,
        study_config,
        train_variant,
        trained_with,
        training_config,
    )

    args = plan
    grid = plan.grid
    if args.only:
        unknown = sorted(set(args.only) - {v.name for v in grid})
        if unknown:
            raise ValueError(f"--only: {unknown} not in the grid {[v.name for v in grid]}")
        grid = [v for v in grid if v.name in args.only]
    recorded = read_recorded(Path(args.recorded)) if args.recorded else {}
    results = []
    for lv in grid:
        per_seed = []
        for seed in args.seeds:
            variant = Variant(lv.name, lv.name, args.config, lv.overrides)
            cfg = study_config(variant, args.overrides, args.work_dir, seed=seed, tag=f"s{seed}")
            print(f"== {lv.name} seed {seed}", flush=True)
            earlier = recorded.get((lv.name, seed))
            if earlier is not None and trained_with(earlier["config"], cfg):
                print(f"   recorded in {args.recorded}", flush=True)
                per_seed.append(earlier)
                continue
            if earlier is not None:
                print(f"   recorded in {args.recorded} with another config: not used", flush=True)
            try:
                if args.table_only:
                    trained = finished_run(lv.name, cfg)
                    if trained is None:
                        print("   not run yet", flush=True)
                        per_seed.append(_missing(seed, not_run=True))
                        continue
                else:
                    trained = train_variant(lv.name, cfg, reuse=args.reuse)
            except NonFiniteLossError as err:  # a diverging loss is a result of the ablation, not a crash
                print(f"   diverged: {err}", flush=True)
                per_seed.append(_missing(seed, diverged=str(err)))
                continue
            (ev,) = evaluate_at_sizes(trained, [int(cfg.data.size)], fps_iters=0)
            per_seed.append(
                {
                    "seed": seed,
                    "voc_ap": ev["voc_ap"],
                    "voc_ap_07": ev["voc_ap_07"],
                    "coco": ev["coco"],
                    "fit_seconds": trained.fit_seconds,
                    "steps": trained.steps,
                    "config": training_config(cfg),
                }
            )
        results.append(
            {
                "name": lv.name,
                "family": lv.family,
                "alpha": lv.alpha,
                "gamma": lv.gamma,
                "ohem": lv.ohem,
                "prior": cfg.model.loss.prior,
                "overrides": list(lv.overrides),
                "voc_ap": seed_summary([s["voc_ap"] for s in per_seed]),
                "coco_ap": seed_summary([s["coco"]["AP"] for s in per_seed]),
                "seeds": per_seed,
            }
        )
    out = Path(args.out)
    png = plot_ablation(results, out / "ablation.png")
    best = best_alpha_per_gamma(results)
    machine = machine_description()
    markdown = render(results, best, args, machine, png.name, cfg)
    (out / "ablation.md").write_text(markdown)
    write_json(
        out / "ablation.json",
        {
            "machine": machine,
            "command": plan.command,
            "seeds": args.seeds,
            "results": results,
            "best_alpha_per_gamma": {
                str(g): {"alpha": r["alpha"], "voc_ap": r["voc_ap"]} for g, r in best.items()
            },
        },
    )
    print(markdown)
    print(f"written: {out / 'ablation.md'}, {out / 'ablation.json'}, {png}")
    return out / "ablation.md"


def read_recorded(path: Path) -> dict[tuple[str, int], dict]:
    """The finished seeds of an earlier ablation.json by (variant, seed); each must carry the config it
    trained with (`config`), since only that says whether it answers this run's question."""
    try:
        report = json.loads(path.read_text())
        seeds = [(str(r["name"]), s) for r in report["results"] for s in r["seeds"]]
        records = {(name, int(s["seed"])): s for name, s in seeds if _finished(s)}
    except OSError as err:
        raise ValueError(f"--recorded {path}: cannot read it ({err.strerror})") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"--recorded {path}: not JSON ({err})") from err
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"--recorded {path}: not an ablation.json of this tool ({err!r})") from err
    for (name, seed), s in records.items():
        if not isinstance(s.get("config"), dict):
            raise ValueError(
                f"--recorded {path}: {name} seed {seed} records no config (the one it trained with), so it "
                "cannot be matched to this run's"
            )
    return records


def _missing(seed: int, **why: object) -> dict:
    """A seed without an evaluation: `diverged` (its loss went non-finite) or `not_run` (--table-only)."""
    return {"seed": seed, "voc_ap": None, "voc_ap_07": None, "coco": {"AP": None}, **why}


def _finished(seed_result: dict) -> bool:
    return "diverged" not in seed_result and "not_run" not in seed_result


def render(results: list[dict], best: dict, args: AblationPlan, machine: str, png: str, cfg: Config) -> str:
    """The ablation as markdown: one row per variant, then the best alpha per gamma."""
    from detector.reporting import fmt, fmt_spread, markdown_table

    loss_names = {"ce": "CE", "alpha_ce": "alpha-balanced CE", "focal": "FL", "ohem": "OHEM (CE)"}
    rows = [
        [
            r["name"],
            loss_names[r["family"]],
            fmt(r["alpha"], 2),
            fmt(r["gamma"], 1),
            r["ohem"] or "-",
            fmt_spread(r["voc_ap"]),
            fmt_spread(r["coco_ap"]),
            f"{sum(map(_finished, r['seeds']))}/{len(r['seeds'])}",
        ]
        for r in results
    ]
    best_rows = [
        [fmt(g, 1), fmt(r["alpha"], 2), fmt_spread(r["voc_ap"]), fmt_spread(r["coco_ap"])]
        for g, r in best.items()
    ]
    seeds = ", ".join(str(s) for s in args.seeds)
    not_run = [
        f"{r['name']} (seed {', '.join(str(x['seed']) for x in r['seeds'] if 'not_run' in x)})"
        for r in results
        if any("not_run" in x for x in r["seeds"])
    ]
    lines = [
        "# Classification-loss ablation (focal-loss paper, Table 1)",
        "",
        f"{cfg.model.name} {cfg.model.backbone.name}, {cfg.data.size} px, batch {cfg.data.batch_size}, "
        f"{cfg.train.max_steps or cfg.train.epochs} {'steps' if cfg.train.max_steps else 'epochs'}, "
        f"prior {cfg.model.loss.prior:g} for every variant; seeds {seeds} "
        "(with several seeds: mean ± sample std (min-max)).",
        "",
        markdown_table(["variant", "loss", "alpha", "gamma", "OHEM", "VOC AP", "COCO AP", "finished"], rows),
        *([f"Not run yet: {'; '.join(not_run)}.", ""] if not_run else []),
        f"Best alpha per gamma (plot: `{png}`):",
        "",
        markdown_table(["gamma", "best alpha", "VOC AP", "COCO AP"], best_rows)
        if best_rows
        else "(no FL runs)\n",
        f"Machine: {machine}.",
        "",
        f"Command: `{args.command}`",
        "",
    ]
    return "\n".join(lines)
