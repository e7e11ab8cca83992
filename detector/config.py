"""Typed experiment configuration: dataclasses validated by OmegaConf, loaded from YAML plus dotted overrides.

One `Config` holds everything an experiment needs (model, data, schedule, trainer, output), so a run is
reproducible from its YAML and the overrides given on the command line (`train.epochs=3 data.batch_size=2`).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


@dataclass
class BackboneConfig:
    """ImageNet backbone returning C3-C5 (strides 8/16/32)."""

    name: str = "mobilenet_v2"  # mobilenet_v2 | resnet18 | resnet34 | resnet50
    pretrained: bool = True  # ImageNet weights via detector.weights (random init with a warning if absent)
    trainable_layers: int = 3  # stages counted from the top that are trained; BatchNorm always frozen
    mobilenet_c5_layer: int = 18  # MobileNetV2 C5 tap: 17 (320 ch) or 18 (1280 ch)


@dataclass
class FPNConfig:
    channels: int = 256
    p6_from: str = "p5"  # "c5" (torchvision v1) or "p5" (v2)


@dataclass
class HeadConfig:
    channels: int = 256
    depth: int = 4
    norm: str = "none"  # "none" | "group"


@dataclass
class AnchorConfig:
    sizes: list[float] = field(default_factory=lambda: [32.0, 64.0, 128.0, 256.0, 512.0])  # one per P3..P7
    scales: list[float] = field(default_factory=lambda: [1.0, 2 ** (1 / 3), 2 ** (2 / 3)])
    ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])


@dataclass
class LossConfig:
    """Classification and box losses of the one-stage detector."""

    cls: str = "focal"  # focal (gamma=0 gives CE) | ohem
    alpha: float | None = 0.25
    gamma: float = 2.0
    prior: float = 0.01  # classifier bias init: every anchor starts at p = prior
    ohem_neg_pos_ratio: float = 3.0
    ohem_budget: int = 0  # > 0: fixed number of anchors per image instead of the ratio rule
    # > 0: before OHEM picks, an NMS at this IoU over the candidate anchors (scored by their CE) keeps one
    # anchor per hard spot, as in the focal-loss paper's OHEM (its best: 0.5); 0: no NMS
    ohem_nms: float = 0.0
    box: str = "smooth_l1"  # smooth_l1 | l1 | giou
    smooth_l1_beta: float = 1.0 / 9.0
    box_weight: float = 1.0
    # Both losses are divided by foreground anchors: "batch" divides the batch's sum by its foreground count
    # (the paper, Detectron, mmdetection); "image" divides each image by its own count and averages the
    # images (torchvision's RetinaNet, whose loss is always per image).
    normalize: str = "batch"


@dataclass
class ModelConfig:
    name: str = "retinanet"  # retinanet | faster_rcnn | torchvision_retinanet (the reference implementation)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    # RetinaNet's anchor assigner: "iou" (foreground at IoU >= fg_iou_thresh, background below bg_iou_thresh,
    # ignored between) or "atss" (adaptive: per box the atss_topk nearest anchors of each level, IoU >= their
    # mean + std, centre inside; no ignore band; the IoU thresholds are then unused). Faster R-CNN has its
    # own two-stage matching and ignores these keys; torchvision_retinanet supports "iou" only.
    assigner: str = "iou"
    atss_topk: int = 9  # ATSS candidates per level per box, counted in anchors (as mmdetection)
    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.4
    score_thresh: float = 0.05
    topk_candidates: int = 1000
    nms_thresh: float = 0.5
    detections_per_img: int = 100
    box_coder_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    channels_last: bool = True  # RetinaNet eval runs NHWC (faster CPU forward); training stays NCHW


@dataclass
class DataConfig:
    root: Any = "data/trees"  # one dataset folder or a list of them (VOC07+12)
    eval_root: Any = None  # folder(s) of the val/test splits; null: data.root (VOC07+12 tests on VOC2007)
    # [] (default): from the dataset (COCO categories, YOLO data.yaml names); VOC needs them listed.
    # Given for COCO / YOLO: selects and orders the file's classes by name.
    classes: list[str] = field(default_factory=list)
    format: str | None = None  # voc | coco | yolo; null: detected from the root's layout
    # A COCO split names its annotation file relative to the root (train_split=annotations/train.json);
    # a YOLO split names images/<split>/ and labels/<split>/.
    skip_empty_train: bool = False  # true: drop training images without objects (default: kept as negatives)
    train_split: str = "train"
    val_split: str = "test"
    test_split: str = "test"
    size: int = 416  # square letterbox side, a multiple of 32
    batch_size: int = 4  # per device
    workers: int = 2
    hflip: bool = True
    vflip: bool = False  # aerial data: orientation carries no meaning
    color_jitter: bool = True
    # Multiplier of the colour jitter's ranges: 1 is brightness/contrast/saturation +-0.2 and hue +-0.02,
    # 2 doubles them (for other sites' light; on the trees it did not help, docs/accuracy.md). In (0, 4].
    color_strength: float = 1.0
    scale_jitter: float = 0.0  # > 0: random rescale in [1 - j, 1 + j] before the letterbox
    # Stronger augmentation (issue 20), all off by default. rot90: turn the content by 0/90/180/270 degrees
    # (with the flips, before the pad). crop_scale: [min, max] random resized crop: a window of that area
    # fraction (aspect 3/4..4/3) is cut and letterboxed to size; boxes under 30% visible are dropped.
    # mosaic: probability that a training item is a 2x2 mosaic of itself and 3 other training items, each
    # letterboxed to size (no shrinking: object scale unchanged), cut to a random size x size window.
    rot90: bool = False
    crop_scale: list[float] = field(default_factory=list)
    mosaic: float = 0.0


@dataclass
class TrainConfig:
    epochs: int = 12
    max_steps: int | None = None  # optional cap on optimizer steps
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # cosine | step
    step_milestones: list[float] = field(default_factory=lambda: [0.67, 0.89])  # fractions of total steps
    warmup_steps: int = 100
    grad_clip: float = 0.0  # max grad norm; 0 disables
    # > 0: validate and export an exponential moving average of the weights with this decay (e.g. 0.99;
    # ramped as min(decay, (1 + n) / (10 + n)) over the first updates); 0 = off, the last step's weights
    ema_decay: float = 0.0
    precision: str = "32-true"  # 32-true | bf16-mixed | 16-mixed
    seed: int = 0
    max_nonfinite_steps: int = 5  # consecutive skipped non-finite steps before training stops
    val_every_n_epochs: int = 1
    warmup_factor: float = 0.001  # LR factor at step 0; rises linearly to 1 over warmup_steps
    step_gamma: float = 0.1  # schedule=step: LR factor applied at each milestone
    min_lr_ratio: float = 0.0  # schedule=cosine: final LR as a fraction of train.lr
    log_every_n_steps: int = 10  # logging and loss-curve sampling interval, in optimizer steps
    # > 0: also write checkpoints/last.ckpt every N optimizer steps, so a killed run resumes close to where it
    # died; N = batches per epoch puts them on epoch ends, where a resumed run matches an uninterrupted one.
    # 0 = off (last.ckpt only at validations and at the end).
    checkpoint_every_n_steps: int = 0


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    num_nodes: int = 1


@dataclass
class OutputConfig:
    dir: str = "runs"
    name: str = "retinanet_mbv2_trees"
    weights_dir: str = "weights"
    export: str = "best"  # weights exported at the end: "best" (by val/map) or "last"
    progress_bar: bool = True  # Lightning progress bar and model summary


@dataclass
class EvalConfig:
    """Operating point of precision / recall / F1 and of the report page's marks."""

    iou: float = 0.5  # a detection matches a ground truth when IoU is above this (0.4 is DeepForest's)
    score: float = 0.3  # detections scoring at least this count (the demo draws at 0.3 too)
    # flip test-time augmentation of evaluation and prediction (detector.inference.tta): [] off, or any of
    # hflip, vflip, hvflip; the tools' --tta replaces it
    tta: list[str] = field(default_factory=list)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the file or key."""


def _validate(cfg: Config) -> None:
    """Checks OmegaConf's types cannot express; raises ConfigError naming the key. The choices of a model
    component are the ones the component defines (one list each), checked here to name the key at load."""
    from detector.data.augment_options import (
        CROP_SCALE_EXPECTED,
        MOSAIC_EXPECTED,
        valid_crop_scale,
        valid_mosaic,
    )
    from detector.inference.tta import TTA_FLIPS
    from detector.models.box_loss import BOX_LOSSES
    from detector.models.fpn import P6_SOURCES
    from detector.models.matcher import ASSIGNERS
    from detector.models.retinanet import HEAD_NORMS
    from detector.models.retinanet_loss import CLS_LOSSES, NORMALIZATIONS

    def one_of(choices: tuple[str, ...]) -> str:
        return ", ".join(choices[:-1]) + f" or {choices[-1]}"

    checks = [
        (
            cfg.model.name in ("retinanet", "faster_rcnn", "torchvision_retinanet"),
            "model.name",
            "retinanet, faster_rcnn or torchvision_retinanet",
        ),
        (cfg.model.fpn.p6_from in P6_SOURCES, "model.fpn.p6_from", one_of(P6_SOURCES)),
        (cfg.model.head.norm in HEAD_NORMS, "model.head.norm", one_of(HEAD_NORMS)),
        (cfg.model.assigner in ASSIGNERS, "model.assigner", one_of(ASSIGNERS)),
        (cfg.model.atss_topk >= 1, "model.atss_topk", ">= 1 (candidate anchors per level and box)"),
        (cfg.model.loss.cls in CLS_LOSSES, "model.loss.cls", one_of(CLS_LOSSES)),
        (cfg.model.loss.box in BOX_LOSSES, "model.loss.box", one_of(BOX_LOSSES)),
        (0.0 <= cfg.model.loss.ohem_nms <= 1.0, "model.loss.ohem_nms", "an IoU in [0, 1] (0: no NMS)"),
        (cfg.model.loss.normalize in NORMALIZATIONS, "model.loss.normalize", one_of(NORMALIZATIONS)),
        (len(cfg.model.anchors.sizes) == 5, "model.anchors.sizes", "five sizes, one per level P3..P7"),
        (cfg.data.size > 0 and cfg.data.size % 32 == 0, "data.size", "a positive multiple of 32"),
        (cfg.data.batch_size > 0, "data.batch_size", "positive"),
        (cfg.data.workers >= 0, "data.workers", ">= 0"),
        (
            all(isinstance(c, str) and c for c in cfg.data.classes)
            and len(set(cfg.data.classes)) == len(cfg.data.classes),
            "data.classes",
            "distinct non-empty class names ([]: from the dataset, for COCO and YOLO)",
        ),
        (cfg.data.format in (None, "voc", "coco", "yolo"), "data.format", "voc, coco, yolo or null (detect)"),
        (valid_crop_scale(cfg.data.crop_scale), "data.crop_scale", CROP_SCALE_EXPECTED),
        (valid_mosaic(cfg.data.mosaic), "data.mosaic", MOSAIC_EXPECTED),
        (0.0 < cfg.data.color_strength <= 4.0, "data.color_strength", "in (0, 4] (1: the default jitter)"),
        (cfg.train.optimizer in ("sgd", "adamw"), "train.optimizer", "sgd or adamw"),
        (cfg.train.schedule in ("cosine", "step"), "train.schedule", "cosine or step"),
        (cfg.train.lr > 0, "train.lr", "positive"),
        (cfg.train.epochs > 0, "train.epochs", "positive"),
        (cfg.train.max_steps is None or cfg.train.max_steps > 0, "train.max_steps", "positive or null"),
        (cfg.train.warmup_steps >= 0, "train.warmup_steps", ">= 0"),
        (cfg.train.grad_clip >= 0, "train.grad_clip", ">= 0"),
        (0.0 <= cfg.train.ema_decay < 1.0, "train.ema_decay", "in [0, 1) (0: off)"),
        (
            cfg.train.precision in ("32-true", "32", "bf16-mixed", "16-mixed"),
            "train.precision",
            "32-true, bf16-mixed or 16-mixed",
        ),
        (0.0 < cfg.eval.iou < 1.0, "eval.iou", "an IoU in (0, 1)"),
        (0.0 <= cfg.eval.score <= 1.0, "eval.score", "a score in [0, 1]"),
        (all(t in TTA_FLIPS for t in cfg.eval.tta), "eval.tta", f"a list of {one_of(TTA_FLIPS)} ([]: off)"),
    ]
    for ok, key, expected in checks:
        if not ok:
            value = OmegaConf.select(OmegaConf.structured(cfg), key)
            raise ConfigError(f"{key} = {value!r}: expected {expected}")
    for key in ("root", "eval_root"):
        value = getattr(cfg.data, key)
        if key == "eval_root" and value is None:
            continue
        roots = value if isinstance(value, (list, tuple)) else [value]
        if not roots or not all(isinstance(r, str) and r for r in roots):
            raise ConfigError(f"data.{key} = {value!r}: expected a path or a list of paths")


def _path_list(root: Any) -> list[str]:
    return [os.fspath(r) for r in root] if isinstance(root, (list, tuple)) else [os.fspath(root)]


def split_roots(data: DataConfig, split: str) -> list[str]:
    """The VOC year folders to read `split` from: `data.root` for the training split, `data.eval_root` (when
    set, else `data.root`) for any other, so VOC07+12 trains on both years and tests on VOC2007 alone."""
    key = "root" if split == data.train_split or data.eval_root is None else "eval_root"
    roots = _path_list(getattr(data, key))
    if not roots:
        raise ValueError(
            f"data.{key} is empty (reading split {split!r}): give a VOC year folder or a list of them"
        )
    return roots


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config onto the typed defaults, then apply dotted `key=value` overrides.

    Unknown keys and values of the wrong type raise ConfigError naming the file or key.
    """
    merged: DictConfig = OmegaConf.structured(Config)
    try:
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise ConfigError(f"config file not found: {path}")
            merged = OmegaConf.merge(merged, OmegaConf.load(path))
        if overrides:
            bad = [o for o in overrides if "=" not in o]
            if bad:
                raise ConfigError(f"overrides must be key=value, got {bad}")
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as err:
        where = f" in {path}" if path is not None else ""
        raise ConfigError(f"invalid config{where}: {err}".replace("\n", "; ")) from None
    cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    _validate(cfg)
    return cfg


def apply_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
    """`cfg` with dotted `key=value` overrides (the command line's); unknown keys and bad values raise
    ConfigError naming them. Programs change a config with `replace_section` instead of strings."""
    if not overrides:
        return cfg
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"overrides must be key=value, got {bad}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cfg), OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as err:
        raise ConfigError(f"invalid override: {err}".replace("\n", "; ")) from None
    return from_yaml(OmegaConf.to_yaml(merged))


def replace_section(cfg: Config, section: str, **changes: Any) -> Config:
    """A validated copy of `cfg` with fields of one section replaced (`cfg` itself is not changed), e.g.
    `replace_section(cfg, "data", size=512)`."""
    current = getattr(cfg, section, None)
    if not dataclasses.is_dataclass(current):
        raise ConfigError(f"{section!r} is not a config section")
    known = {f.name for f in dataclasses.fields(current)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise ConfigError(f"{section} has no field(s) {', '.join(unknown)}")
    out = copy.deepcopy(cfg)
    setattr(out, section, dataclasses.replace(getattr(out, section), **changes))
    _validate(out)
    return out


def to_yaml(cfg: Config) -> str:
    """The full config as YAML (stored in checkpoints and exported weights)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def from_yaml(text: str) -> Config:
    """Inverse of `to_yaml`, validated the same way as `load_config`."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(text))
    except OmegaConfBaseException as err:
        raise ConfigError(f"invalid embedded config: {err}".replace("\n", "; ")) from None
    cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    _validate(cfg)
    return cfg
