"""RetinaNet: shapes, loss and post-processing against torchvision's RetinaNet with the same weights."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import nms

from detector.config import ModelConfig
from detector.models import build_model, parity
from detector.models.retinanet import RetinaNet
from detector.models.retinanet_loss import OHEMSampler, hardest_after_nms
from detector.models.torchvision_retinanet import build_torchvision_retinanet


def small_cfg(**head) -> ModelConfig:
    cfg = ModelConfig()
    cfg.backbone.pretrained = False
    cfg.fpn.channels = 32
    cfg.head.channels = head.get("channels", 32)
    cfg.head.depth = head.get("depth", 2)
    cfg.head.norm = head.get("norm", "none")
    return cfg


def targets_with_empty() -> list[dict[str, torch.Tensor]]:
    return [
        {
            "boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [64.0, 30.0, 120.0, 100.0]]),
            "labels": torch.tensor([1, 3]),
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]


@pytest.mark.parametrize("norm", ["none", "group"])
def test_shapes_loss_and_eval(norm: str) -> None:
    torch.manual_seed(0)
    model = build_model(small_cfg(norm=norm), num_classes=3)
    assert isinstance(model, RetinaNet)
    images = torch.randint(0, 256, (2, 3, 128, 128), dtype=torch.uint8)
    cls, box, anchors, per_level = model.head_outputs(images)
    num_anchors = 9 * (16 * 16 + 8 * 8 + 4 * 4 + 2 * 2 + 1)
    assert (
        cls.shape == (2, num_anchors, 3)
        and box.shape == (2, num_anchors, 4)
        and anchors.shape == (num_anchors, 4)
    )
    assert per_level == [9 * 256, 9 * 64, 9 * 16, 9 * 4, 9]
    torch.testing.assert_close(torch.sigmoid(cls).mean(), torch.tensor(0.01), rtol=0.2, atol=0)  # prior init
    model.train()
    losses = model(images, targets_with_empty())
    assert set(losses) == {"classification", "bbox_regression"}
    total = sum(losses.values())
    assert total.dim() == 0 and torch.isfinite(total)
    total.backward()
    assert model.cls_head.predictor.weight.grad is not None
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for det in out:
        assert det["boxes"].dtype == torch.float32 and det["boxes"].shape[1] == 4
        assert det["labels"].dtype == torch.int64 and det["scores"].shape == det["labels"].shape


def test_each_images_detections_are_the_same_alone_as_in_a_batch() -> None:
    """NMS runs image by image: what else is in the batch changes no image's detections."""
    torch.manual_seed(0)
    model = build_model(small_cfg(), num_classes=3).eval()
    parity.make_heads_fire(model)  # varied scores: hundreds of candidates per image
    images = torch.randint(0, 256, (3, 3, 128, 128), dtype=torch.uint8)
    images[1] = 0
    with torch.no_grad():  # the same head outputs for both, so only post-processing can differ
        cls, box, anchors, per_level = model.head_outputs(images)
        batched = model.postprocess(cls, box, anchors, per_level, (128, 128))
        alone = [
            model.postprocess(cls[i : i + 1], box[i : i + 1], anchors, per_level, (128, 128))[0]
            for i in range(3)
        ]
    assert [len(d["scores"]) for d in batched] == [model.detections_per_img] * 3  # NMS and top-N had work
    for got, want in zip(batched, alone, strict=True):
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)


def test_all_images_without_boxes() -> None:
    model = build_model(small_cfg(), num_classes=2).train()
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = model(images, [empty, empty])
    assert float(losses["bbox_regression"].detach()) == 0.0 and float(losses["classification"].detach()) > 0


def test_bad_targets_raise() -> None:
    model = build_model(small_cfg(), num_classes=2).train()
    images = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"label 3 must be in 1\.\.2"):
        model(images, [{"boxes": torch.tensor([[1.0, 1.0, 20.0, 20.0]]), "labels": torch.tensor([3])}])
    with pytest.raises(ValueError, match="x2 > x1"):
        model(images, [{"boxes": torch.tensor([[30.0, 1.0, 20.0, 20.0]]), "labels": torch.tensor([1])}])
    with pytest.raises(ValueError, match="needs targets"):
        model(images)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model.eval()(images[0])


@pytest.mark.parametrize("box_loss", ["smooth_l1", "giou"])
def test_box_losses(box_loss: str) -> None:
    cfg = small_cfg()
    cfg.loss.box = box_loss
    model = build_model(cfg, num_classes=3).train()
    losses = model(torch.randint(0, 256, (2, 3, 128, 128), dtype=torch.uint8), targets_with_empty())
    value = losses["bbox_regression"].detach()
    assert torch.isfinite(value) and float(value) > 0


def test_ohem_keeps_positives_and_hardest_negatives() -> None:
    cfg = small_cfg()
    cfg.loss.cls = "ohem"
    cfg.loss.ohem_neg_pos_ratio = 1.0
    model = build_model(cfg, num_classes=3)
    assert model.loss.ohem == OHEMSampler(neg_pos_ratio=1.0) and model.loss.gamma == 0.0  # CE on the picks
    labels = torch.tensor([[0, -1, -1, -1, -1, -1, -2, 2], [-1, -1, -1, -1, -1, -1, -1, -1]])
    logits = torch.zeros(16, 3)
    logits[:, 0] = torch.arange(16.0)  # higher logit = harder negative
    kept = model.loss.ohem(logits, labels, torch.zeros(8, 4))  # anchors: only an NMS would look
    assert kept[0].tolist() == [0, -2, -2, -2, -1, -1, -2, 2]  # 2 positives: the 2 hardest negatives
    assert kept[1].tolist() == [-2, -2, -2, -2, -2, -2, -2, -1]  # no positive: as many as for one
    model.train()
    losses = model(torch.randint(0, 256, (2, 3, 128, 128), dtype=torch.uint8), targets_with_empty())
    assert torch.isfinite(sum(losses.values()))


def test_ohem_budget() -> None:
    cfg = small_cfg()
    cfg.loss.cls = "ohem"
    cfg.loss.ohem_budget = 2
    model = build_model(cfg, num_classes=3)
    labels = torch.tensor([[0, -1, -1, -2]])
    logits = torch.tensor([[-5.0, 0, 0], [9.0, 0, 0], [1.0, 0, 0], [20.0, 0, 0]])
    assert model.loss.ohem(logits, labels, torch.zeros(4, 4)).tolist() == [[0, -1, -2, -2]]


def test_ohem_nms_picks_one_anchor_per_hard_spot() -> None:
    """The two hardest anchors overlap (IoU 0.91): without NMS a budget of 2 takes both, with NMS 0.5 the
    second pick is the next hardest spot; the ratio rule still keeps every positive."""
    anchors = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 11], [20, 20, 30, 30], [40, 40, 50, 50.0]])
    logits = torch.tensor([[9.0], [8.0], [1.0], [0.0]])  # CE of a negative grows with its logit
    labels = torch.full((1, 4), -1)
    assert OHEMSampler(budget=2)(logits, labels, anchors).tolist() == [[-1, -1, -2, -2]]
    assert OHEMSampler(budget=2, nms=0.5)(logits, labels, anchors).tolist() == [[-1, -2, -1, -2]]
    labels = torch.tensor([[-1, -1, -1, 0]])
    assert OHEMSampler(neg_pos_ratio=2.0, nms=0.5)(logits, labels, anchors).tolist() == [[-1, -2, -1, 0]]
    with pytest.raises(ValueError, match="OHEM NMS IoU"):
        OHEMSampler(nms=1.5)


def test_hardest_after_nms_picks_what_an_nms_over_all_candidates_picks_first() -> None:
    gen = torch.Generator().manual_seed(0)
    centers = torch.rand(40, 2, generator=gen) * 300  # clusters of boxes: NMS removes most of each
    xy = centers.repeat_interleave(25, 0) + torch.randn(1000, 2, generator=gen) * 4
    wh = 20 + torch.rand(1000, 2, generator=gen) * 20
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], dim=1)
    score = torch.rand(1000, generator=gen)
    score[torch.rand(1000, generator=gen) < 0.3] = -1.0  # not candidates
    candidates = torch.nonzero(score >= 0).squeeze(1)
    full = candidates[nms(boxes[candidates], score[candidates], 0.5)]
    assert 40 <= len(full) < 200
    for count in (0, 1, 7, 60, len(full), 500):
        picked = hardest_after_nms(score, boxes, count, 0.5)
        assert picked.tolist() == full[:count].tolist(), count


@pytest.mark.parametrize("cls_loss", ["focal", "ohem"])
def test_image_normalization_averages_each_images_loss_over_its_own_foreground(cls_loss: str) -> None:
    """`loss_normalize="image"` on a batch equals the mean of one-image losses; "batch" differs when the
    images hold different numbers of foreground anchors (here 1, 3 and 5 boxes, and one empty image)."""
    torch.manual_seed(0)
    cfg = small_cfg()
    cfg.loss.cls = cls_loss
    model = build_model(cfg, num_classes=3).train()
    images, targets = parity.random_batch(3, 128, 3, torch.Generator().manual_seed(1))
    images = torch.cat([images, images[:1]])
    targets = [*targets, {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    with torch.no_grad():
        alone = [model(images[i : i + 1], targets[i : i + 1]) for i in range(len(targets))]
        batch = model(images, targets)
        model.loss.normalize = "image"
        image = model(images, targets)
    for key in ("classification", "bbox_regression"):
        mean = sum(a[key] for a in alone) / len(alone)
        torch.testing.assert_close(image[key], mean, rtol=1e-5, atol=1e-6)
        assert not torch.isclose(batch[key], mean, rtol=1e-3)


def test_loss_normalization_must_be_batch_or_image() -> None:
    cfg = small_cfg()
    cfg.loss.normalize = "anchor"
    with pytest.raises(
        ValueError, match=r"loss normalization must be one of \('batch', 'image'\), got 'anchor'"
    ):
        build_model(cfg, num_classes=3)


@pytest.mark.slow
def test_loss_and_detections_equal_torchvision() -> None:
    torch.manual_seed(0)
    ours = parity.build_ours(num_classes=4, pretrained=False, channels=32)
    parity.make_heads_fire(ours)  # varied scores, so post-processing has real work
    tv = build_torchvision_retinanet(num_classes=4, size=160, channels=32)
    parity.copy_weights(ours, tv)
    images, targets = parity.random_batch(3, 160, 4, torch.Generator().manual_seed(0))
    quality = parity.check_equal(ours, tv, images, targets)
    assert quality["loss_max_abs_diff"] < 1e-4
    assert quality["detections_ours"] == quality["detections_torchvision"] == 300
    assert quality["matched_min_iou"] > 0.999 and quality["matched_score_max_abs_diff"] < 1e-5
    assert (
        quality["matched_fraction_iou99"] == 1.0
        and quality["losses_ours"].keys() == quality["losses_torchvision"].keys()
    )


def test_build_model_rejects_unknown_name() -> None:
    cfg = small_cfg()
    cfg.name = "yolo"
    with pytest.raises(ValueError, match="unknown model name 'yolo'"):
        build_model(cfg, num_classes=2)
