"""Faults around trained weights and training runs: weights of another class count or architecture say what
differs, and a training process killed with SIGKILL resumes to the same weights as an uninterrupted run."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from lit_helpers import disable_loss_compile, tiny_config, tiny_overrides

from detector.config import to_yaml
from detector.inference.predict import load_detector
from detector.lit import DetectorModule, fit
from detector.models import build_model
from detector.weights import (
    WeightsError,
    check_state_dict,
    load_state_dict_checked,
    load_weights,
    save_weights,
)
from detector.weights import load_lightning_checkpoint as load_checkpoint_file

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_compile(monkeypatch):
    disable_loss_compile(monkeypatch)


def _export(path: Path, model: torch.nn.Module, cfg, class_names: list[str]) -> Path:
    """Weights as tools/train.py exports them, with whatever config and class names the metadata claims."""
    metadata = {"format": "focaldet", "config": to_yaml(cfg), "class_names": json.dumps(class_names)}
    return save_weights(path, model.state_dict(), metadata)


# ------------------------------------------------------------------------------------- mismatched weights


def test_exact_fit_loads_every_tensor(tmp_path):
    cfg = tiny_config(tmp_path / "voc", tmp_path)
    source, target = build_model(cfg.model, 2), build_model(cfg.model, 2)
    check_state_dict(target, source.state_dict(), "x.safetensors")  # no error
    load_state_dict_checked(target, source.state_dict(), "x.safetensors")
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


@pytest.mark.parametrize(("trained", "claimed"), [(1, 2), (3, 1)])
def test_retinanet_weights_for_another_class_count_say_so(tmp_path, trained, claimed):
    cfg = tiny_config(tmp_path / "voc", tmp_path)  # 9 anchors per location, head channels 16
    path = _export(
        tmp_path / "w.safetensors",
        build_model(cfg.model, trained),
        cfg,
        [f"c{i}" for i in range(claimed)],
    )
    with pytest.raises(WeightsError) as info:
        load_detector(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert f"trained for {trained} class(es), model has {claimed}" in message
    weight = f"cls_head.predictor.weight: file [{9 * trained}, 16, 3, 3] vs model [{9 * claimed}, 16, 3, 3]"
    assert weight in message
    assert f"cls_head.predictor.bias: file [{9 * trained}] vs model [{9 * claimed}]" in message
    assert "2 shape mismatch(es)" in message and "missing" not in message


def test_faster_rcnn_class_count_counts_the_background_class(tmp_path):
    cfg = tiny_config(tmp_path / "voc", tmp_path, model="faster_rcnn")
    path = _export(tmp_path / "w.safetensors", build_model(cfg.model, 1), cfg, ["a", "b", "c"])
    with pytest.raises(WeightsError, match=r"trained for 1 class\(es\), model has 3") as info:
        load_detector(path)
    # torchvision's predictor has C + 1 outputs (background) and 4 (C + 1) box outputs
    assert "roi_heads.box_predictor.cls_score.weight: file [2, " in str(info.value)
    assert "roi_heads.box_predictor.bbox_pred.bias: file [8] vs model [16]" in str(info.value)


def test_weights_of_another_architecture_list_missing_and_unexpected_keys(tmp_path):
    retina = tiny_config(tmp_path / "voc", tmp_path)
    frcnn = tiny_config(tmp_path / "voc", tmp_path, model="faster_rcnn")
    # Faster R-CNN tensors under metadata that claims a RetinaNet (a mixed-up or edited file)
    path = _export(tmp_path / "w.safetensors", build_model(frcnn.model, 2), retina, ["cat", "dog"])
    with pytest.raises(WeightsError) as info:
        load_detector(path)
    message = str(info.value)
    n_retina = len(build_model(retina.model, 2).state_dict())
    n_frcnn = len(build_model(frcnn.model, 2).state_dict())
    assert message.startswith(f"{path}: weights do not fit the model (RetinaNet, {n_retina} tensors; ")
    assert f"the file has {n_frcnn}" in message
    missing = message.split("key(s) the model needs are missing from the file: ")[1]
    unexpected = message.split("key(s) in the file the model does not have: ")[1]
    assert missing.startswith("backbone.") and unexpected.startswith("detector.")  # sorted, first few
    assert "more)" in message  # long lists are cut to a few names plus a count
    assert "class(es)" not in message  # nothing suggests a class-count problem


def test_other_head_depth_reports_the_shapes_not_a_class_count(tmp_path):
    deep = tiny_config(tmp_path / "voc", tmp_path, "model.head.depth=2", "model.head.channels=24")
    shallow = tiny_config(tmp_path / "voc", tmp_path)
    with pytest.raises(WeightsError) as info:
        check_state_dict(build_model(shallow.model, 2), build_model(deep.model, 2).state_dict(), "deep.st")
    message = str(info.value)
    assert message.startswith("deep.st: ")
    assert "cls_head.predictor.weight: file [18, 24, 3, 3] vs model [18, 16, 3, 3]" in message
    assert "key(s) in the file the model does not have: " in message  # the extra tower layer
    assert "class(es)" not in message


def test_resuming_with_another_class_count_fails_before_training(tmp_path):
    cfg1 = tiny_config(tmp_path / "voc", tmp_path, "data.classes=[cat]")
    module = DetectorModule(cfg1)
    ckpt = tmp_path / "one_class.ckpt"
    torch.save({"state_dict": module.state_dict(), "global_step": 3}, ckpt)
    cfg2 = tiny_config(tmp_path / "voc", tmp_path)  # [cat, dog]; its data folder does not even exist
    with pytest.raises(WeightsError, match=r"trained for 1 class\(es\), model has 2") as info:
        fit(cfg2, resume=ckpt)
    assert str(info.value).startswith(str(ckpt))
    assert "model.cls_head.predictor.weight: file [9, 16, 3, 3] vs model [18, 16, 3, 3]" in str(info.value)


def test_negative_checkpoint_interval_is_a_config_error(tmp_path):
    from detector.config import ConfigError

    with pytest.raises(ConfigError, match="train.checkpoint_every_n_steps = -1"):
        fit(tiny_config(tmp_path / "voc", tmp_path, "train.checkpoint_every_n_steps=-1"))


# ------------------------------------------------------------------------------------- kill -9 and resume

STEPS = 24


def _run_overrides(data: Path, out: Path, name: str) -> list[str]:
    """Two training images at batch 1, shuffled and augmented; a checkpoint every 3 steps, so mid-epoch.

    Resume restores the model, optimizer, LR schedule, counters, history, the torch generators and the train
    loader's position; the order and augmentation of each epoch are fixed by the seed, so a resumed run sees
    exactly the batches an uninterrupted run sees.
    """
    return tiny_overrides(data, out, name) + [
        "data.batch_size=1",
        "data.hflip=true",
        "data.vflip=true",
        "data.color_jitter=true",
        "data.scale_jitter=0.2",
        f"train.epochs={STEPS // 2}",
        "train.max_steps=null",
        "train.val_every_n_epochs=1000",  # validate once, at the end (ValidateAtEnd)
        "train.checkpoint_every_n_steps=3",  # 2 batches per epoch: mid-epoch and epoch-end checkpoints
        "train.warmup_steps=3",
        "output.export=last",
    ]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(FOCALDET_NO_COMPILE="1", OMP_NUM_THREADS="1", PYTHONHASHSEED="0", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return env


def _train_cmd(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "tools" / "train.py"), *args]


def _check_complete(folder: Path) -> list[Path]:
    """Every file under `folder` is whole and loadable; returns the temp files a killed write left behind."""
    leftovers = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            leftovers.append(path)  # a write cut by the kill: never under a name that anything loads
        elif path.suffix == ".ckpt":
            ckpt = load_checkpoint_file(path)
            assert "state_dict" in ckpt and "optimizer_states" in ckpt, path
        elif path.suffix == ".safetensors":
            load_weights(path)
        elif path.suffix == ".yaml":
            assert isinstance(yaml.safe_load(path.read_text()), dict), path
        elif path.suffix == ".csv":  # Lightning's CSVLogger rewrites it in place: a kill can leave it short
            list(csv.reader(path.read_text().splitlines()))
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".png":
            from PIL import Image

            with Image.open(path) as image:
                image.load()
        else:
            raise AssertionError(f"unexpected file after the kill: {path}")
    return leftovers


@pytest.mark.slow
def test_kill_9_mid_training_then_resume_ends_with_the_uninterrupted_weights(tmp_path):
    from conftest import write_tiny_voc

    data = tmp_path / "voc"
    write_tiny_voc(data, n_images=2, image_size=(64, 80), split="train", seed=0)
    write_tiny_voc(data, n_images=1, image_size=(64, 80), split="val", seed=1)
    out = tmp_path / "out"
    env = _env()

    # The run that gets killed: SIGKILL as soon as its first periodic checkpoint is on disk.
    ckpt_dir = out / "runs" / "killed" / "checkpoints"
    log = tmp_path / "killed.log"  # a file, not a pipe: a full pipe would stall the child
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            _train_cmd(*_run_overrides(data, out, "killed")), cwd=tmp_path, env=env, stdout=sink, stderr=sink
        )
        try:
            deadline = time.monotonic() + 120
            while not (ckpt_dir / "last.ckpt").exists():
                assert proc.poll() is None, f"training ended before a checkpoint: {log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "no periodic checkpoint within 120 s"
                time.sleep(0.01)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"the run finished before the kill: {log.read_text()[-2000:]}"

    leftovers = _check_complete(out)
    assert not (out / "weights" / "killed.safetensors").exists()  # exported only at the end
    assert all(p.parent == ckpt_dir and ".ckpt." in p.name for p in leftovers), leftovers
    saved = load_checkpoint_file(ckpt_dir / "last.ckpt")
    killed_at, at_kill = saved["global_step"], saved["state_dict"]
    assert 1 <= killed_at < STEPS

    # Resume from the killed run's last checkpoint (its config comes from the checkpoint) to the end.
    resumed = subprocess.run(
        _train_cmd("--resume", str(ckpt_dir / "last.ckpt")),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _check_complete(out) == []  # the resumed run removed the killed write's temp file, if any
    assert load_checkpoint_file(ckpt_dir / "last.ckpt")["global_step"] == STEPS

    # The same config without the kill.
    straight = subprocess.run(
        _train_cmd(*_run_overrides(data, out, "straight")),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert straight.returncode == 0, straight.stderr[-3000:]

    after_kill, meta_k = load_weights(out / "weights" / "killed.safetensors")
    uninterrupted, meta_s = load_weights(out / "weights" / "straight.safetensors")
    assert meta_k["step"] == meta_s["step"] == str(STEPS)
    assert after_kill.keys() == uninterrupted.keys()
    differ = [k for k in uninterrupted if not torch.equal(after_kill[k], uninterrupted[k])]
    assert differ == [], f"resumed from step {killed_at}: {len(differ)} tensors differ, e.g. {differ[:3]}"
    moved = [k for k in uninterrupted if not torch.equal(uninterrupted[k], at_kill[f"model.{k}"])]
    assert moved, "the resumed run did not train past the checkpoint it started from"
