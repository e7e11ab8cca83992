"""ImageNet backbones returning C3, C4, C5 (strides 8, 16, 32) with frozen BatchNorm.

Frozen BatchNorm is folded into the preceding convolution at run time (the conv uses `w * scale` and a bias),
which saves a full read and write of every activation; parameters and state-dict keys stay torchvision's.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

BACKBONES = ("mobilenet_v2", "resnet18", "resnet34", "resnet50")


class FoldedFrozenBN(nn.Module):
    """Holds a frozen BatchNorm's buffers (same state-dict keys) applied by its conv; an identity."""

    def __init__(self, bn: FrozenBatchNorm2d) -> None:
        super().__init__()
        for name in ("weight", "bias", "running_mean", "running_var"):
            self.register_buffer(name, getattr(bn, name))
        self.eps = bn.eps

    def scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001 - torch signature
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class ConvFrozenBN(nn.Conv2d):
    """A Conv2d followed by a frozen BatchNorm, computed as one convolution with scaled weights and a bias."""

    def attach(self, bn: FoldedFrozenBN) -> None:
        object.__setattr__(
            self, "_bn", bn
        )  # a plain reference: the buffers stay registered under the BN's name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self._bn.scale_shift()
        weight = self.weight * scale.view(-1, 1, 1, 1)
        bias = shift if self.bias is None else shift + self.bias * scale
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


def fold_frozen_batchnorm(module: nn.Module) -> int:
    """Fold every (Conv2d, FrozenBatchNorm2d) pair of consecutive children in place; returns the count."""
    count = 0
    for parent in list(module.modules()):
        names = list(parent._modules)
        for first, second in zip(names, names[1:], strict=False):
            conv, bn = parent._modules[first], parent._modules[second]
            if type(conv) is nn.Conv2d and isinstance(bn, FrozenBatchNorm2d):
                folded_bn = FoldedFrozenBN(bn)
                conv.__class__ = ConvFrozenBN
                conv.attach(folded_bn)
                parent._modules[second] = folded_bn
                count += 1
    return count


def _imagenet_weights(name: str, pretrained: bool) -> dict[str, torch.Tensor] | None:
    if not pretrained:
        return None
    from detector.weights import WeightsNotFoundError, resolve_backbone_weights

    try:
        return resolve_backbone_weights(name)
    except WeightsNotFoundError as err:
        if name == "mobilenet_v2":
            raise
        warnings.warn(f"{name}: ImageNet weights unavailable, using random init ({err})", stacklevel=3)
        return None


class Backbone(nn.Module):
    """Runs `stages` in order and returns the outputs of the last three (C3, C4, C5)."""

    def __init__(self, stages: list[nn.Module], out_channels: list[int], trainable_layers: int) -> None:
        super().__init__()
        if not 0 <= trainable_layers <= len(stages):
            raise ValueError(
                f"backbone trainable_layers must be in [0, {len(stages)}], got {trainable_layers}"
            )
        self.stages = nn.ModuleList(stages)
        self.out_channels = list(out_channels)
        for i, stage in enumerate(self.stages):
            stage.requires_grad_(i >= len(stages) - trainable_layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs[-3:]


def _mobilenet_v2(pretrained: bool, trainable_layers: int, c5_layer: int) -> Backbone:
    if c5_layer not in (17, 18):
        raise ValueError(f"mobilenet_c5_layer must be 17 (320 ch) or 18 (1280 ch), got {c5_layer}")
    net = torchvision.models.mobilenet_v2(weights=None, norm_layer=FrozenBatchNorm2d)
    state = _imagenet_weights("mobilenet_v2", pretrained)
    if state is not None:
        net.load_state_dict(state)
    f = net.features
    stages = [f[0:2], f[2:4], f[4:7], f[7:14], f[14 : c5_layer + 1]]
    return Backbone(stages, [32, 96, 320 if c5_layer == 17 else 1280], trainable_layers)


def _resnet(name: str, pretrained: bool, trainable_layers: int) -> Backbone:
    net = getattr(torchvision.models, name)(weights=None, norm_layer=FrozenBatchNorm2d)
    state = _imagenet_weights(name, pretrained)
    if state is not None:
        net.load_state_dict(state)
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    expansion = 4 if name == "resnet50" else 1
    chans = [128 * expansion, 256 * expansion, 512 * expansion]
    return Backbone([stem, net.layer1, net.layer2, net.layer3, net.layer4], chans, trainable_layers)


def build_backbone(
    name: str,
    pretrained: bool = True,
    trainable_layers: int = 3,
    mobilenet_c5_layer: int = 18,
    fold_bn: bool = True,
) -> Backbone:
    """Backbone by name; ImageNet weights through `detector.weights` (ResNets: random init + warning)."""
    if name == "mobilenet_v2":
        backbone = _mobilenet_v2(pretrained, trainable_layers, mobilenet_c5_layer)
    elif name in ("resnet18", "resnet34", "resnet50"):
        backbone = _resnet(name, pretrained, trainable_layers)
    else:
        raise ValueError(f"unknown backbone {name!r}; expected one of {BACKBONES}")
    if fold_bn:
        fold_frozen_batchnorm(backbone)
    return backbone
