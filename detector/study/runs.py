"""The study tools' runs: named variants of a config, trained once through the shared Lightning loop and
taken back later when a finished run (or a recorded result) has exactly the config asked for.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from detector.config import Config, apply_overrides, load_config, replace_section

__all__ = [
    "TrainedModel",
    "Variant",
    "finished_run",
    "load_variant",
    "study_config",
    "train_variant",
    "trained_with",
    "training_config",
]


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
    cfg = load_config(variant.config, [*variant.overrides, *common])
    cfg = replace_section(
        cfg,
        "output",
        dir=str(work / "runs"),
        name=name,
        weights_dir=str(work / "weights"),
        progress_bar=False,
    )
    return cfg if seed is None else replace_section(cfg, "train", seed=int(seed))


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
    from detector.inference.predict import load_detector

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
    from detector.inference.predict import load_detector

    model, cfg, class_names = load_detector(weights)
    return TrainedModel(name, apply_overrides(cfg, list(overrides)), class_names, model, Path(weights))
