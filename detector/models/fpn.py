"""Feature pyramid P3-P7 over C3-C5 (torchvision's FeaturePyramidNetwork + LastLevelP6P7 arithmetic)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

P6_SOURCES = ("c5", "p5")  # P6 from C5 (torchvision v1) or from P5 (v2)


class FPN(nn.Module):
    """Lateral 1x1 + output 3x3 convs on C3-C5, nearest top-down; P6 from C5 or P5, P7 from relu(P6)."""

    def __init__(self, in_channels: Sequence[int], channels: int = 256, p6_from: str = "p5") -> None:
        super().__init__()
        if p6_from not in P6_SOURCES:
            raise ValueError(f"fpn p6_from must be one of {P6_SOURCES}, got {p6_from!r}")
        self.p6_from = p6_from
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels)
        self.p6 = nn.Conv2d(
            in_channels[-1] if p6_from == "c5" else channels, channels, 3, stride=2, padding=1
        )
        self.p7 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.out_channels = channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.constant_(m.bias, 0)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        last = self.lateral[-1](feats[-1])
        outs = [self.output[-1](last)]
        for i in range(len(feats) - 2, -1, -1):
            lateral = self.lateral[i](feats[i])
            last = lateral + F.interpolate(last, size=lateral.shape[-2:], mode="nearest")
            outs.insert(0, self.output[i](last))
        p6 = self.p6(feats[-1] if self.p6_from == "c5" else outs[-1])
        p7 = self.p7(F.relu(p6))
        return [*outs, p6, p7]
