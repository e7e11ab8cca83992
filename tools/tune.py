#!/usr/bin/env python
"""Recipe selection on the validation split: train one variant (a config plus overrides) once per seed, score
it on `data.val_split`, and record it with the command that reproduces it.

  python tools/tune.py --name ema --note "EMA of the weights" train.ema_decay=0.99 --seeds 0,1,2

Every variant lands in `<out>/accuracy.json` (default docs/), and the table of all of them, in the order
tried, is printed (and, with --render, written to `<out>/accuracy_table.md`). A finished run of exactly the
same config is taken back instead of trained again (`--work-dir`, default runs/tune), so adding seeds or
`--test` later costs only what is new. `--test` also scores the test split: for confirming a winner chosen
on validation, never for choosing. `--base NAME model.nms_thresh=0.4` re-scores NAME's weights with
post-processing overrides only (no training). `--tta hflip,vflip` scores with flip test-time augmentation.
Budget: one training per seed (trees, 300 steps: about 10 min on a 2-core CPU) plus ~10 s of evaluation.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from detector import cli

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = cli.ToolParser(__doc__)
    parser.add_argument("--name", required=True, help="the variant's name (its runs and its record)")
    parser.add_argument("--note", default="", help="one line: what the variant tries")
    parser.add_argument("--seeds", type=cli.comma_list(int), default=[0], help="seeds (default: 0)")
    parser.add_argument("--out", default=str(ROOT / "docs"), help="folder of accuracy.json (default docs/)")
    parser.add_argument("--work-dir", default=str(ROOT / "runs" / "tune"), help="runs and weights")
    parser.add_argument("--base", help="re-score this recorded variant's weights (post-processing overrides)")
    parser.add_argument("--test", action="store_true", help="also score the test split (confirmation only)")
    parser.add_argument("--tta", type=cli.comma_list(str), default=[], help="flip TTA views: hflip,vflip")
    parser.add_argument("--render", action="store_true", help="write <out>/accuracy_table.md")
    return cli.run(parser, tune, argv, validate=_check_base)


def _check_base(args) -> None:  # noqa: ANN001
    from detector.study.tune import training_overrides

    if args.base and training_overrides(args.overrides):
        raise ValueError(
            "--base re-scores trained weights, so only post-processing overrides apply; got "
            + " ".join(training_overrides(args.overrides))
        )


def tune(args, cfg) -> int:  # noqa: ANN001
    from detector.study.tune import TunePlan, render_accuracy, run_variant

    plan = TunePlan(
        name=args.name,
        config=args.config or cli.DEFAULT_CONFIG,
        overrides=list(args.overrides),
        seeds=list(args.seeds),
        out=Path(args.out),
        work_dir=Path(args.work_dir),
        command=shlex.join(["python", "tools/tune.py", *args.argv]),
        note=args.note,
        base=args.base,
        test=args.test,
        tta=tuple(args.tta),
    )
    run_variant(plan)
    table = render_accuracy(plan.out)
    print(table)
    if args.render:
        (plan.out / "accuracy_table.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
