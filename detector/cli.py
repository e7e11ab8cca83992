"""The one command-line front end of every tool in tools/.

Conventions (the same in every tool):
- `key=value` config overrides (dotted keys, `data.root=D train.max_steps=10`) go anywhere on the line:
  before, between or after options and positional arguments;
- list options take comma lists (`--sizes 256,320`), so they can never swallow an override;
- the config comes from `--config` (a YAML), else from `--weights` / `--resume` (the config stored in the
  file), else from the tool's default config; `--print-config` prints the resolved config and exits;
- `--weights PATH` names an exported `.safetensors` file (repeated where a tool takes several);
- `--device auto|cpu|cuda[:N]`, auto being CUDA when present;
- every error ends the tool with exit code 2 and one line, `error: <message>`, naming the file or key.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from detector.reporting import PRF_HEADER, fmt_metric, format_table, prf_rows, print_table

__all__ = [
    "DEFAULT_CONFIG",
    "ToolParser",
    "comma_list",
    "fail",
    "format_table",
    "print_eval_report",
    "print_table",
    "resolve_device",
    "save_pr_curves",
    "split_overrides",
    "tool_config",
]

DEFAULT_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "retinanet_mbv2_trees.yaml")
# A config override: a dotted key (at least one dot), '=', a value. Paths such as a=b.png have no dotted key.
_OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)+=")


def comma_list(item_type: Callable[[str], Any], allow_empty: bool = False) -> Callable[[str], list[Any]]:
    """argparse `type=` for a comma list (`--sizes 256,320`): one token, so it never swallows an override;
    with `allow_empty`, '' is the empty list."""

    def parse(text: str) -> list[Any]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items and not allow_empty:
            raise argparse.ArgumentTypeError(f"expected a comma list, got {text!r}")
        try:
            return [item_type(t) for t in items]
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{text!r}: {err}") from None

    parse.__name__ = f"comma list of {getattr(item_type, '__name__', 'values')}"
    return parse


def split_overrides(parser: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(overrides, other arguments): every `section.key=value` token that is not the value of an option."""
    takes_value = {
        opt
        for action in parser._actions
        for opt in action.option_strings
        if action.nargs != 0 and not isinstance(action, (argparse._StoreConstAction, argparse._HelpAction))
    }
    overrides, rest = [], []
    previous = None
    for token in argv:
        if _OVERRIDE.match(token) and previous not in takes_value:
            overrides.append(token)
        else:
            rest.append(token)
        previous = token if token.startswith("-") and "=" not in token else None
    return overrides, rest


class ToolParser(argparse.ArgumentParser):
    """argparse with the shared options and conventions (module docstring); `parse` returns the namespace
    with `overrides` (the key=value tokens) and `argv` (the command line as given)."""

    def __init__(
        self,
        description: str | None,
        *,
        config: bool = True,
        weights: str | None = None,
        resume: bool = False,
        device: bool = False,
        default_config: str | None = DEFAULT_CONFIG,
    ) -> None:
        super().__init__(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
        if weights not in (None, "optional", "required", "many"):
            raise ValueError(f"weights must be None, optional, required or many, got {weights!r}")
        self.takes_config, self.weights_mode, self.default_config = config, weights, default_config
        if weights == "many":
            self.add_argument(
                "--weights", action="append", default=[], metavar="PATH",
                help="exported .safetensors weights (repeat the option for several files)",
            )  # fmt: skip
        elif weights:
            self.add_argument(
                "--weights", required=weights == "required", metavar="PATH",
                help="exported .safetensors weights (written by tools/train.py); its config is the default",
            )  # fmt: skip
        if config:
            default = f" (default: {Path(default_config).name})" if default_config else ""
            self.add_argument("--config", metavar="YAML", help=f"experiment config{default}")
            self.add_argument(
                "--print-config", action="store_true", help="print the resolved config (YAML) and exit"
            )
        if resume:
            self.add_argument("--resume", metavar="CKPT", help="continue from a checkpoint (.ckpt)")
        if device:
            self.add_argument(
                "--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N"
            )

    def error(self, message: str) -> None:  # type: ignore[override]
        """One line and exit code 2, as every other error of a tool."""
        print(f"error: {self.prog}: {message}", file=sys.stderr)
        raise SystemExit(2)

    def parse(self, argv: Sequence[str] | None = None) -> argparse.Namespace:
        """Parse options and positionals in any order, with the overrides taken out first."""
        argv = list(sys.argv[1:] if argv is None else argv)
        overrides, rest = split_overrides(self, argv)
        if overrides and not self.takes_config:
            self.error(f"takes no key=value config overrides, got {' '.join(overrides)}")
        args = self.parse_intermixed_args(rest)
        args.overrides, args.argv = overrides, argv
        return args


def add_prediction_options(parser: argparse.ArgumentParser) -> None:
    """`--tile`, `--overlap` and `--tta`: how the predicting tools (eval, infer) cut large images and flip."""
    parser.add_argument(
        "--tile", type=int, help="tile side in px (default: the model size, for images over twice it; 0: off)"
    )
    parser.add_argument("--overlap", type=float, default=0.25, help="tile overlap fraction (default 0.25)")
    parser.add_argument(
        "--tta",
        type=comma_list(str, allow_empty=True),
        help="flip test-time augmentation, a comma list of hflip, vflip, hvflip ('': off; default: eval.tta, "
        "off unless the config sets it): flipped copies' detections merged by one NMS at model.nms_thresh",
    )


def tool_config(args: argparse.Namespace, default_config: str | None = DEFAULT_CONFIG) -> Any:
    """The tool's config: `--config`, else the config stored in `--resume` / `--weights`, else the default
    (None: the typed defaults); then the overrides. With weights and `--config`, the model stays the file's
    and only the data section of the YAML is taken (the tensors decide the architecture)."""
    from detector.config import apply_overrides, load_config

    resume = getattr(args, "resume", None)
    weights = getattr(args, "weights", None)
    weights = weights if isinstance(weights, str) else None
    if resume and not args.config:
        from detector.lit import config_from_checkpoint

        cfg = config_from_checkpoint(resume)[0]
    elif weights:
        cfg = _stored_config(weights)
        if getattr(args, "config", None):
            cfg.data = load_config(args.config).data
    else:  # no default config: the typed defaults
        cfg = load_config(getattr(args, "config", None) or default_config)
    return apply_overrides(cfg, args.overrides)


def _stored_config(weights: str) -> Any:
    """The config stored in a weights file: safetensors metadata, or an ONNX export's (at its input size)."""
    from detector.config import from_yaml

    if Path(weights).suffix == ".onnx":
        from detector.inference.predict import load_detector

        return load_detector(weights)[1]
    from detector.weights import read_config

    return from_yaml(read_config(weights))


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' when CUDA is present, else 'cpu'; a CUDA device that is not there is an error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available here (use --device cpu or auto)")
    return str(device)


def _errors(also: tuple[type[BaseException], ...]) -> tuple[type[BaseException], ...]:
    """What a tool reports as one line: bad config, data, weights or values, missing files or packages."""
    from detector.config import ConfigError

    return (ConfigError, FileNotFoundError, ValueError, ImportError, *also)


def run(
    parser: ToolParser,
    work: Callable[..., int],
    argv: Sequence[str] | None = None,
    also: tuple[type[BaseException], ...] = (),
    validate: Callable[[argparse.Namespace], None] | None = None,
) -> int:
    """Parse, `validate(args)` (a ValueError there is a usage error), resolve the config (`--print-config`
    stops there), then `work(args, cfg)` (`work(args)` for a tool without a config); errors become
    `error: <message>` and exit code 2."""
    args = parser.parse(argv)
    if validate is not None:
        try:
            validate(args)
        except ValueError as err:
            parser.error(str(err))
    try:
        if not parser.takes_config:
            return work(args)
        cfg = tool_config(args, parser.default_config)
        if args.print_config:
            from detector.config import to_yaml

            print(to_yaml(cfg), end="")
            return 0
        return work(args, cfg)
    except _errors(also) as err:
        return fail(err)


def fail(err: BaseException | str, code: int = 2) -> int:
    """Print `error: <message>` (one line) to stderr and return the exit code (tools `return fail(err)`)."""
    message = str(err).replace("\n", "; ")
    print(f"error: {message}", file=sys.stderr)
    return code


def save_pr_curves(voc_result: dict, class_names: list[str], folder: Path) -> list[str]:
    """`pr_<class>.png` per evaluated class plus `pr_curves.png` with all; failures are only reported."""
    from detector.visualize import plot_pr_curves

    written = []
    try:
        for cls in sorted(voc_result["ap"]):
            one = {
                "map": voc_result["ap"][cls],
                "ap": {cls: voc_result["ap"][cls]},
                "precision": {cls: voc_result["precision"][cls]},
                "recall": {cls: voc_result["recall"][cls]},
            }
            name = _safe(class_names[cls - 1])
            written.append(plot_pr_curves(one, class_names, folder / f"pr_{name}.png"))
        if len(voc_result["ap"]) > 1:
            written.append(plot_pr_curves(voc_result, class_names, folder / "pr_curves.png"))
    except Exception as err:  # the numbers are already computed; never lose them over a plot
        print(f"warning: could not plot PR curves: {err}", file=sys.stderr)
    return [str(p) for p in written]


def _safe(name: str) -> str:
    """A class name usable as part of a file name."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name) or "class"


def print_eval_report(report: dict) -> None:
    """Per-class AP table, COCO metrics and the model/speed table of an `evaluate_split` report."""
    voc = report["voc"]
    rows = [
        (
            c["class"],
            c["num_gt"],
            c["num_det"],
            fmt_metric(c["ap"]),
            fmt_metric(c["ap_07"]),
            fmt_metric(c.get("ap40")),
        )
        for c in voc["per_class"]
    ]
    rows.append(
        ("mean", "", "", fmt_metric(voc["map"]), fmt_metric(voc["map_07"]), fmt_metric(voc.get("map40")))
    )
    print_table(
        f"VOC AP@0.5 on {report['split']} ({report['num_images']} images)",
        rows,
        header=("class", "gt", "detections", "AP (area)", "AP (07 11-pt)", "AP40 (area)"),
    )
    if "prf" in report:
        print_table(
            f"precision / recall / F1 at score >= {report['eval']['score']:g} (one-to-one, devkit matching)",
            prf_rows(report["prf"]),
            header=PRF_HEADER,
        )
    print_table(
        "COCO metrics", [(k, f"{v:.4f}") for k, v in report["coco"].items()], header=("metric", "value")
    )
    rows = [
        ("model", f"{report['model']} / {report['backbone']} @ {report['size']} px"),
        ("parameters", f"{report['params']:,}"),
    ]
    if report.get("tta"):
        rows.append(("test-time flips", f"{', '.join(report['tta'])} (FPS without them)"))
    for name, stats in report.get("speed", {}).items():
        if isinstance(stats, dict):
            rows.append(
                (f"FPS {name}", f"{stats['fps']:.2f} (median {stats['latency_ms_median']:.1f} ms/batch)")
            )
    if "speed" in report:
        rows.append(("FPS device", report["speed"]["device"]))
    print_table("model", rows)
