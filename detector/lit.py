"""Lightning training for both detectors: the LightningModule, its schedule, callbacks and the `fit` driver.

Lightning lives here (and in the data module) only. `DetectorModule` wraps any model from
`detector.models.build_model` (same interface for RetinaNet and Faster R-CNN); `fit(cfg)` builds the data
module, the Trainer (precision, clipping, DDP, atomic checkpoints) and exports safetensors weights at the end.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from detector.atomic import atomic_open
from detector.config import Config, ConfigError, from_yaml, to_yaml
from detector.data.ground_truth import detections_to_original, ground_truth_from_dataset, ground_truths_for
from detector.evaluation.voc import voc_metrics
from detector.models import build_model
from detector.models.ema import WeightEMA
from detector.weights import load_lightning_checkpoint

__all__ = [
    "AtomicCheckpointIO",
    "DetectorModule",
    "FitResult",
    "NonFiniteLossError",
    "TrainingHistory",
    "WarmupSchedule",
    "build_param_groups",
    "config_from_checkpoint",
    "fit",
]


class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss was NaN/inf for `train.max_nonfinite_steps` steps in a row."""


# ----------------------------------------------------------------------------------------------------------
# Checkpoint files: written to a temporary file and renamed; read without unpickling arbitrary objects.
# ----------------------------------------------------------------------------------------------------------


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves a checkpoint to a temporary file in the target folder, fsyncs it and renames it into place.

    A crash mid-write leaves the previous checkpoint intact (no half-written `.ckpt`). Loading uses
    `torch.load(weights_only=True)`: tensors and plain containers only, never arbitrary pickled objects.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        with atomic_open(path) as fh:
            torch.save(checkpoint, fh)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict:
        return load_lightning_checkpoint(path, require_state_dict=False)


def config_from_checkpoint(path: str | Path) -> tuple[Config, list[str]]:
    """The config and class names a focaldet checkpoint was trained with (stored in its hyper-parameters)."""
    hparams = load_lightning_checkpoint(path).get("hyper_parameters", {})
    if "config_yaml" not in hparams:
        raise ValueError(f"{path} is not a focaldet checkpoint (no config_yaml in its hyper-parameters)")
    return from_yaml(hparams["config_yaml"]), list(hparams["class_names"])


# ----------------------------------------------------------------------------------------------------------
# Optimizer and learning-rate schedule
# ----------------------------------------------------------------------------------------------------------


def build_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters in two groups: weights with decay, and norms/biases (1-D tensors) without."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


class WarmupSchedule:
    """LR factor per optimizer step: linear warm-up from `warmup_factor`, then cosine or step decay.

    A plain object (not a lambda) so that `LambdaLR` saves its fields in the checkpoint and a resumed run
    continues on the same curve.
    """

    def __init__(
        self,
        total_steps: int,
        warmup_steps: int,
        warmup_factor: float = 0.001,
        schedule: str = "cosine",
        milestones: Sequence[float] = (0.67, 0.89),
        gamma: float = 0.1,
        min_factor: float = 0.0,
    ) -> None:
        if schedule not in ("cosine", "step"):
            raise ValueError(f"schedule must be cosine or step, got {schedule!r}")
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, min(int(warmup_steps), self.total_steps - 1))
        self.warmup_factor = float(warmup_factor)
        self.schedule = schedule
        self.milestones = [int(round(float(m) * self.total_steps)) for m in milestones]
        self.gamma = float(gamma)
        self.min_factor = float(min_factor)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            t = step / self.warmup_steps
            return self.warmup_factor + (1.0 - self.warmup_factor) * t
        if self.schedule == "step":
            return self.gamma ** sum(step >= m for m in self.milestones)
        span = max(1, self.total_steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / span)
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


# ----------------------------------------------------------------------------------------------------------
# The LightningModule
# ----------------------------------------------------------------------------------------------------------


class DetectorModule(L.LightningModule):
    """Training, validation (VOC mAP in original coordinates) and optimization for either detector.

    A non-finite loss skips the step on every rank (the flag is all-reduced, so DDP ranks stay in step).
    Lightning refuses `training_step -> None` under DDP, so instead the step returns an exact zero built from
    the parameters (every rank still runs a backward, as DDP's gradient all-reduce needs) and `optimizer_step`
    then drops the gradients without stepping: weights, momentum and AdamW moments stay untouched; the
    global step and the LR schedule still advance. After `train.max_nonfinite_steps` skipped steps in a row,
    `NonFiniteLossError` names the step and the learning rate.
    """

    def __init__(self, cfg: Config, class_names: Sequence[str] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.class_names = list(class_names if class_names is not None else cfg.data.classes)
        # Only strings in the checkpoint's hyper-parameters, so it loads with weights_only=True.
        self.save_hyperparameters({"config_yaml": to_yaml(cfg), "class_names": self.class_names})
        self.model = build_model(cfg.model, len(self.class_names))
        # train.ema_decay > 0: the average is what validation sees and what is exported
        self.ema = WeightEMA(self.model, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
        self.nonfinite_in_row = 0
        self.nonfinite_total = 0
        self._val_detections: list[tuple[str, dict, dict]] = []
        self._val_gt: dict[str, dict] | None = None
        self.last_losses: dict[str, torch.Tensor] = {}
        self.skip_step = False

    # -- training ------------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        return self.model(images)

    def compute_losses(self, images: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        """The model's loss dict (a separate method so tests can inject a non-finite loss)."""
        return self.model(images, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])

    def training_step(self, batch: tuple[torch.Tensor, list[dict]], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses = self.compute_losses(images, targets)
        loss = sum(losses.values())
        bad = (~torch.isfinite(loss.detach())).to(torch.float32).reshape(1)
        if _distributed():
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        self.skip_step = bool(bad.item() > 0)
        if self.skip_step:
            self._skip_nonfinite(loss)
            # Zero with a gradient path to every trainable parameter and none through the NaN graph.
            return sum((p * 0.0).sum() for p in self.parameters() if p.requires_grad)
        self.nonfinite_in_row = 0
        self.last_losses = {name: value.detach() for name, value in losses.items()}
        bs = images.shape[0]
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=bs)
        for name, value in losses.items():
            self.log(f"train/{name}", value.detach(), batch_size=bs)
        self.log("train/lr", self._current_lr(), prog_bar=True, batch_size=bs)
        return loss

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None
    ) -> None:
        """Run the closure (training step and backward), then step unless the loss was non-finite."""
        if optimizer_closure is None:
            optimizer.step()
            return
        loss = optimizer_closure()
        if self.skip_step:
            optimizer.zero_grad(set_to_none=True)
            return
        optimizer.step(closure=lambda: loss)
        if self.ema is not None:
            self.ema.update(self.model)

    @property
    def evaluated_model(self) -> torch.nn.Module:
        """The weights validation sees and export writes: the EMA shadow when there is one."""
        return self.ema.shadow if self.ema is not None else self.model

    def _current_lr(self) -> float:
        try:
            return float(self.trainer.optimizers[0].param_groups[0]["lr"])
        except (RuntimeError, IndexError, AttributeError):
            return float("nan")

    def _skip_nonfinite(self, loss: torch.Tensor) -> None:
        self.nonfinite_in_row += 1
        self.nonfinite_total += 1
        step, lr = self.global_step, self._current_lr()
        limit = self.cfg.train.max_nonfinite_steps
        if self.nonfinite_in_row >= limit:
            raise NonFiniteLossError(
                f"non-finite loss ({float(loss.detach())}) for {self.nonfinite_in_row} steps in a row "
                f"(train.max_nonfinite_steps={limit}); stopped at step {step}, last learning rate {lr:.6g}. "
                "Try a lower train.lr, more train.warmup_steps, train.grad_clip > 0 or 32-true precision."
            )
        warnings.warn(
            f"step {step}: non-finite loss ({float(loss.detach())}), step skipped "
            f"({self.nonfinite_in_row} in a row, {self.nonfinite_total} in total; lr {lr:.6g})",
            RuntimeWarning,
            stacklevel=2,
        )

    # -- validation ----------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_detections = []
        datamodule = getattr(self.trainer, "datamodule", None)
        self._val_gt = ground_truth_from_dataset(getattr(datamodule, "val_dataset", None))

    def validation_step(self, batch: tuple[torch.Tensor, list[dict]], batch_idx: int) -> None:
        images, targets = batch
        outputs = self.evaluated_model(images)
        dets = detections_to_original(outputs, targets)
        gts = ground_truths_for(targets, self._val_gt)
        for t, d, g in zip(targets, dets, gts, strict=True):
            self._val_detections.append((str(t["image_id"]), d, g))

    def on_validation_epoch_end(self) -> None:
        records = self._val_detections
        if _distributed():  # every rank evaluates the union (the distributed sampler pads with repeats)
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, records)
            records = [r for part in gathered for r in part]
        unique = dict((image_id, (d, g)) for image_id, d, g in records)
        self._val_detections = []
        if not unique:
            return
        dets = [d for d, _ in unique.values()]
        gts = [g for _, g in unique.values()]
        metrics = voc_metrics(dets, gts, num_classes=len(self.class_names))
        self.log("val/map", metrics["map"], prog_bar=True, sync_dist=False)
        self.log("val/map50_07", metrics["map50_07"], sync_dist=False)

    # -- optimization --------------------------------------------------------------------------------------
    def _total_steps(self) -> int:
        """min(max_steps, epochs x batches per epoch), from the train loader's length without iterating it.

        Lightning's `estimated_stepping_batches` would start the train loader before a resumed run restores
        the loader's position, so the resumed epoch would start over.
        """
        trainer = self.trainer
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None or getattr(datamodule, "train_dataset", None) is None:
            return int(trainer.estimated_stepping_batches)
        per_epoch = len(datamodule.train_dataloader())
        total = per_epoch * trainer.max_epochs if trainer.max_epochs not in (None, -1) else math.inf
        if trainer.max_steps not in (None, -1):
            total = min(total, trainer.max_steps)
        if math.isinf(total):
            raise ConfigError("train.epochs and train.max_steps are both unbounded: set one of them")
        return int(total)

    def configure_optimizers(self) -> dict[str, Any]:
        t = self.cfg.train
        groups = build_param_groups(self.model, t.weight_decay)
        if t.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum)
        else:
            optimizer = torch.optim.AdamW(groups, lr=t.lr)
        total = self._total_steps()
        schedule = WarmupSchedule(
            total,
            t.warmup_steps,
            t.warmup_factor,
            t.schedule,
            t.step_milestones,
            t.step_gamma,
            t.min_lr_ratio,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- checkpoint extras ---------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The torch generators too: Faster R-CNN samples its proposals with them, so a resumed run needs
        # the state an uninterrupted run has at this step (data order and augmentation are seeded apart).
        checkpoint["focaldet"] = {
            "nonfinite_in_row": self.nonfinite_in_row,
            "nonfinite_total": self.nonfinite_total,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("focaldet", {})
        self.nonfinite_in_row = int(state.get("nonfinite_in_row", 0))
        self.nonfinite_total = int(state.get("nonfinite_total", 0))
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])
        cuda_states = state.get("cuda_rng", [])
        if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


# ----------------------------------------------------------------------------------------------------------
# Callbacks
# ----------------------------------------------------------------------------------------------------------


class TrainingHistory(Callback):
    """Loss every `every` steps and val mAP per validation, in the keys `plot_training_curves` reads.

    Keys: `step`, `train_loss` and one `train_<name>` per loss term, `lr`; `epoch` (1-based), `val_step`,
    `val_map`, `val_map50_07`. Kept in checkpoints, so a resumed run continues the same curves.
    """

    def __init__(self, every: int = 10) -> None:
        self.every = max(1, every)
        self.history: dict[str, list] = {
            "step": [],
            "train_loss": [],
            "lr": [],
            "epoch": [],
            "val_step": [],
            "val_map": [],
            "val_map50_07": [],
        }

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        final = trainer.max_steps > 0 and step >= trainer.max_steps
        if loss is None or (step % self.every and step != 1 and not final):
            return
        if getattr(pl_module, "skip_step", False):
            return  # a skipped non-finite step has no loss worth plotting
        terms = getattr(pl_module, "last_losses", {})
        for name in terms:  # a term first seen late is padded with NaN so every series matches `step`
            self.history.setdefault(f"train_{name}", [float("nan")] * len(self.history["step"]))
        self.history["step"].append(int(step))
        self.history["train_loss"].append(float(loss))
        self.history["lr"].append(float(trainer.optimizers[0].param_groups[0]["lr"]))
        for key in self.history:
            if key.startswith("train_") and key != "train_loss":
                value = terms.get(key[len("train_") :])
                self.history[key].append(float(value) if value is not None else float("nan"))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or "val/map" not in trainer.callback_metrics:
            return
        self.history["epoch"].append(int(trainer.current_epoch) + 1)
        self.history["val_step"].append(int(trainer.global_step))
        self.history["val_map"].append(float(trainer.callback_metrics["val/map"]))
        self.history["val_map50_07"].append(float(trainer.callback_metrics.get("val/map50_07", float("nan"))))

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {k: list(v) for k, v in state_dict["history"].items()}


class ValidateAtEnd(Callback):
    """Make the last training step (max_steps or the end of the last epoch) also run validation.

    Lightning validates only at epoch ends that are multiples of `check_val_every_n_epoch`; a run stopped by
    `max_steps` mid-epoch would otherwise end without a final mAP and without a best checkpoint for it.
    """

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        last_of_steps = trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps
        last_of_epochs = (
            trainer.max_epochs is not None
            and trainer.current_epoch + 1 >= trainer.max_epochs
            and batch_idx + 1 >= trainer.num_training_batches
        )
        if (last_of_steps or last_of_epochs) and trainer.enable_validation:
            trainer.should_stop = True
            trainer.check_val_every_n_epoch = 1  # read by the epoch loop's "validate now?" check


# ----------------------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------------------


@dataclass
class FitResult:
    """What a training run produced (the tools print it as the summary table)."""

    steps: int
    epochs: int
    seconds: float
    skipped_steps: int
    best_map: float | None
    best_step: int | None
    effective_batch: int
    world_size: int
    run_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    weights: Path | None
    exported_from: str
    history_json: Path | None
    curves_png: Path | None
    history: dict[str, list] = field(default_factory=dict)
    is_global_zero: bool = True  # False in the other DDP processes (they return too, with the same numbers)

    def rows(self) -> list[tuple[str, str]]:
        """(name, value) rows for the summary table."""
        best = (
            "n/a (no validation ran)"
            if self.best_map is None
            else f"{self.best_map:.4f} (step {self.best_step})"
        )
        return [
            ("optimizer steps", str(self.steps)),
            ("epochs", str(self.epochs)),
            ("time", f"{self.seconds:.1f} s"),
            ("skipped (non-finite) steps", str(self.skipped_steps)),
            ("effective batch", f"{self.effective_batch} (per device x {self.world_size} processes)"),
            ("best val mAP@0.5 (VOC area)", best),
            ("run folder", str(self.run_dir)),
            ("best checkpoint", str(self.best_checkpoint or "-")),
            ("last checkpoint", str(self.last_checkpoint or "-")),
            (f"weights (from {self.exported_from})", str(self.weights or "-")),
            ("history", str(self.history_json or "-")),
            ("curves", str(self.curves_png or "-")),
        ]


def _class_names_of(dm: Any, cfg: Config) -> list[str]:
    names = getattr(dm, "class_names", None)
    return list(names) if names else list(cfg.data.classes)


def export_weights(module: DetectorModule, path: Path, extra: dict[str, str] | None = None) -> Path:
    """Write the model's weights (the EMA's when training kept one) as safetensors with the config YAML and
    class names in the metadata."""
    from detector.weights import save_weights

    metadata = {
        "format": "focaldet",
        "config": to_yaml(module.cfg),
        "class_names": json.dumps(module.class_names),
        **(extra or {}),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in module.evaluated_model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(path, state, metadata)
    return path


def fit(cfg: Config, resume: str | Path | None = None, callbacks: Sequence[Callback] = ()) -> FitResult:
    """Train `cfg` (optionally resuming from a checkpoint), export weights and return a summary.

    Files: `<output.dir>/<output.name>/` holds `checkpoints/{best,last}.ckpt`, `logs/metrics.csv`,
    `config.yaml`, `history.json` and `curves.png`; the weights go to
    `<output.weights_dir>/<output.name>.safetensors`. With `train.checkpoint_every_n_steps=N`, `last.ckpt` is
    also rewritten every N steps. A resume checkpoint whose tensors do not fit the model is a WeightsError.
    """
    from detector.data.datamodule import DetectionDataModule

    _check_request(cfg, resume)
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    run_dir = Path(cfg.output.dir) / cfg.output.name
    ckpt_dir = run_dir / "checkpoints"
    dm = DetectionDataModule(cfg.data, seed=cfg.train.seed)
    module = DetectorModule(cfg, _class_names_of(dm, cfg))
    if resume is not None:  # a checkpoint of another architecture or class count: say what differs
        from detector.weights import check_state_dict

        check_state_dict(
            module,
            load_lightning_checkpoint(resume)["state_dict"],
            resume,
            num_classes=len(module.class_names),
        )
    best_tracker = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor="val/map",
        mode="max",
        save_top_k=1,
        save_last=True,
        enable_version_counter=False,
        auto_insert_metric_name=False,
    )
    history = TrainingHistory(every=cfg.train.log_every_n_steps)
    trainer = _trainer(
        cfg,
        run_dir,
        [best_tracker, *_periodic_checkpoint(cfg, ckpt_dir), history, ValidateAtEnd(), *callbacks],
    )
    if trainer.is_global_zero:
        _prepare_run_dir(cfg, run_dir, ckpt_dir, fresh=resume is None)
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=str(resume) if resume is not None else None)
    seconds = time.perf_counter() - start

    last_path = ckpt_dir / "last.ckpt"
    if (
        not last_path.is_file()
        or load_lightning_checkpoint(last_path).get("global_step") != trainer.global_step
    ):
        trainer.save_checkpoint(last_path, weights_only=False)
    best_path = Path(best_tracker.best_model_path) if best_tracker.best_model_path else None
    best = load_lightning_checkpoint(best_path) if best_path is not None and best_path.is_file() else None
    best_map = float(best_tracker.best_model_score) if best_tracker.best_model_score is not None else None
    best_step = int(best.get("global_step", -1)) if best is not None else None

    weights_path = exported_from = history_json = curves_png = None
    if trainer.is_global_zero:
        use_best = cfg.output.export == "best" and best is not None
        exported_from = "best checkpoint" if use_best else "last step"
        if use_best:
            module.load_state_dict(best["state_dict"])
        weights_path = export_weights(
            module,
            Path(cfg.output.weights_dir) / f"{cfg.output.name}.safetensors",
            {
                "step": str(best_step if use_best else trainer.global_step),
                "val_map": "" if not use_best or best_map is None else f"{best_map:.6f}",
                "global_step": str(trainer.global_step),  # steps trained (a study reuses finished runs)
                "train_seconds": repr(seconds),  # exact float
            },
        )
        history_json = run_dir / "history.json"
        history_json.write_text(json.dumps(history.history, indent=1))
        curves_png = _plot_curves(history.history, run_dir / "curves.png")
    return FitResult(
        steps=int(trainer.global_step),
        epochs=int(trainer.current_epoch),
        seconds=seconds,
        skipped_steps=module.nonfinite_total,
        best_map=best_map,
        best_step=best_step,
        effective_batch=cfg.data.batch_size * trainer.world_size,
        world_size=trainer.world_size,
        run_dir=run_dir,
        best_checkpoint=best_path if best is not None else None,
        last_checkpoint=last_path,
        weights=weights_path,
        exported_from=exported_from or "-",
        history_json=history_json,
        curves_png=curves_png,
        history=history.history,
        is_global_zero=trainer.is_global_zero,
    )


def _check_request(cfg: Config, resume: str | Path | None) -> None:
    """Refuse, before anything is built, what cannot train here (a named ConfigError / FileNotFoundError)."""
    if cfg.output.export not in ("best", "last"):
        raise ConfigError(f"output.export = {cfg.output.export!r}: expected best or last")
    if int(cfg.train.checkpoint_every_n_steps) < 0:
        raise ConfigError(
            f"train.checkpoint_every_n_steps = {cfg.train.checkpoint_every_n_steps}: expected >= 0 (0 = off)"
        )
    if resume is not None and not Path(resume).is_file():
        raise FileNotFoundError(f"--resume checkpoint not found: {resume}")
    if cfg.trainer.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator = {cfg.trainer.accelerator!r} (a GPU recipe) but no CUDA GPU is available "
            "here: add the override trainer.accelerator=cpu (or auto) to train on the CPU"
        )


def _periodic_checkpoint(cfg: Config, ckpt_dir: Path) -> list[Callback]:
    """With `train.checkpoint_every_n_steps` > 0: a callback rewriting only last.ckpt every N steps."""
    every = int(cfg.train.checkpoint_every_n_steps)
    if every <= 0:
        return []
    return [
        ModelCheckpoint(
            dirpath=ckpt_dir,
            every_n_train_steps=every,
            save_top_k=0,
            save_last=True,
            enable_version_counter=False,
        )
    ]


def _trainer(cfg: Config, run_dir: Path, callbacks: list[Callback]) -> L.Trainer:
    """The Lightning trainer of a config: schedule, precision, clipping, validation, CSV log, atomic saves."""
    return L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        strategy=cfg.trainer.strategy,
        num_nodes=cfg.trainer.num_nodes,
        precision=cfg.train.precision,
        max_epochs=cfg.train.epochs,
        max_steps=cfg.train.max_steps or -1,
        gradient_clip_val=cfg.train.grad_clip or None,
        gradient_clip_algorithm="norm",
        check_val_every_n_epoch=cfg.train.val_every_n_epochs,
        num_sanity_val_steps=0,
        log_every_n_steps=cfg.train.log_every_n_steps,
        default_root_dir=run_dir,
        logger=CSVLogger(save_dir=run_dir, name="logs", version=""),
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=cfg.output.progress_bar,
        enable_model_summary=cfg.output.progress_bar,
    )


def _prepare_run_dir(cfg: Config, run_dir: Path, ckpt_dir: Path, fresh: bool) -> None:
    """Write config.yaml, remove half-written temp files and, for a fresh run, an earlier run's checkpoints
    of the same name (they would be mistaken for this run's)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    _remove_stale_temp_files(ckpt_dir, Path(cfg.output.weights_dir), cfg.output.name)
    if fresh:
        for stale in ("best.ckpt", "last.ckpt"):
            (ckpt_dir / stale).unlink(missing_ok=True)


def _remove_stale_temp_files(ckpt_dir: Path, weights_dir: Path, name: str) -> None:
    """Delete temporary files that a killed run left mid-write (`AtomicCheckpointIO`, `save_weights`).

    They never carry a final name, so nothing loads them; removing them keeps the folders clean.
    """
    patterns = [(ckpt_dir, ".*.ckpt.*.tmp"), (weights_dir, f".{name}.safetensors.*.tmp")]
    for folder, pattern in patterns:
        if folder.is_dir():
            for leftover in folder.glob(pattern):
                leftover.unlink(missing_ok=True)


def _plot_curves(history: dict[str, list], path: Path) -> Path | None:
    """Loss and val-mAP curves as a PNG (None with a warning when plotting is unavailable)."""
    try:
        from detector.visualize import plot_training_curves

        plot_training_curves(history, path)
    except Exception as err:  # a plot must never lose a finished training run
        warnings.warn(f"could not plot training curves to {path}: {err}", RuntimeWarning, stacklevel=2)
        return None
    return path
