"""Fitted anchors: the fast best-IoU equals the IoU over the whole anchor grid, a known winner on generated
boxes, and tools/fit_anchors.py on a generated VOC folder (its override line loads as a config)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from detector.config import load_config
from detector.models.anchors import AnchorGrid
from detector.models.matcher import batched_box_iou
from detector.study.anchor_fit import (
    AnchorCandidate,
    best_anchor_ious,
    candidate_grid,
    fit_anchors,
    pyramid_grid_sizes,
)

REPO = Path(__file__).resolve().parents[1]


def boxes_of(rng: np.random.Generator, count: int, size: int, wh: tuple[float, float] | None = None):
    xy = rng.uniform(-8, size * 0.9, (count, 2))
    side = np.broadcast_to(np.asarray(wh), (count, 2)) if wh else rng.uniform(4, size * 0.6, (count, 2))
    return torch.from_numpy(np.concatenate([xy, xy + side], axis=1).astype(np.float32))


@pytest.mark.parametrize("size", [128, 224])
def test_best_iou_equals_the_iou_over_every_anchor(size: int) -> None:
    boxes = boxes_of(np.random.default_rng(size), 200, size)
    for candidate in candidate_grid()[::5]:
        grid = AnchorGrid(list(candidate.sizes), list(candidate.scales), list(candidate.ratios))
        anchors, _ = grid.grid((size, size), pyramid_grid_sizes(size), torch.device("cpu"))
        brute = batched_box_iou(boxes[None], anchors)[0].amax(dim=1)
        assert torch.equal(best_anchor_ious(boxes, candidate, size), brute), candidate


def test_pyramid_grid_is_the_models() -> None:
    from detector.config import ModelConfig
    from detector.models import build_model

    assert pyramid_grid_sizes(416) == [(52, 52), (26, 26), (13, 13), (7, 7), (4, 4)]
    cfg = ModelConfig()
    cfg.backbone.pretrained = False
    cfg.fpn.channels, cfg.head.channels, cfg.head.depth = 16, 16, 0
    model = build_model(cfg, num_classes=1).eval()
    with torch.no_grad():
        per_level = model.head_outputs(torch.zeros(1, 3, 224, 224, dtype=torch.uint8))[3]
    assert per_level == [9 * h * w for h, w in pyramid_grid_sizes(224)]
    with pytest.raises(ValueError, match="multiple of 32"):
        pyramid_grid_sizes(100)


def test_square_40px_boxes_pick_one_32px_square_anchor_on_p3() -> None:
    boxes = boxes_of(np.random.default_rng(0), 300, 256, wh=(40.0, 40.0))
    ranked = fit_anchors(boxes, 256, candidate_grid())
    best = ranked[0]
    # a 32 px anchor on the stride-8 P3 grid is at most 4 px off any 40 px box, so it lies inside it: IoU
    # 32^2 / 40^2 = 0.64 for every box
    assert best["sizes"] == [32.0, 64.0, 128.0, 256.0, 512.0]
    assert best["scales"] == [1.0] and best["ratios"] == [1.0] and best["anchors_per_location"] == 1
    assert best["covered"] == 1.0 and best["covered_boxes"] == 300 and best["boxes"] == 300
    assert best["mean_best_iou"] == pytest.approx(0.64, abs=1e-6)
    # the order: coverage, then fewer anchors per location, then mean best IoU (48 px on the stride-16 P4
    # also covers these boxes, one anchor per location, but fits them worse)
    runner_up = ranked[1]
    assert runner_up["sizes"][0] == 24.0 and runner_up["anchors_per_location"] == 1
    assert runner_up["covered"] == 1.0 and runner_up["mean_best_iou"] < best["mean_best_iou"]
    assert all(r["covered"] < 1.0 or r["anchors_per_location"] > 1 for r in ranked[2:])
    one_16 = AnchorCandidate((16.0, 32.0, 64.0, 128.0, 256.0), (1.0,), (1.0,))
    (worse,) = fit_anchors(boxes, 256, [one_16])
    assert worse["covered"] < 1.0
    assert best["override"] == (
        "model.anchors.sizes=[32,64,128,256,512] model.anchors.scales=[1] model.anchors.ratios=[1]"
    )
    with pytest.raises(ValueError, match="no boxes"):
        fit_anchors(np.zeros((0, 4)), 256, [one_16])


def test_fit_anchors_tool_on_voc_folder(tiny_voc, tmp_path, capsys) -> None:
    root = tiny_voc(n_images=5, image_size=(160, 192), boxes_per_image=(2, 3))
    spec = importlib.util.spec_from_file_location("fit_anchors_tool", REPO / "tools" / "fit_anchors.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "fit.json"
    overrides = [f"data.root={root}", "data.classes=[cat,dog]", "data.size=128", "data.workers=0"]
    assert tool.main([*overrides, "--bases", "16,32", "--top", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["images"] == 5 and len(result["candidates"]) == 2 * 3 * 4
    # the boxes are the letterboxed ones: 192 x 160 resized to 128 x 107 (per axis, as the image)
    cfg = load_config(None, overrides)
    boxes, images = tool.training_boxes(cfg, "train", None)
    from detector.data.formats import build_dataset

    records = build_dataset(cfg.data, "train", classes=["cat", "dog"]).records
    original = np.concatenate([r.boxes for r in records])
    np.testing.assert_allclose(boxes, original * np.array([128 / 192, 107 / 160] * 2), atol=0.01)
    assert result["boxes"] == len(original) == len(boxes) and images == 5
    best = result["best"]
    assert best == result["candidates"][0] and best["override"] in printed and "config" in printed
    pasted = load_config(None, best["override"].split()).model.anchors  # the line a user pastes
    for key in ("sizes", "scales", "ratios"):
        assert getattr(pasted, key) == pytest.approx(best[key], rel=1e-5)
    with pytest.raises(SystemExit) as exit_info:
        tool.main([*overrides, "--top", "0"])
    assert exit_info.value.code == 2 and "--top must be >= 1" in capsys.readouterr().err
