"""Exponential moving average of a model's weights (Polyak averaging), evaluated and exported instead of the
last step's weights: it smooths the noise of small batches and short schedules.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["WeightEMA"]


class WeightEMA(nn.Module):
    """A shadow copy of `model` whose floating-point parameters and buffers follow
    ``shadow = d * shadow + (1 - d) * weights`` after every optimizer step.

    The decay ramps up as ``d_n = min(decay, (1 + n) / (10 + n))`` (n = updates so far), so the first steps do
    not tie the average to the initial weights. The shadow and the update count are module state: they are
    saved in checkpoints, so a resumed run continues the same average.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.shadow = copy.deepcopy(model).requires_grad_(False)
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64))

    def current_decay(self) -> float:
        """The decay the next update uses."""
        n = int(self.updates)
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the shadow one step towards `model`'s current weights (integer buffers are copied)."""
        d = self.current_decay()
        ours = self.shadow.state_dict()
        for name, value in model.state_dict().items():
            target = ours[name]
            if target.is_floating_point():
                target.lerp_(value.detach(), 1.0 - d)
            else:
                target.copy_(value)
        self.updates += 1
