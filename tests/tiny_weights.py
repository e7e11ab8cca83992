"""A random-init tiny detector exported as focaldet safetensors, for tool tests that need no training."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lit_helpers import TINY_MODEL

from detector.config import load_config, to_yaml
from detector.models import build_model
from detector.weights import save_weights


def write_tiny_weights(path: Path, classes: list[str], *extra: str, seed: int = 0) -> Path:
    """Weights of a tiny RetinaNet (64 px input, random init) with config and class names in the metadata."""
    torch.manual_seed(seed)
    cfg = load_config(None, [*TINY_MODEL, "data.size=64", f"data.classes={json.dumps(classes)}", *extra])
    model = build_model(cfg.model, len(classes))
    meta = {"format": "focaldet", "config": to_yaml(cfg), "class_names": json.dumps(classes)}
    return save_weights(path, model.state_dict(), meta)
