"""Anchors, box coder, matcher, backbones and FPN: shapes, dtypes and equality with torchvision."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import FeaturePyramidNetwork, box_iou
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from detector.models.anchors import AnchorGrid
from detector.models.backbones import ConvFrozenBN, build_backbone
from detector.models.box_coder import BoxCoder
from detector.models.fpn import FPN
from detector.models.matcher import BACKGROUND, IGNORE, BatchMatcher, batched_box_iou

SIZES = [32.0, 64.0, 128.0, 256.0, 512.0]
SCALES = [1.0, 2 ** (1 / 3), 2 ** (2 / 3)]
RATIOS = [0.5, 1.0, 2.0]


def random_boxes(n: int, size: float, gen: torch.Generator, min_wh: float = 4.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=gen) * size * 0.8
    wh = min_wh + torch.rand(n, 2, generator=gen) * size * 0.4
    return torch.cat([xy, xy + wh], dim=1)


def pyramid_shapes(size: int) -> list[tuple[int, int]]:
    shapes, s = [], size
    for level in range(3, 8):
        s = -(-size // 8) if level == 3 else -(-s // 2)
        shapes.append((s, s))
    return shapes


@pytest.mark.parametrize("size", [128, 400, 416])
def test_anchors_equal_torchvision(size: int) -> None:
    grid = AnchorGrid(SIZES, SCALES, RATIOS)
    feats = [torch.zeros(1, 8, h, w) for h, w in pyramid_shapes(size)]
    ours = grid.grid((size, size), pyramid_shapes(size), torch.device("cpu"))[0]
    tv = AnchorGenerator(tuple(tuple(s * k for k in SCALES) for s in SIZES), (tuple(RATIOS),) * 5)
    ref = tv(ImageList(torch.zeros(2, 3, size, size), [(size, size)] * 2), feats)
    assert ours.dtype == torch.float32 and ours.shape == (sum(h * w for h, w in pyramid_shapes(size)) * 9, 4)
    assert torch.equal(ours, ref[0]) and torch.equal(ours, ref[1])
    assert grid.grid((size, size), pyramid_shapes(size), torch.device("cpu"))[0] is ours  # cached per size


def test_anchor_config_errors() -> None:
    with pytest.raises(ValueError, match="positive"):
        AnchorGrid([32.0], [1.0], [0.0])
    with pytest.raises(ValueError, match="5 anchor levels"):
        AnchorGrid(SIZES, SCALES, RATIOS).grid((64, 64), [(8, 8)], torch.device("cpu"))


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_box_coder_equals_torchvision(weights: tuple[float, ...]) -> None:
    gen = torch.Generator().manual_seed(1)
    anchors, boxes = random_boxes(500, 400, gen), random_boxes(500, 400, gen)
    ours, tv = BoxCoder(weights), det_utils.BoxCoder(weights)
    deltas = ours.encode(boxes, anchors)
    assert torch.equal(deltas, tv.encode_single(boxes, anchors))
    noisy = deltas + torch.randn(deltas.shape, generator=gen) * 3  # exercises the dw/dh clamp
    assert torch.equal(ours.decode(noisy, anchors), tv.decode_single(noisy, anchors))
    torch.testing.assert_close(ours.decode(deltas, anchors), boxes, rtol=0, atol=1e-3)
    batched = ours.decode(noisy.view(5, 100, 4), anchors.view(5, 100, 4))  # leading batch dims
    assert torch.equal(batched.view(-1, 4), ours.decode(noisy, anchors))


def test_batched_iou_equals_torchvision() -> None:
    gen = torch.Generator().manual_seed(2)
    gt, anchors = random_boxes(21, 200, gen).view(3, 7, 4), random_boxes(300, 200, gen)
    iou = batched_box_iou(gt, anchors)
    assert iou.shape == (3, 7, 300)
    per_image = random_boxes(900, 200, gen).view(3, 300, 4)  # ATSS's form: anchors per image
    iou_per_image = batched_box_iou(gt, per_image)
    for b in range(3):
        assert torch.equal(iou[b], box_iou(gt[b], anchors))
        assert torch.equal(iou_per_image[b], box_iou(gt[b], per_image[b]))


def test_matcher_equals_torchvision_per_image() -> None:
    gen = torch.Generator().manual_seed(3)
    anchors = AnchorGrid(SIZES, SCALES, RATIOS).grid((128, 128), pyramid_shapes(128), torch.device("cpu"))[0]
    counts = [5, 0, 1, 12]  # one image without boxes
    gt = torch.zeros(4, max(counts), 4)
    valid = torch.zeros(4, max(counts), dtype=torch.bool)
    for i, n in enumerate(counts):
        gt[i, :n] = random_boxes(n, 128, gen, min_wh=10.0)
        valid[i, :n] = True
    matcher = BatchMatcher(0.5, 0.4)
    matches = matcher(gt, valid, anchors)  # on the CPU: image by image
    assert matches.shape == (4, anchors.shape[0]) and matches.dtype == torch.int64
    assert torch.equal(matcher._match(gt, valid, anchors), matches)  # the one-pass batch (the GPU's path)
    tv = det_utils.Matcher(0.5, 0.4, allow_low_quality_matches=True)
    for i, n in enumerate(counts):
        if n == 0:
            assert bool((matches[i] == BACKGROUND).all())
        else:
            assert torch.equal(matches[i], tv(box_iou(gt[i, :n], anchors)))
    assert bool((matches == IGNORE).any()) and bool((matches >= 0).any())


def test_matcher_empty_batch_and_bad_thresholds() -> None:
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    out = BatchMatcher()(torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.bool), anchors)
    assert torch.equal(out, torch.full((2, 1), BACKGROUND))
    with pytest.raises(ValueError, match="thresholds"):
        BatchMatcher(0.3, 0.4)


@pytest.mark.parametrize(
    ("name", "c5_layer", "channels"),
    [
        ("mobilenet_v2", 18, [32, 96, 1280]),
        ("mobilenet_v2", 17, [32, 96, 320]),
        ("resnet18", 18, [128, 256, 512]),
    ],
)
def test_backbone_shapes(name: str, c5_layer: int, channels: list[int]) -> None:
    backbone = build_backbone(name, pretrained=False, trainable_layers=2, mobilenet_c5_layer=c5_layer)
    feats = backbone(torch.randn(2, 3, 96, 128))
    expected = [(2, c, 96 // s, 128 // s) for c, s in zip(channels, (8, 16, 32), strict=True)]
    assert [f.shape for f in feats] == expected
    assert backbone.out_channels == channels
    trainable = [any(p.requires_grad for p in stage.parameters()) for stage in backbone.stages]
    assert trainable == [False, False, False, True, True]


def test_backbone_errors_and_resnet_fallback_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    from detector import weights

    def missing(name: str, progress: bool = False) -> dict:
        raise weights.WeightsNotFoundError(f"no weights for {name}")

    monkeypatch.setattr(weights, "resolve_backbone_weights", missing)
    with pytest.warns(UserWarning, match="random init"):
        build_backbone("resnet18", pretrained=True)
    with pytest.raises(weights.WeightsNotFoundError):
        build_backbone("mobilenet_v2", pretrained=True)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg16", pretrained=False)
    with pytest.raises(ValueError, match="trainable_layers"):
        build_backbone("resnet18", pretrained=False, trainable_layers=6)
    with pytest.raises(ValueError, match="mobilenet_c5_layer"):
        build_backbone("mobilenet_v2", pretrained=False, mobilenet_c5_layer=16)


def test_folded_batchnorm_equals_frozen_batchnorm() -> None:
    torch.manual_seed(0)
    folded = build_backbone("resnet18", pretrained=False, fold_bn=True)
    plain = build_backbone("resnet18", pretrained=False, fold_bn=False)
    state = plain.state_dict()
    for k, v in state.items():  # non-trivial BatchNorm statistics
        if k.endswith(("running_mean", "bias")) and "bn" in k or k.endswith("downsample.1.bias"):
            v.uniform_(-0.5, 0.5)
        elif k.endswith("running_var"):
            v.uniform_(0.5, 2.0)
    assert set(folded.state_dict()) == set(state)  # torchvision's keys, loadable both ways
    folded.load_state_dict(state)
    assert sum(isinstance(m, ConvFrozenBN) for m in folded.modules()) == 20
    x = torch.randn(1, 3, 64, 64)
    for a, b in zip(folded(x), plain(x), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_pretrained_mobilenet_weights_loaded() -> None:
    from detector.weights import resolve_backbone_weights

    reference = resolve_backbone_weights("mobilenet_v2")
    backbone = build_backbone("mobilenet_v2", pretrained=True)
    state = backbone.state_dict()
    for key in ("features.0.0.weight", "features.18.1.running_var", "features.14.conv.0.0.weight"):
        index = int(key.split(".")[1])
        stage = next(i for i, lo in enumerate((0, 2, 4, 7, 14, 19)) if index < (0, 2, 4, 7, 14, 19)[i + 1])
        assert torch.equal(state[f"stages.{stage}.{key.split('.', 1)[1]}"], reference[key]), (key, stage)


@pytest.mark.parametrize("p6_from", ["p5", "c5"])
def test_fpn_equals_torchvision(p6_from: str) -> None:
    torch.manual_seed(0)
    in_channels = [16, 24, 40]
    ours = FPN(in_channels, 32, p6_from)
    extra = LastLevelP6P7(32 if p6_from == "p5" else 40, 32)
    tv = FeaturePyramidNetwork(in_channels, 32, extra_blocks=extra)
    tv.load_state_dict(dict(zip(tv.state_dict(), ours.state_dict().values(), strict=True)))
    feats = [torch.randn(2, c, 50 // s, 50 // s) for c, s in zip(in_channels, (1, 2, 4), strict=True)]
    out = ours(feats)
    ref = list(tv({str(i): f for i, f in enumerate(feats)}).values())
    assert [o.shape[-1] for o in out] == [50, 25, 12, 6, 3]
    for a, b in zip(out, ref, strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="p6_from"):
        FPN(in_channels, 32, "p4")
