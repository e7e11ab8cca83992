#!/usr/bin/env python
"""Classification-loss ablation (the focal-loss paper's Table 1) on our data: same model, data and schedule.

Variants (only `model.loss.*` changes; the prior initialization `model.loss.prior` is the same for all):
  ce                 cross entropy (gamma 0, no alpha)
  ce_a<A>            alpha-balanced CE for each --ce-alphas
  fl_g<G>_a<A>       focal loss for each --gammas x --focal-alphas (the paper's: alpha 0.25 and a sweep to
                     find the best alpha per gamma)
  ohem_1to<R>        OHEM: per image all positives and the hardest negatives by CE, at most R per positive
                     (--ohem-ratios)
  ohem_b<N>          OHEM with a fixed budget of the N hardest anchors per image (--ohem-budgets)
  <ohem>_nms<T>      each OHEM variant again with an NMS at IoU T over the anchors, scored by CE, before the
                     pick (--ohem-nms; the paper's OHEM): one pick per hard spot, not a cluster on it
Each variant trains once per --seeds; the table reports VOC AP (area, IoU 0.5) and COCO AP on the test split
as mean, sample std and min-max over the seeds, and the best alpha for each gamma. Writes ablation.md,
ablation.json and ablation.png into --out; runs and weights go to --work-dir.

Budget: the default grid is 20 variants; at the config's 300 steps (batch 4, 416 px, trees) each run is
3-11 min on a 2-core CPU (measured: ~3.2 min on the idle AMD EPYC of 2026-11-27, ~10.5 min on the one of the
sittings before), so one seed is 1-3.7 h. Cut it with
`train.max_steps=N`, a smaller grid (`--gammas 2 --focal-alphas 0.25 --ce-alphas 0.75 --ohem-budgets`),
`--only NAME ...`, or run it on a GPU. With `--reuse`, runs that already finished in --work-dir are
evaluated instead of trained again: stop the grid any time and rerun the same command (more --seeds too).
`--table-only` trains nothing: it tables the runs that finished and lists the rest as not run yet.
`--recorded FILE` takes seeds from an earlier ablation.json (each seed records the config it trained
with) where the config is the same, so results outlive the work dir's weights.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from detector.cli import add_reuse_option, run_reporting_errors  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(ROOT / "configs" / "retinanet_mbv2_trees.yaml"))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--ce-alphas", nargs="*", type=float, default=[0.25, 0.5, 0.75])
    parser.add_argument("--gammas", nargs="*", type=float, default=[0.5, 1.0, 2.0, 5.0])
    parser.add_argument("--focal-alphas", nargs="+", type=float, default=[0.25, 0.5, 0.75])
    parser.add_argument("--ohem-ratios", nargs="*", type=float, default=[3.0], help="negatives per positive")
    parser.add_argument("--ohem-budgets", nargs="*", type=int, default=[256], help="anchors per image")
    parser.add_argument(
        "--ohem-nms", nargs="*", type=float, default=[0.5], help="IoUs of the NMS before the OHEM pick"
    )
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these variants of the grid")
    parser.add_argument("--out", default=str(ROOT / "docs"), help="folder for ablation.{md,json,png}")
    parser.add_argument(
        "--work-dir", default=str(ROOT / "runs" / "ablation"), help="runs and weights go here"
    )
    add_reuse_option(parser)
    parser.add_argument(
        "--table-only",
        action="store_true",
        help="train nothing: table the runs in --work-dir that finished with exactly this config "
        "(as --reuse) and list the others as not run yet (a partial grid, or seeds still missing)",
    )
    parser.add_argument(
        "--recorded",
        metavar="JSON",
        help="an earlier ablation.json: its finished seeds whose recorded config equals this run's are "
        "taken as they are, neither trained nor evaluated again (their weights may be gone)",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides for every run")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    for name in ("ce_alphas", "focal_alphas"):
        if any(not 0.0 < a < 1.0 for a in getattr(args, name)):
            parser.error(f"--{name.replace('_', '-')} must be in (0, 1), got {getattr(args, name)}")
    if any(g < 0 for g in args.gammas) or any(r <= 0 for r in args.ohem_ratios):
        parser.error("--gammas must be >= 0 and --ohem-ratios > 0")
    if any(not 0.0 < t <= 1.0 for t in args.ohem_nms):
        parser.error(f"--ohem-nms must be IoUs in (0, 1], got {args.ohem_nms}")

    from detector.lit import NonFiniteLossError

    return run_reporting_errors(run, args, also=(NonFiniteLossError,))


def run(args: argparse.Namespace) -> int:
    from detector import study
    from detector.lit import NonFiniteLossError

    grid = study.loss_grid(
        args.ce_alphas, args.gammas, args.focal_alphas, args.ohem_ratios, args.ohem_budgets, args.ohem_nms
    )
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
            variant = study.Variant(lv.name, lv.name, args.config, lv.overrides)
            cfg = study.study_config(variant, args.overrides, args.work_dir, seed=seed, tag=f"s{seed}")
            print(f"== {lv.name} seed {seed}", flush=True)
            earlier = recorded.get((lv.name, seed))
            if earlier is not None and study.trained_with(earlier["config"], cfg):
                print(f"   recorded in {args.recorded}", flush=True)
                per_seed.append(earlier)
                continue
            if earlier is not None:
                print(f"   recorded in {args.recorded} with another config: not used", flush=True)
            try:
                if args.table_only:
                    trained = study.finished_run(lv.name, cfg)
                    if trained is None:
                        print("   not run yet", flush=True)
                        per_seed.append(_missing(seed, not_run=True))
                        continue
                else:
                    trained = study.train_variant(lv.name, cfg, reuse=args.reuse)
            except NonFiniteLossError as err:  # a diverging loss is a result of the ablation, not a crash
                print(f"   diverged: {err}", flush=True)
                per_seed.append(_missing(seed, diverged=str(err)))
                continue
            (ev,) = study.evaluate_at_sizes(trained, [int(cfg.data.size)], fps_iters=0)
            per_seed.append(
                {
                    "seed": seed,
                    "voc_ap": ev["voc_ap"],
                    "voc_ap_07": ev["voc_ap_07"],
                    "coco": ev["coco"],
                    "fit_seconds": trained.fit_seconds,
                    "steps": trained.steps,
                    "config": study.training_config(cfg),
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
                "voc_ap": study.seed_summary([s["voc_ap"] for s in per_seed]),
                "coco_ap": study.seed_summary([s["coco"]["AP"] for s in per_seed]),
                "seeds": per_seed,
            }
        )
    out = Path(args.out)
    png = study.plot_ablation(results, out / "ablation.png")
    best = study.best_alpha_per_gamma(results)
    machine = study.machine_description()
    markdown = render(results, best, args, machine, png.name, cfg)
    (out / "ablation.md").write_text(markdown)
    study.write_json(
        out / "ablation.json",
        {
            "machine": machine,
            "command": "python tools/ablate_loss.py " + " ".join(args.argv),
            "seeds": args.seeds,
            "results": results,
            "best_alpha_per_gamma": {
                str(g): {"alpha": r["alpha"], "voc_ap": r["voc_ap"]} for g, r in best.items()
            },
        },
    )
    print(markdown)
    print(f"written: {out / 'ablation.md'}, {out / 'ablation.json'}, {png}")
    return 0


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


def render(results: list[dict], best: dict, args: argparse.Namespace, machine: str, png: str, cfg) -> str:  # noqa: ANN001
    """The ablation as markdown: one row per variant, then the best alpha per gamma."""
    from detector.study import fmt, fmt_spread, markdown_table

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
        "Command: `python tools/ablate_loss.py " + " ".join(args.argv) + "`",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
