"""Faster R-CNN baseline through the shared interface: one training step and one eval forward."""

from __future__ import annotations

import pytest
import torch

from detector.config import ModelConfig
from detector.models import FasterRCNNDetector, build_model


def test_faster_rcnn_train_step_and_eval() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(name="faster_rcnn")
    cfg.backbone.pretrained = False
    cfg.fpn.channels = 64
    cfg.anchors.sizes = [16.0, 32.0, 64.0, 128.0, 256.0]
    cfg.score_thresh = 0.0  # an untrained model's detections all count: the checks below always run
    model = build_model(cfg, num_classes=3)
    assert isinstance(model, FasterRCNNDetector)
    assert model.detector.rpn.anchor_generator.sizes == ((16.0,), (32.0,), (64.0,), (128.0,), (256.0,))
    assert model.detector.roi_heads.box_predictor.cls_score.out_features == 4  # C + background
    images = torch.randint(0, 256, (2, 3, 128, 128), dtype=torch.uint8)
    targets = [
        {"boxes": torch.tensor([[10.0, 10.0, 60.0, 70.0]]), "labels": torch.tensor([3])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for det in out:
        assert det["boxes"].shape[1] == 4 and det["boxes"].dtype == torch.float32
        assert det["scores"].shape == det["labels"].shape
        assert len(det["labels"]) == cfg.detections_per_img  # score 0 keeps every class of every box
        assert set(det["labels"].tolist()) <= {1, 2, 3} and det["labels"].dtype == torch.int64
        assert float(det["boxes"].min()) >= 0 and float(det["boxes"].max()) <= 128
        assert bool((det["scores"][:-1] >= det["scores"][1:]).all())  # sorted by score
    with pytest.raises(ValueError, match="needs targets"):
        model.train()(images)
