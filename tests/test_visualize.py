"""Drawing and plots: pixels change where they should, and every plot writes a real PNG."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detector.evaluation.voc import voc_ap
from detector.visualize import (
    class_color,
    draw_detections,
    loss_cdf,
    loss_share_of_hardest,
    plot_loss_cdf,
    plot_pr_curves,
    plot_speed_accuracy,
    plot_training_curves,
    save_image,
)


def gray(h=80, w=120):
    return torch.full((3, h, w), 100, dtype=torch.uint8)


def assert_png(path, min_size=(200, 150)):
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.load()
        assert img.size[0] >= min_size[0] and img.size[1] >= min_size[1]
        array = np.asarray(img.convert("RGB"))
    assert array.std() > 5  # something was drawn, not a blank canvas
    if os.environ.get("FOCALDET_KEEP_PLOTS"):  # look at the figures: FOCALDET_KEEP_PLOTS=/some/dir pytest ...
        keep = Path(os.environ["FOCALDET_KEEP_PLOTS"])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, keep / Path(path).name)
    return array


def test_draw_detections_changes_only_the_box_border_and_caption():
    image = gray()
    box = [20, 30, 100, 70]
    out = draw_detections(image, torch.tensor([box]), torch.tensor([2]), torch.tensor([0.87]),
                          class_names=["tree", "car"], width=2)
    assert out.dtype == torch.uint8 and out.shape == image.shape
    assert torch.equal(image, gray())  # input untouched
    changed = (out != image).any(dim=0)
    # the border is drawn in the class colour
    assert tuple(out[:, 30, 60].tolist()) == class_color(2)
    assert tuple(out[:, 50, 20].tolist()) == class_color(2)
    # outside the box (beyond the line width) nothing changes
    outside = torch.ones_like(changed)
    outside[28:73, 18:103] = False
    assert not changed[outside].any()
    # inside, below the caption band, nothing changes (the box is not filled)
    assert not changed[45:67, 23:97].any()
    # the caption is drawn inside the top-left corner
    assert changed[32:44, 23:60].any()


def test_draw_detections_threshold_names_and_colours():
    image = gray()
    boxes = torch.tensor([[5.0, 5.0, 40.0, 40.0], [60.0, 10.0, 110.0, 60.0]])
    out = draw_detections(image, boxes, torch.tensor([1, 3]), torch.tensor([0.9, 0.2]), score_threshold=0.5)
    assert tuple(out[:, 5, 20].tolist()) == class_color(1)
    assert torch.equal(out[:, :, 55:], image[:, :, 55:])  # the low-scoring box is not drawn
    assert class_color(1) != class_color(3) != class_color(2)
    # nothing above the threshold: an unchanged copy
    none = draw_detections(image, boxes, torch.tensor([1, 3]), torch.tensor([0.1, 0.2]), score_threshold=0.5)
    assert torch.equal(none, image) and none.data_ptr() != image.data_ptr()
    # ground truth (no scores), numpy input, boxes partly outside the image are clipped
    gt = draw_detections(image, np.array([[-10.0, -10.0, 500.0, 30.0]]), np.array([1]))
    assert tuple(gt[:, 0, 60].tolist()) == class_color(1)


def test_draw_detections_errors():
    with pytest.raises(ValueError, match=r"uint8 image tensor \[3, H, W\]"):
        draw_detections(torch.zeros(3, 10, 10), torch.zeros(0, 4), torch.zeros(0))
    with pytest.raises(ValueError, match="1 boxes but 2 labels"):
        draw_detections(gray(), torch.tensor([[1.0, 1, 5, 5]]), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="xyxy"):
        draw_detections(gray(), torch.tensor([[10.0, 1, 5, 5]]), torch.tensor([1]))


def test_save_image_roundtrip(tmp_path):
    image = torch.randint(0, 256, (3, 17, 23), dtype=torch.uint8)
    path = save_image(image, tmp_path / "sub" / "x.png")
    with Image.open(path) as img:
        back = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(back, image)
    with pytest.raises(ValueError, match="uint8"):
        save_image(image.float(), tmp_path / "y.png")


def test_plot_pr_curves(tmp_path):
    rng = np.random.default_rng(0)
    dets, gts = [], []
    for _ in range(10):
        boxes = rng.uniform(0, 100, (4, 2))
        boxes = np.concatenate([boxes, boxes + 20], axis=1)
        labels = rng.integers(1, 4, 4)
        gts.append({"boxes": boxes, "labels": labels})
        noisy = boxes + rng.normal(0, 3, boxes.shape)
        dets.append({"boxes": noisy, "scores": rng.random(4), "labels": labels})
    dets[0]["labels"] = np.array([1, 1, 1, 1])
    gts.append({"boxes": np.array([[0.0, 0, 10, 10]]), "labels": np.array([4])})  # class 4: no detections
    dets.append({"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, int)})
    result = voc_ap(dets, gts)
    assert_png(plot_pr_curves(result, ["a", "b", "c", "d"], tmp_path / "pr.png"))
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_pr_curves({"map": float("nan"), "ap": {}}, None, tmp_path / "empty.png")


def test_plot_training_curves(tmp_path):
    steps = list(range(0, 300, 3))
    loss = [2.0 * np.exp(-s / 100) + 0.1 for s in steps]
    history = {"step": steps, "train_loss": loss, "train_loss_cls": [v * 0.6 for v in loss],
               "lr": [0.01] * len(steps), "epoch": [1, 2, 3], "val_step": [100, 200, 300],
               "val_map": [0.1, 0.3, 0.35], "val_map50_07": [0.12, 0.31, 0.36]}
    history["train_loss_box"] = [float("nan")] * 10 + loss[10:]  # a term first seen late (NaN-padded)
    assert_png(plot_training_curves(history, tmp_path / "train.png"))
    assert_png(plot_training_curves({"train_loss": [1.0, 0.5]}, tmp_path / "short.png"))
    with pytest.raises(ValueError, match="train_loss"):
        plot_training_curves({"val_map": [0.1]}, tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"'epoch'\] has 1 values but 'val_map' has 2"):
        plot_training_curves({"train_loss": [1.0], "epoch": [1], "val_map": [0.1, 0.2]}, tmp_path / "bad.png")


def test_plot_speed_accuracy(tmp_path):
    curves = {
        "ours": [(12.0, 0.40, 256), (20.0, 0.52, 416), (15.0, 0.47, 320)],
        "torchvision": [(18.0, 0.35, 256), (30.0, 0.50, 416)],
    }
    assert_png(plot_speed_accuracy(curves, tmp_path / "speed.png"))
    with pytest.raises(ValueError, match="positive"):
        plot_speed_accuracy({"x": [(0.0, 0.1, 256)]}, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="empty"):
        plot_speed_accuracy({}, tmp_path / "bad.png")


def test_loss_cdf_by_hand():
    # sorted [1, 1, 2], normalized [.25, .25, .5], cumulative [.25, .5, 1] at fractions [1/3, 2/3, 1]
    x, y = loss_cdf(torch.tensor([2.0, 1.0, 1.0]))
    np.testing.assert_allclose(x, [1 / 3, 2 / 3, 1.0])
    np.testing.assert_allclose(y, [0.25, 0.5, 1.0])
    # the hardest third (one sample, loss 2) carries half the loss
    assert loss_share_of_hardest([2.0, 1.0, 1.0], 1 / 3) == pytest.approx(0.5)
    assert loss_share_of_hardest([2.0, 1.0, 1.0], 1.0) == pytest.approx(1.0)
    x, y = loss_cdf(np.random.default_rng(0).random(10_000), max_points=100)
    assert x.size <= 100 and x[-1] == 1.0 and y[-1] == pytest.approx(1.0)
    assert np.all(np.diff(y) >= 0)
    with pytest.raises(ValueError, match="sum to zero"):
        loss_cdf([0.0, 0.0])
    with pytest.raises(ValueError, match="non-negative"):
        loss_cdf([1.0, -1.0])


def test_plot_loss_cdf_with_focal_losses(tmp_path):
    # Focal loss of random anchors: larger gamma concentrates the background loss on the few hardest ones.
    rng = np.random.default_rng(0)
    p_fg = rng.beta(4, 2, 2000)  # probability of the true class for foreground anchors
    p_bg = rng.beta(1, 30, 50_000)  # probability of any class for background anchors (mostly easy)
    curves = {}
    for gamma in (0.0, 0.5, 1.0, 2.0):
        curves[gamma] = (-((1 - p_fg) ** gamma) * np.log(p_fg), -(p_bg**gamma) * np.log1p(-p_bg))
    shares = [loss_share_of_hardest(curves[g][1], 0.05) for g in sorted(curves)]
    assert all(a < b for a, b in zip(shares, shares[1:], strict=False))
    assert_png(plot_loss_cdf(curves, tmp_path / "cdf.png"))
