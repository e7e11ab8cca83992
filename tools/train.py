#!/usr/bin/env python
"""Train a detector: `tools/train.py [--config C] [--resume CKPT] [key=value ...]`.

Overrides go anywhere on the line (`tools/train.py train.max_steps=50 --config C data.root=D`). Prints a
summary table at the end and exports `<output.weights_dir>/<output.name>.safetensors` (config and class names
in its metadata, so `tools/eval.py --weights` alone rebuilds the model). With `--resume` and no `--config`,
the checkpoint's own config is the base.
"""

from __future__ import annotations

import sys

from detector import cli


def main(argv: list[str] | None = None) -> int:
    from detector.lit import NonFiniteLossError

    parser = cli.ToolParser(__doc__, resume=True)
    return cli.run(parser, train, argv, also=(NonFiniteLossError,))


def train(args, cfg) -> int:  # noqa: ANN001
    from detector.lit import fit

    result = fit(cfg, resume=args.resume)
    if result.is_global_zero:  # under DDP every process returns here; one prints
        cli.print_table("training summary", result.rows())
    return 0


if __name__ == "__main__":
    sys.exit(main())
