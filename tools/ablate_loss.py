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
`train.max_steps=N`, a smaller grid (`--gammas 2 --focal-alphas 0.25 --ce-alphas 0.75 --ohem-budgets ''`),
`--only NAME,NAME`, or run it on a GPU. With `--reuse`, runs that already finished in --work-dir are
evaluated instead of trained again: stop the grid any time and rerun the same command (more --seeds too).
`--table-only` trains nothing: it tables the runs that finished and lists the rest as not run yet.
`--recorded FILE` takes seeds from an earlier ablation.json (each seed records the config it trained
with) where the config is the same, so results outlive the work dir's weights.
"""

from __future__ import annotations

import sys
from pathlib import Path

from detector import cli

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    from detector.lit import NonFiniteLossError

    floats, ints = cli.comma_list(float, allow_empty=True), cli.comma_list(int, allow_empty=True)
    parser = cli.ToolParser(__doc__)
    parser.add_argument("--seeds", type=cli.comma_list(int), default=[0], help="comma list (default 0)")
    parser.add_argument("--ce-alphas", type=floats, default=[0.25, 0.5, 0.75], help="comma list")
    parser.add_argument("--gammas", type=floats, default=[0.5, 1.0, 2.0, 5.0], help="comma list")
    parser.add_argument("--focal-alphas", type=cli.comma_list(float), default=[0.25, 0.5, 0.75])
    parser.add_argument("--ohem-ratios", type=floats, default=[3.0], help="negatives per positive")
    parser.add_argument("--ohem-budgets", type=ints, default=[256], help="anchors per image ('' for none)")
    parser.add_argument("--ohem-nms", type=floats, default=[0.5], help="IoUs of the NMS before the OHEM pick")
    parser.add_argument("--only", type=cli.comma_list(str), help="run only these variants of the grid")
    parser.add_argument("--out", default=str(ROOT / "docs"), help="folder for ablation.{md,json,png}")
    parser.add_argument(
        "--work-dir", default=str(ROOT / "runs" / "ablation"), help="runs and weights go here"
    )
    parser.add_argument(
        "--reuse", action="store_true", help="load runs that finished in --work-dir with exactly this config"
    )
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
    return cli.run(parser, ablate, argv, also=(NonFiniteLossError,))


def ablate(args, cfg) -> int:  # noqa: ANN001 - cfg: the base config, checked
    from detector.study.ablation import AblationPlan, loss_grid, run_ablation

    for name in ("ce_alphas", "focal_alphas"):
        if any(not 0.0 < a < 1.0 for a in getattr(args, name)):
            raise ValueError(f"--{name.replace('_', '-')} must be in (0, 1), got {getattr(args, name)}")
    if any(g < 0 for g in args.gammas) or any(r <= 0 for r in args.ohem_ratios):
        raise ValueError("--gammas must be >= 0 and --ohem-ratios > 0")
    grid = loss_grid(
        args.ce_alphas, args.gammas, args.focal_alphas, args.ohem_ratios, args.ohem_budgets, args.ohem_nms
    )
    plan = AblationPlan(
        grid=grid,
        seeds=args.seeds,
        config=args.config or cli.DEFAULT_CONFIG,
        overrides=args.overrides,
        work_dir=args.work_dir,
        out=args.out,
        command="python tools/ablate_loss.py " + " ".join(args.argv),
        only=args.only,
        reuse=args.reuse,
        table_only=args.table_only,
        recorded=args.recorded,
    )
    run_ablation(plan)
    return 0


if __name__ == "__main__":
    sys.exit(main())
