"""Lightning training: schedule, parameter groups, atomic checkpoints, fit for both detectors, resume,
non-finite-loss skipping (single process and DDP), export and reload of the weights."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from lit_helpers import disable_loss_compile, make_data, tiny_config

from detector import cli
from detector.lit import (
    AtomicCheckpointIO,
    DetectorModule,
    NonFiniteLossError,
    WarmupSchedule,
    build_param_groups,
    config_from_checkpoint,
    fit,
)
from detector.weights import load_lightning_checkpoint as load_checkpoint_file

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def data(tiny_voc, tmp_path):
    from conftest import write_tiny_voc

    return make_data(write_tiny_voc, tmp_path / "voc")


@pytest.fixture(autouse=True)
def _no_compile(monkeypatch):
    disable_loss_compile(monkeypatch)


# ----------------------------------------------------------------------------------------------- pure parts


def test_warmup_then_cosine():
    s = WarmupSchedule(total_steps=110, warmup_steps=10, warmup_factor=0.1, schedule="cosine")
    assert s(0) == pytest.approx(0.1)
    assert s(5) == pytest.approx(0.1 + 0.9 * 0.5)
    assert s(10) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.5)  # half way through the cosine
    assert s(110) == pytest.approx(0.0, abs=1e-12)
    assert s(500) == pytest.approx(0.0, abs=1e-12)  # past the end it stays at the floor
    floor = WarmupSchedule(100, 0, schedule="cosine", min_factor=0.05)
    assert floor(0) == pytest.approx(1.0) and floor(100) == pytest.approx(0.05)


def test_warmup_then_step_decay():
    s = WarmupSchedule(total_steps=100, warmup_steps=5, schedule="step", milestones=[0.5, 0.8], gamma=0.1)
    assert [s(i) for i in (5, 49, 50, 79, 80, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    with pytest.raises(ValueError, match="cosine or step"):
        WarmupSchedule(10, 1, schedule="linear")


def test_norms_and_biases_get_no_weight_decay():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4), torch.nn.Conv2d(4, 4, 1))
    model[2].weight.requires_grad_(False)
    decay, no_decay = build_param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [model[0].weight.shape]  # frozen weights are left out
    assert len(no_decay["params"]) == 4  # conv biases and the norm's affine


def test_atomic_checkpoint_io_never_leaves_a_half_written_file(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpt" / "last.ckpt"
    io.save_checkpoint({"global_step": 3, "w": torch.ones(2)}, path)
    assert io.load_checkpoint(path)["global_step"] == 3

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom while writing")

    with pytest.raises(RuntimeError, match="boom"):
        io.save_checkpoint({"global_step": 4, "bad": Unpicklable()}, path)
    assert io.load_checkpoint(path)["global_step"] == 3  # the previous checkpoint is intact
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary left behind


def test_checkpoints_are_loaded_without_unpickling(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"obj": WarmupSchedule(10, 1)}, path)  # a pickled class instance, not plain data
    with pytest.raises(ValueError, match="refused to load"):
        load_checkpoint_file(path)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint_file(tmp_path / "missing.ckpt")


# ------------------------------------------------------------------------------------------------- training


@pytest.mark.slow
@pytest.mark.parametrize("model", ["retinanet", "faster_rcnn"])
def test_fit_a_few_steps_exports_weights_that_rebuild_the_model(data, tmp_path, model):
    from detector.inference.predict import load_detector

    # Validation every 50 epochs never comes due: the final step must still validate (ValidateAtEnd).
    cfg = tiny_config(data, tmp_path, "train.val_every_n_epochs=50", name=model, model=model)
    result = fit(cfg)
    assert result.steps == 2 and result.skipped_steps == 0 and result.effective_batch == 2
    assert result.best_map is not None and 0.0 <= result.best_map <= 1.0  # validated at the final step
    assert result.last_checkpoint.is_file() and result.best_checkpoint.is_file()
    assert result.history["step"] == [1, 2] and all(math.isfinite(v) for v in result.history["train_loss"])
    assert result.history["val_step"] == [2]
    assert result.curves_png.is_file() and json.loads(result.history_json.read_text())["step"] == [1, 2]
    assert load_checkpoint_file(result.last_checkpoint)["global_step"] == 2
    assert config_from_checkpoint(result.last_checkpoint)[0] == cfg

    assert result.weights == tmp_path / "weights" / f"{model}.safetensors"
    rebuilt, cfg2, names = load_detector(result.weights)
    assert names == ["cat", "dog"] and cfg2.model == cfg.model
    best = load_checkpoint_file(result.best_checkpoint)["state_dict"]
    for key, value in rebuilt.state_dict().items():
        torch.testing.assert_close(value, best[f"model.{key}"])
    with torch.no_grad():
        out = rebuilt(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    assert set(out[0]) >= {"boxes", "scores", "labels"}


@pytest.mark.slow
def test_resume_continues_at_the_saved_step_with_the_saved_optimizer_state(data, tmp_path):
    import lightning as L

    first = fit(tiny_config(data, tmp_path, "train.max_steps=2", "train.epochs=5"))
    saved = load_checkpoint_file(first.last_checkpoint)
    assert saved["global_step"] == 2

    seen = {}

    class Probe(L.Callback):
        def on_train_start(self, trainer, pl_module):
            seen["step"] = trainer.global_step
            seen["optimizer"] = {
                k: v.clone() if torch.is_tensor(v) else v
                for k, v in trainer.optimizers[0].state_dict()["state"][0].items()
            }
            seen["lr_steps"] = trainer.lr_scheduler_configs[0].scheduler.last_epoch

    # As `tools/train.py --resume CKPT train.max_steps=4` does: the config comes from the checkpoint.
    parser = cli.ToolParser(None, resume=True)
    cfg = cli.tool_config(parser.parse(["train.max_steps=4", "--resume", str(first.last_checkpoint)]))
    assert cfg.train.max_steps == 4 and cfg.data.root == str(data)
    resumed = fit(cfg, resume=first.last_checkpoint, callbacks=[Probe()])
    assert seen["step"] == 2 and seen["lr_steps"] == 2
    for key, value in saved["optimizer_states"][0]["state"][0].items():
        torch.testing.assert_close(seen["optimizer"][key], value)  # AdamW moments and step count restored
    assert resumed.steps == 4
    assert resumed.history["step"] == [1, 2, 3, 4]  # the curves continue across the resume


class _Killed(RuntimeError):
    """Stands in for a crash right after a periodic checkpoint was written."""


@pytest.mark.slow
@pytest.mark.parametrize("model,ema", [("retinanet", 0.0), ("retinanet", 0.9), ("faster_rcnn", 0.0)])
def test_resume_mid_epoch_with_shuffling_and_augmentation_ends_with_the_uninterrupted_weights(
    data, tmp_path, model, ema
):
    import lightning as L

    from detector.weights import load_weights

    # 4 images at batch 1: 4 batches per epoch; the checkpoint at step 3 is in the middle of epoch 0.
    recipe = [
        "data.batch_size=1",
        "data.hflip=true",
        "data.vflip=true",
        "data.color_jitter=true",
        "data.scale_jitter=0.2",
        "train.epochs=2",
        "train.max_steps=null",
        "train.val_every_n_epochs=1000",
        "train.checkpoint_every_n_steps=3",
        f"train.ema_decay={ema}",  # the weight average resumes too (its weights are the exported ones)
        "output.export=last",
    ]

    class CrashAfterStep3(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step == 3:
                raise _Killed("crash after the step-3 checkpoint")

    crashed = tiny_config(data, tmp_path, *recipe, name="crashed", model=model)
    with pytest.raises(_Killed):
        fit(crashed, callbacks=[CrashAfterStep3()])
    ckpt = Path(crashed.output.dir) / "crashed" / "checkpoints" / "last.ckpt"
    assert load_checkpoint_file(ckpt)["global_step"] == 3
    resumed = fit(crashed, resume=ckpt)
    straight = fit(tiny_config(data, tmp_path, *recipe, name="straight", model=model))
    assert resumed.steps == straight.steps == 8

    after, _ = load_weights(resumed.weights)
    expected, _ = load_weights(straight.weights)
    differ = [k for k in expected if not torch.equal(after[k], expected[k])]
    assert differ == [], f"{len(differ)} tensors differ after the resume, e.g. {differ[:3]}"


@pytest.mark.slow
def test_a_non_finite_loss_skips_the_step_and_training_goes_on(data, tmp_path, monkeypatch):
    import lightning as L

    original = DetectorModule.compute_losses

    def nan_at_step_1(self, images, targets):
        losses = original(self, images, targets)
        if self.global_step == 1:
            losses = {k: v * float("nan") for k, v in losses.items()}
        return losses

    monkeypatch.setattr(DetectorModule, "compute_losses", nan_at_step_1)
    snapshots = {}

    class Snap(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            snapshots[("before", batch_idx)] = [p.detach().clone() for p in pl_module.parameters()]

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            snapshots[("after", batch_idx)] = [p.detach().clone() for p in pl_module.parameters()]

    cfg = tiny_config(data, tmp_path, "train.max_steps=3", "train.epochs=3", "train.max_nonfinite_steps=2")
    with pytest.warns(RuntimeWarning, match="non-finite loss"):
        result = fit(cfg, callbacks=[Snap()])
    assert result.skipped_steps == 1 and result.steps == 3
    unchanged = all(
        torch.equal(a, b) for a, b in zip(snapshots[("before", 1)], snapshots[("after", 1)], strict=True)
    )
    changed = any(
        not torch.equal(a, b) for a, b in zip(snapshots[("before", 0)], snapshots[("after", 0)], strict=True)
    )
    assert unchanged and changed  # the NaN step left every weight alone; a normal step moved them
    assert all(torch.isfinite(p).all() for p in snapshots[("after", 1)])


@pytest.mark.slow
def test_too_many_non_finite_steps_in_a_row_stop_with_a_clear_error(data, tmp_path, monkeypatch):
    def always_nan(self, images, targets):
        p = next(self.parameters())
        return {"classification": p.sum() * float("inf"), "bbox_regression": p.sum() * 0}

    monkeypatch.setattr(DetectorModule, "compute_losses", always_nan)
    cfg = tiny_config(data, tmp_path, "train.max_steps=10", "train.epochs=5", "train.max_nonfinite_steps=3")
    with pytest.warns(RuntimeWarning), pytest.raises(NonFiniteLossError) as err:
        fit(cfg)
    msg = str(err.value)
    assert "3 steps in a row" in msg and "stopped at step 2" in msg and "learning rate" in msg


DDP_SCRIPT = """
import json, os, sys
import torch
sys.path.insert(0, {tests!r})
from lit_helpers import tiny_config
from detector.lit import DetectorModule, fit

original = DetectorModule.compute_losses

def nan_on_rank1_step1(self, images, targets):
    losses = original(self, images, targets)
    if self.global_rank == 1 and self.global_step == 1:  # only one rank sees the NaN
        losses = {{k: v * float("nan") for k, v in losses.items()}}
    return losses

DetectorModule.compute_losses = nan_on_rank1_step1
captured = {{}}
_fit_end = DetectorModule.on_fit_end

def on_fit_end(self):
    captured["checksum"] = float(sum(p.double().sum() for p in self.model.parameters()))
    captured["rank"] = self.global_rank
    captured["skipped"] = self.nonfinite_total

DetectorModule.on_fit_end = on_fit_end
cfg = tiny_config({data!r}, {out!r}, "trainer.devices=2", "trainer.strategy=ddp", "train.max_steps=3",
                  "train.epochs=5", "data.batch_size=1")
result = fit(cfg)
captured.update(steps=result.steps, effective_batch=result.effective_batch, world=result.world_size)
with open(os.path.join({out!r}, f"rank{{captured['rank']}}.json"), "w") as f:
    json.dump(captured, f)
"""


@pytest.mark.slow
def test_ddp_two_cpu_processes_skip_a_nan_on_one_rank_together(data, tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(
        textwrap.dedent(DDP_SCRIPT.format(tests=str(REPO / "tests"), data=str(data), out=str(tmp_path)))
    )
    env = {**os.environ, "FOCALDET_NO_COMPILE": "1", "PL_DISABLE_FORK": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        assert (r["steps"], r["world"], r["effective_batch"], r["skipped"]) == (3, 2, 2, 1)
    assert ranks[0]["checksum"] == ranks[1]["checksum"]  # the ranks stayed in sync through the skipped step
    assert (tmp_path / "weights" / "tiny.safetensors").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without a GPU")
@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_a_gpu_recipe_on_a_machine_without_one_says_how_to_train_on_the_cpu(data, tmp_path, accelerator):
    from detector.config import ConfigError

    cfg = tiny_config(data, tmp_path, f"trainer.accelerator={accelerator}")
    with pytest.raises(
        ConfigError, match=r"no CUDA GPU is available here: add the override trainer\.accelerator=cpu"
    ):
        fit(cfg)
    assert not (tmp_path / "runs").exists()  # refused before anything was written
