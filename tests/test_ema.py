"""The moving average of the weights: its update rule, and a real run that validates and exports it."""

from __future__ import annotations

import pytest
import torch
from lit_helpers import disable_loss_compile, make_data, tiny_config
from torch import nn

from detector.models.ema import WeightEMA


def test_update_follows_the_ramped_decay_and_copies_integer_buffers():
    model = nn.BatchNorm1d(3)  # float parameters and buffers, and an int64 buffer (num_batches_tracked)
    ema = WeightEMA(model, decay=0.5)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.fill_(2.0)
        model.num_batches_tracked.fill_(7)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    ema.update(model)
    assert torch.allclose(ema.shadow.weight, 0.1 * start + 0.9 * 2.0)
    assert int(ema.shadow.num_batches_tracked) == 7 and int(ema.updates) == 1
    for _ in range(100):
        ema.update(model)
    assert ema.current_decay() == 0.5  # the ramp is capped by the decay
    assert torch.allclose(ema.shadow.weight, torch.full((3,), 2.0))
    assert not ema.shadow.weight.requires_grad


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.1])
def test_a_decay_outside_the_open_interval_is_refused(decay):
    with pytest.raises(ValueError, match="EMA decay"):
        WeightEMA(nn.Linear(2, 2), decay)


def test_train_ema_decay_is_validated(tmp_path):
    from detector.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="train.ema_decay"):
        load_config(None, ["train.ema_decay=1.5"])


@pytest.mark.slow
def test_a_run_with_ema_exports_the_average_not_the_last_weights(tiny_voc, tmp_path, monkeypatch):
    from conftest import write_tiny_voc

    from detector.lit import DetectorModule, fit
    from detector.weights import load_weights

    disable_loss_compile(monkeypatch)
    data = make_data(write_tiny_voc, tmp_path / "voc")
    seen = {}
    original = DetectorModule.validation_step

    def spy(self, batch, batch_idx):
        seen["evaluated"] = self.evaluated_model
        seen["module"] = self
        return original(self, batch, batch_idx)

    monkeypatch.setattr(DetectorModule, "validation_step", spy)
    cfg = tiny_config(
        data, tmp_path, "train.epochs=2", "train.max_steps=4", "train.ema_decay=0.8", "output.export=last"
    )
    result = fit(cfg)
    module = seen["module"]
    assert seen["evaluated"] is module.ema.shadow  # validation ran on the average
    assert int(module.ema.updates) == result.steps == 4
    exported, _ = load_weights(result.weights)
    shadow = module.ema.shadow.state_dict()
    last = module.model.state_dict()
    assert all(torch.equal(exported[k], shadow[k].cpu()) for k in exported)
    moved = [
        k for k in exported if last[k].is_floating_point() and not torch.equal(exported[k], last[k].cpu())
    ]
    assert moved, "the exported weights are the last step's, not the average"
