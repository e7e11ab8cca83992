"""Input normalization shared by every detector: uint8 RGB in, ImageNet-normalized float out."""

from __future__ import annotations

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageNormalizer(nn.Module):
    """(x - mean) / std for 0-255 images [B, 3, H, W] on the model's device; buffers not in state dicts."""

    def __init__(self) -> None:
        super().__init__()
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("inv_std", 1 / std, persistent=False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        return (images.to(self.mean.device, non_blocking=True).float() - self.mean) * self.inv_std
