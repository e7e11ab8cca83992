"""Flip test-time augmentation: the content-flip geometry, equivariance, off = unchanged, the tools' --tta."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from lit_helpers import TINY_MODEL

from detector.config import load_config
from detector.inference.predict import letterbox_batch, predict
from detector.inference.tta import (
    TTA_FLIPS,
    content_window,
    flip_boxes,
    flip_content,
    parse_tta,
    tta_detect,
)
from detector.models import build_model
from detector.models.retinanet import RetinaNet

SIZE = 64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread for these 64 px forwards: a second thread only adds overhead at this size, and
    on a loaded machine its spinning made each forward ~40x slower (2 s vs 0.05 s measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.cache
def tiny_retinanet(seed: int = 0) -> RetinaNet:
    """A random tiny RetinaNet whose scores spread widely (random init collapses them all to the prior);
    built once per seed (tests only read it)."""
    torch.manual_seed(seed)
    cfg = load_config(
        None, [*TINY_MODEL, f"data.size={SIZE}", "model.score_thresh=0.2", "model.detections_per_img=40"]
    )
    model = build_model(cfg.model, 2).eval()
    torch.nn.init.zeros_(model.cls_head.predictor.bias)  # no focal prior: scores centred on 0.5
    calibration, _ = letterbox_batch([image(64, 48, seed=100 + seed), image(56, 64, seed=200 + seed)], SIZE)
    _unit_variance_init(model, calibration)
    return model


def _unit_variance_init(model: RetinaNet, batch: torch.Tensor) -> None:
    """Rescale every conv (at its first call) so its output has unit std on `batch` (LSUV-style); the class
    logits get std 1.5 and the box deltas 0.2, so scores spread over (0, 1) and boxes move off the anchors."""
    from detector.models.backbones import ConvFrozenBN

    targets = {model.cls_head.predictor: 1.5, model.box_head.predictor: 0.2}
    seen: set[torch.nn.Module] = set()

    def rescale(module, inputs, out):  # noqa: ANN001, ANN202 - a forward hook
        if module in seen:  # the heads run once per level: calibrate on the first (P3, the largest)
            return None
        seen.add(module)
        factor = targets.get(module, 1.0) / out.std().clamp(min=1e-12)
        params = (
            (module._bn.weight, module._bn.bias) if isinstance(module, ConvFrozenBN) else (module.weight,)
        )
        if not isinstance(module, ConvFrozenBN) and module.bias is not None:
            params += (module.bias,)
        for p in params:
            p.mul_(factor)
        return out * factor

    hooks = [m.register_forward_hook(rescale) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model.head_outputs(batch)
    for h in hooks:
        h.remove()


def image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A uint8 image [3, H, W] with smooth structure (so features vary) plus noise."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(3, height // 8 + 1, width // 8 + 1, generator=g)
    up = torch.nn.functional.interpolate(base[None], size=(height, width), mode="bilinear")[0]
    noise = torch.rand(3, height, width, generator=g) * 0.2
    return ((up * 0.8 + noise) * 255).clamp(0, 255).to(torch.uint8)


MIRROR_DIMS = {"hflip": [-1], "vflip": [-2], "hvflip": [-1, -2]}


def mirror_image(img: torch.Tensor, flip: str) -> torch.Tensor:
    return img.flip(MIRROR_DIMS[flip])


def mirror_dets(det: dict[str, torch.Tensor], height: int, width: int, flip: str) -> dict[str, torch.Tensor]:
    """Detections of an image mirrored to the mirrored image's frame (original pixels)."""
    return {**det, "boxes": flip_boxes(det["boxes"], (0, 0, width, height), flip)}


def sorted_dets(det: dict[str, torch.Tensor]) -> torch.Tensor:
    """Rows (label, score, box) sorted by score then box, for an order-free comparison."""
    rows = torch.cat(
        [det["labels"][:, None].double(), det["scores"][:, None].double(), det["boxes"].double()], 1
    )
    order = sorted(range(len(rows)), key=lambda i: tuple(rows[i, 1:].tolist()))
    return rows[order]


def assert_same_detections(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert len(a["scores"]) == len(b["scores"]) > 0
    ra, rb = sorted_dets(a), sorted_dets(b)
    assert torch.equal(ra[:, 0], rb[:, 0])
    torch.testing.assert_close(ra[:, 1:], rb[:, 1:], atol=2e-3, rtol=1e-4)


# ----------------------------------------------------------------------------------------------- the option


def test_parse_tta_validates_and_keeps_order():
    assert parse_tta("") == () and parse_tta(None) == () and parse_tta([]) == ()
    assert parse_tta("vflip, hflip,vflip") == ("vflip", "hflip")
    assert parse_tta(["hvflip"]) == ("hvflip",)
    assert TTA_FLIPS == ("hflip", "vflip", "hvflip")
    with pytest.raises(ValueError, match=r"unknown flip 'rot90'.*hflip, vflip, hvflip"):
        parse_tta("hflip,rot90")


# ------------------------------------------------------------------------------------------------ geometry


def test_content_flip_mirrors_the_image_not_the_padded_square():
    """A 64x40 image letterboxed at 64 pads 24 columns on the right: hflip mirrors the 40 content columns."""
    img = image(64, 40)
    batch, metas = letterbox_batch([img], SIZE)
    window = content_window(metas[0], SIZE)
    assert window == (0, 0, 40, 64)
    for flip in TTA_FLIPS:
        flipped = flip_content(batch, [window], flip)
        expected, _ = letterbox_batch([mirror_image(img, flip)], SIZE)  # no resize at 64: exact
        assert torch.equal(flipped, expected), flip
        assert torch.equal(flipped[..., 40:], batch[..., 40:])  # the pad stays where it is
    # a box on pixels x 2..10 of the content lands on x 30..38, within the content, not at 54..62
    box = torch.tensor([[2.0, 5.0, 10.0, 20.0]])
    assert flip_boxes(box, window, "hflip").tolist() == [[30.0, 5.0, 38.0, 20.0]]
    assert flip_boxes(box, window, "vflip").tolist() == [[2.0, 44.0, 10.0, 59.0]]
    assert torch.equal(flip_boxes(flip_boxes(box, window, "hvflip"), window, "hvflip"), box)


def test_content_window_of_a_resized_image_and_of_loader_targets():
    """An 80x50 image at 64: scale 0.8, content 40 wide; the eval loader's tensors give the same window."""
    _, metas = letterbox_batch([image(80, 50)], SIZE)
    assert content_window(metas[0], SIZE) == (0, 0, 40, 64)
    target = {"scale": torch.tensor([0.8, 0.8]), "pad": torch.zeros(2), "orig_size": torch.tensor([80, 50])}
    assert content_window(target, SIZE) == (0, 0, 40, 64)


# ------------------------------------------------------------------------------------------- equivariance


@pytest.mark.parametrize("flip", TTA_FLIPS)
@pytest.mark.parametrize("shape", [(64, 40), (40, 64)])
def test_tta_detections_are_equivariant_under_the_flip(flip, shape):
    """TTA(flip) of the mirrored image = the mirror of TTA(flip) of the image (both see the same 2 views)."""
    model = tiny_retinanet()
    height, width = shape
    img = image(height, width, seed=1)
    (a,) = predict(model, [img], SIZE, tta=(flip,))
    (b,) = predict(model, [mirror_image(img, flip)], SIZE, tta=(flip,))
    assert_same_detections(mirror_dets(a, height, width, flip), b)
    (plain,) = predict(model, [img], SIZE)
    assert len(a["scores"]) <= model.detections_per_img
    assert float(a["scores"].max()) >= float(plain["scores"].max())  # the original view is one of the views


def test_all_three_flips_are_equivariant_under_each_and_batching_does_not_change_them():
    """With the whole flip group the view set is closed under every flip; two images batched as one."""
    model = tiny_retinanet()
    img, other = image(64, 40, seed=3), image(48, 64, seed=4)
    tta = ("hflip", "vflip", "hvflip")
    a, a_other = predict(model, [img, other], SIZE, batch_size=2, tta=tta)
    for flip in TTA_FLIPS:
        (b,) = predict(model, [mirror_image(img, flip)], SIZE, tta=tta)
        assert_same_detections(mirror_dets(a, 64, 40, flip), b)
    (alone,) = predict(model, [other], SIZE, tta=tta)
    assert_same_detections(a_other, alone)


class PostNMSOnly(torch.nn.Module):
    """A detector that only gives post-NMS detections (as Faster R-CNN or an ONNX export): the other route."""

    def __init__(self, inner: RetinaNet) -> None:
        super().__init__()
        self.inner = inner
        self.nms_thresh, self.detections_per_img = inner.nms_thresh, inner.detections_per_img

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        return self.inner(images)


def test_post_nms_merge_for_other_detectors_is_equivariant():
    model = PostNMSOnly(tiny_retinanet()).eval()
    img = image(64, 40, seed=6)
    (a,) = predict(model, [img], SIZE, tta=("hflip",))
    (b,) = predict(model, [mirror_image(img, "hflip")], SIZE, tta=("hflip",))
    assert_same_detections(mirror_dets(a, 64, 40, "hflip"), b)


def test_retinanet_merges_the_candidates_of_both_views_before_nms():
    """For a square image (content = the whole input) the merge is one class-wise NMS over the pre-NMS
    candidates of the image and of its mirror (mirrored back), built here straight from `candidates`."""
    from torchvision.ops import batched_nms

    model = tiny_retinanet()
    img = image(64, 64, seed=11)
    batch, metas = letterbox_batch([img], SIZE)
    boxes, scores, labels = [], [], []
    with torch.inference_mode():
        for flipped in (False, True):
            x = batch.flip(-1) if flipped else batch
            s, b, c = model.candidates(*model.head_outputs(x), (SIZE, SIZE))
            keep = s[0] > model.score_thresh
            b = b[0][keep]
            boxes.append(torch.stack((SIZE - b[:, 2], b[:, 1], SIZE - b[:, 0], b[:, 3]), 1) if flipped else b)
            scores.append(s[0][keep])
            labels.append(c[0][keep] + 1)
        b, s, c = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
        kept = batched_nms(b, s, c, model.nms_thresh)[: model.detections_per_img]
        (got,) = tta_detect(model, batch, metas, ("hflip",))
    assert len(kept) == model.detections_per_img
    torch.testing.assert_close(got["boxes"], b[kept], atol=1e-4, rtol=0)
    assert torch.equal(got["scores"], s[kept]) and torch.equal(got["labels"], c[kept])


def test_merge_settings_of_every_model_kind():
    from detector.inference.tta import merge_settings

    cfg = load_config(
        None,
        [
            *TINY_MODEL,
            "model.name=torchvision_retinanet",
            "model.loss.box=l1",
            "model.nms_thresh=0.4",
            "model.detections_per_img=7",
        ],
    )
    assert merge_settings(build_model(cfg.model, 2)) == (0.4, 7)
    assert merge_settings(tiny_retinanet()) == (0.5, 40)
    with pytest.raises(ValueError, match="--tta needs the model's NMS settings; a Linear has none"):
        merge_settings(torch.nn.Linear(1, 1))


def test_faster_rcnn_runs_through_the_post_nms_merge():
    from detector.config import ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(name="faster_rcnn")
    cfg.backbone.pretrained = False
    cfg.fpn.channels = 16
    cfg.anchors.sizes = [16.0, 32.0, 48.0, 64.0, 96.0]
    cfg.score_thresh = 0.0
    cfg.detections_per_img = 30
    model = build_model(cfg, num_classes=2).eval()
    img = image(64, 40, seed=7)
    (plain,) = predict(model, [img], SIZE)
    (merged,) = predict(model, [img], SIZE, tta=("hflip", "vflip"))
    assert 0 < len(merged["scores"]) <= 30
    assert float(merged["scores"].max()) >= float(plain["scores"].max())
    assert float(merged["boxes"][:, 2].max()) <= 40 and float(merged["boxes"][:, 3].max()) <= 64
    assert bool((merged["scores"][:-1] >= merged["scores"][1:]).all())


def test_tiles_of_a_large_image_are_flipped_each():
    """Tiled prediction with TTA: every tile is predicted with its flips, then merged over the image."""
    from detector.inference.tiling import TileSettings, batch_predictor, predict_image

    model = tiny_retinanet()
    img = image(150, 200, seed=12)
    settings = TileSettings(tile=64, overlap=0.25, batch_size=4, progress=False)
    plain = predict_image(batch_predictor(model, SIZE), img, SIZE, settings)
    merged = predict_image(batch_predictor(model, SIZE, ("hflip",)), img, SIZE, settings)
    assert len(merged["scores"]) > 0 and not torch.equal(merged["boxes"], plain["boxes"])
    assert float(merged["boxes"][:, 2].max()) <= 200 and float(merged["boxes"][:, 3].max()) <= 150
    assert float(merged["scores"].max()) >= float(plain["scores"].max())


# ------------------------------------------------------------------------------------------------- off


def test_tta_off_is_bit_identical_to_the_plain_forward():
    model = tiny_retinanet()
    images = [image(64, 40, seed=9), image(50, 64, seed=10)]
    batch, metas = letterbox_batch(images, SIZE)
    with torch.inference_mode():
        direct = model(batch)
        off = tta_detect(model, batch, metas, ())
    for d, o in zip(direct, off, strict=True):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(d[key], o[key])
    for plain, off in zip(predict(model, images, SIZE), predict(model, images, SIZE, tta=()), strict=True):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(plain[key], off[key])


# ------------------------------------------------------------------------------------------------- tools


def _load_tool(name: str):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"tta_tool_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_eval_and_infer_tools_take_tta(tiny_voc, tmp_path, capsys):
    from tiny_weights import write_tiny_weights

    root = tiny_voc(n_images=2, image_size=(64, 80), split="val", seed=1)
    weights = write_tiny_weights(tmp_path / "w.safetensors", ["cat", "dog"], "model.score_thresh=0.01")
    common = ["--weights", str(weights), "--fps-iters", "0", f"data.root={root}", "data.test_split=val"]
    common += ["data.workers=0", "data.batch_size=2"]
    reports = {}
    runs = {  # --tta replaces the config's eval.tta; without --tta the config's applies
        "off": ["--tta", "", "eval.tta=[hflip]"],
        "flag": ["--tta", "hflip,vflip"],
        "config": ["eval.tta=[hflip,vflip]"],
    }
    for name, extra in runs.items():
        out = tmp_path / f"eval_{name}" / "results.json"
        assert _load_tool("eval").main([*common, "--out", str(out), *extra]) == 0
        reports[name] = json.loads(out.read_text())
    assert "test-time flips  hflip, vflip" in capsys.readouterr().out
    assert reports["off"]["tta"] == [] and reports["flag"]["tta"] == reports["config"]["tta"] == [
        "hflip",
        "vflip",
    ]
    assert reports["off"]["num_images"] == reports["flag"]["num_images"] == 2
    dets = {k: [c["num_det"] for c in r["voc"]["per_class"]] for k, r in reports.items()}
    assert dets["off"] != dets["flag"] == dets["config"]  # the flipped views add detections
    assert reports["flag"]["voc"] == reports["config"]["voc"]
    out = tmp_path / "infer"
    images = str(root / "JPEGImages")
    assert (
        _load_tool("infer").main(
            ["--weights", str(weights), images, "--out", str(out), "--tta", "hvflip", "--score", "0"]
        )
        == 0
    )
    assert len(json.loads((out / "detections.json").read_text())) > 0
    capsys.readouterr()


def test_a_bad_eval_tta_in_the_config_names_the_key():
    from detector.config import ConfigError

    assert load_config(None, ["eval.tta=[vflip,hflip]"]).eval.tta == ["vflip", "hflip"]
    with pytest.raises(
        ConfigError, match=r"eval.tta = \['rot90'\]: expected a list of hflip, vflip or hvflip"
    ):
        load_config(None, ["eval.tta=[rot90]"])


@pytest.mark.parametrize("tool", ["eval", "infer"])
def test_a_bad_tta_value_is_one_usage_error_line(tool, capsys, tmp_path):
    argv = ["--weights", str(tmp_path / "w.safetensors"), "--tta", "hflip,rot90"]
    argv += [str(tmp_path)] if tool == "infer" else []
    with pytest.raises(SystemExit) as exit_info:
        _load_tool(tool).main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error:") and "rot90" in err and "hvflip" in err
