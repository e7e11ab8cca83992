"""Overfit one generated image: the loss falls and every box is recovered (IoU >= 0.5, score >= 0.5)."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou

from detector.config import ModelConfig
from detector.models import build_model

SIZE = 128
BOXES = [(8, 10, 56, 50, 1), (70, 20, 118, 100, 2), (20, 72, 60, 118, 1)]  # x1, y1, x2, y2, label
COLORS = {1: (230, 40, 40), 2: (40, 60, 220)}


def generated_image() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Solid rectangles on a grey, lightly noisy background."""
    gen = torch.Generator().manual_seed(0)
    image = (torch.full((3, SIZE, SIZE), 128.0) + torch.randn(3, SIZE, SIZE, generator=gen) * 8).clamp(0, 255)
    for x1, y1, x2, y2, label in BOXES:
        image[:, y1:y2, x1:x2] = torch.tensor(COLORS[label], dtype=torch.float32)[:, None, None]
    target = {
        "boxes": torch.tensor([b[:4] for b in BOXES], dtype=torch.float32),
        "labels": torch.tensor([b[4] for b in BOXES]),
    }
    return image.to(torch.uint8)[None], target


@pytest.mark.slow
def test_overfit_one_image() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig()
    cfg.backbone.pretrained = True  # offline MobileNetV2 ImageNet weights
    cfg.fpn.channels = 64
    cfg.head.channels = 64
    cfg.head.depth = 2
    cfg.head.norm = "group"  # GroupNorm heads converge in a few dozen steps
    model = build_model(cfg, num_classes=2).train()
    images, target = generated_image()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.0)
    first = last = None
    for step in range(STEPS):
        losses = model(images, [target])
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        first = float(loss.detach()) if step == 0 else first
        last = float(loss.detach())
    assert last < 0.2 * first, (first, last)
    model.eval()
    with torch.no_grad():
        det = model(images)[0]
    confident = det["scores"] >= 0.5
    iou = box_iou(target["boxes"], det["boxes"][confident])
    same_class = target["labels"][:, None] == det["labels"][confident][None, :]
    best = (iou * same_class).max(dim=1).values if confident.any() else torch.zeros(len(BOXES))
    assert bool((best >= 0.5).all()), (best, det)


STEPS = 40
