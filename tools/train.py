#!/usr/bin/env python
"""Train a detector: `tools/train.py [--config C] [key=value ...] [--resume CKPT]`.

Prints a summary table at the end and exports `<output.weights_dir>/<output.name>.safetensors`
(config and class names in its metadata, so `tools/eval.py --weights` alone rebuilds the model).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from detector.cli import fail, print_table

DEFAULT_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "retinanet_mbv2_trees.yaml")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config",
        help="experiment YAML (default configs/retinanet_mbv2_trees.yaml, or the checkpoint's "
        "own config with --resume)",
    )
    parser.add_argument("--resume", metavar="CKPT", help="continue from a Lightning checkpoint (.ckpt)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    args = parser.parse_args(argv)

    from detector.config import ConfigError, load_config
    from detector.data.voc import VOCFormatError
    from detector.lit import NonFiniteLossError, fit, resolve_resume_config
    from detector.weights import WeightsError

    try:
        if args.resume:
            cfg = resolve_resume_config(args.resume, args.config, args.overrides)
        else:
            cfg = load_config(args.config or DEFAULT_CONFIG, args.overrides)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        return fail(err)
    try:
        result = fit(cfg, resume=args.resume)
    except (ConfigError, FileNotFoundError, NonFiniteLossError, VOCFormatError, WeightsError) as err:
        return fail(err)
    if result.is_global_zero:  # under DDP every process returns here; one prints
        print_table("training summary", result.rows())
    return 0


if __name__ == "__main__":
    sys.exit(main())
