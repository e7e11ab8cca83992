"""The study tools (compare, loss ablation, loss distribution), their shared logic in `detector.study`, and
torchvision's RetinaNet behind our interface. End-to-end runs use generated VOC data and a few steps."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from lit_helpers import TINY_MODEL, disable_loss_compile, make_data, tiny_config, tiny_overrides

from detector import reporting
from detector.config import ConfigError, load_config
from detector.losses.focal import sigmoid_focal_loss
from detector.models import build_model
from detector.study import ablation, anchors, cost, runs
from detector.study import compare as compare_study

REPO = Path(__file__).resolve().parents[1]


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _no_compile(monkeypatch):
    disable_loss_compile(monkeypatch)


@pytest.fixture
def data(tmp_path):
    from conftest import write_tiny_voc

    return make_data(write_tiny_voc, tmp_path / "voc")


def common_overrides(data: Path, tmp_path: Path, size: int = 96) -> list[str]:
    """The tiny training settings for every detector of a study (the variant keeps its model.name)."""
    keep = [o for o in tiny_overrides(data, tmp_path) if not o.startswith(("model.name=", "output."))]
    return [*keep, f"data.size={size}"]


def table_rows(markdown: str, header_start: str) -> list[list[str]]:
    """Body rows of the markdown table whose header starts with `| header_start`."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header_start}"))
    width = lines[start].count("|")
    assert re.fullmatch(r"\|(---\|)+", lines[start + 1]) and lines[start + 1].count("|") == width
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        assert line.count("|") - line.count("\\|") == width, line
        rows.append([c.strip() for c in line.strip("|").split(" | ")])
    return rows


# ------------------------------------------------------------------------------ torchvision's RetinaNet


def tv_config(*extra: str):
    return load_config(
        None,
        [
            "model.name=torchvision_retinanet",
            *TINY_MODEL,
            "model.loss.box=l1",
            "data.classes=[a,b,c]",
            *extra,
        ],
    )


def random_targets(n_images: int, size: int, num_classes: int, seed: int = 0) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    targets = []
    for _ in range(n_images):
        xy = torch.rand(3, 2, generator=gen) * size * 0.6
        wh = 12 + torch.rand(3, 2, generator=gen) * size * 0.3
        boxes = torch.cat([xy, (xy + wh).clamp(max=size - 1)], 1)
        targets.append({"boxes": boxes, "labels": torch.randint(1, num_classes + 1, (3,), generator=gen)})
    return targets


@pytest.mark.slow  # first import of Lightning (DetectorModule) is most of it
def test_torchvision_retinanet_trains_and_detects_behind_our_interface():
    from detector.lit import DetectorModule
    from detector.models.torchvision_retinanet import TorchvisionRetinaNet

    torch.manual_seed(0)
    cfg = tv_config("model.score_thresh=0.0", "model.detections_per_img=7")
    model = build_model(cfg.model, 3)
    assert isinstance(model, TorchvisionRetinaNet)
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    targets = random_targets(2, 64, 3)
    model.train()
    losses = model(images, targets)
    assert set(losses) == {"classification", "bbox_regression"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert model.detector.head.classification_head.cls_logits.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for det in out:
        assert 0 < len(det["scores"]) <= 7
        assert det["labels"].min() >= 1 and det["labels"].max() <= 3  # shifted back to 1..C
        assert det["boxes"].min() >= 0 and det["boxes"].max() <= 64
    # C logits (no background logit): labels are shifted, not padded with a class 0
    assert model.detector.head.classification_head.num_classes == 3
    assert isinstance(DetectorModule(cfg, ["a", "b", "c"]).model, TorchvisionRetinaNet)
    with pytest.raises(ValueError, match=r"labels must be in 1\.\.3"):
        model.train()(images, [{"boxes": t["boxes"], "labels": t["labels"] - 1} for t in targets])


def test_torchvision_retinanet_head_shape_follows_the_config():
    cfg = tv_config(
        "model.fpn.channels=32", "model.head.channels=16", "model.head.depth=2", "model.head.norm=group"
    )
    model = build_model(cfg.model, 2)
    cls_head = model.detector.head.classification_head
    convs = [m for m in cls_head.conv.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(32, 16), (16, 16)]
    assert any(isinstance(m, torch.nn.GroupNorm) for m in cls_head.conv.modules())
    prior = torch.sigmoid(cls_head.cls_logits.bias)
    torch.testing.assert_close(prior, torch.full_like(prior, 0.01))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.loss.gamma=1.0", "fixed focal loss"),
        ("model.loss.cls=ohem", "fixed focal loss"),
        ("model.loss.box=smooth_l1", "smooth_l1_beta"),
        ("model.assigner=atss", "matches by IoU only"),
    ],
)
def test_torchvision_retinanet_refuses_settings_it_cannot_express(override, message):
    with pytest.raises(ValueError, match=message):
        build_model(tv_config(override).model, 2)


def test_config_accepts_torchvision_retinanet_and_still_rejects_unknown_models():
    assert tv_config().model.name == "torchvision_retinanet"
    with pytest.raises(ConfigError, match="model.name"):
        load_config(None, ["model.name=yolo"])


# ------------------------------------------------------------------------------------- measurements


def test_gflops_are_counted_and_grow_with_the_input_area():
    model = build_model(tiny_config(Path("."), Path(".")).model, 2)
    small, large = cost.count_gflops(model, 64), cost.count_gflops(model, 128)
    assert small > 0
    assert 3.5 < large / small < 4.5  # convolutions dominate: FLOPs scale with the pixel count
    assert model.training  # mode restored


class _AutocastProbe(torch.nn.Module):
    """A 'detector' whose loss records, per call, which module ran, under which autocast dtype, with which
    weight (class-level, so the deep copy that time_train_steps trains records into the same list)."""

    calls: list[tuple[int, torch.dtype | None, float]] = []

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(3))

    def forward(self, images: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        on = torch.is_autocast_enabled(images.device.type)
        dtype = torch.get_autocast_dtype(images.device.type) if on else None
        self.calls.append((id(self), dtype, float(self.weight.detach().sum())))
        return {"loss": (images.float().mean(dim=(0, 2, 3)) * self.weight).sum()}


@pytest.mark.parametrize(("precision", "dtype"), [("32-true", None), ("bf16-mixed", torch.bfloat16)])
def test_train_steps_are_timed_in_the_training_precision_on_a_copy(precision, dtype, monkeypatch):
    monkeypatch.setattr(_AutocastProbe, "calls", [])
    model = _AutocastProbe()
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    seconds = cost.time_train_steps(model, images, targets, steps=2, warmup=1, precision=precision)
    assert seconds > 0
    calls = _AutocastProbe.calls
    assert [c[1] for c in calls] == [dtype] * 3  # warm-up and timed steps, all under the training precision
    assert len({c[0] for c in calls}) == 1 and calls[0][0] != id(model)  # one copy ran them, not the model
    assert calls[0][2] > calls[1][2] > calls[2][2]  # the copy took SGD steps (positive gradients)
    assert torch.equal(model.weight, torch.ones(3))  # the given model is untouched


def test_anchor_losses_reproduce_the_models_own_classification_loss():
    torch.manual_seed(0)
    model = build_model(tiny_config(Path("."), Path("."), "model.loss.gamma=2.0").model, 2).train()
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    targets = random_targets(2, 64, 2, seed=1)
    with torch.no_grad():
        expected = model(images, targets)["classification"]
        logits, labels = anchors.anchor_logits_and_labels(model, images, targets)
    assert labels.shape == (logits.shape[0],) and logits.shape[1] == 2
    assert set(labels.unique().tolist()) <= {-2, -1, 0, 1} and (labels >= 0).any()
    total = sigmoid_focal_loss(logits, labels, 0.25, 2.0, reduction="sum") / (labels >= 0).sum()
    torch.testing.assert_close(total, expected, rtol=1e-4, atol=1e-6)
    fake = torch.nn.Linear(1, 1)
    with pytest.raises(ValueError, match="our RetinaNet"):
        anchors.anchor_logits_and_labels(fake, images, targets)


def test_higher_gamma_concentrates_the_background_loss_on_the_hardest_anchors():
    gen = torch.Generator().manual_seed(0)
    logits = torch.cat([torch.randn(20000, 1, generator=gen) - 5, torch.randn(200, 1, generator=gen) + 1])
    labels = torch.full((logits.shape[0],), -1)
    shares = {}
    for gamma in (0.0, 1.0, 2.0):
        loss = sigmoid_focal_loss(logits, labels, None, gamma, reduction="none").sum(1).numpy()
        shares[gamma] = anchors.hardest_shares(loss, (0.01, 0.1))
        for fraction, share in shares[gamma].items():
            assert fraction - 1e-9 <= share <= 1.0
    assert shares[0.0][0.01] < shares[1.0][0.01] < shares[2.0][0.01]


def test_seed_summary_and_best_alpha_per_gamma():
    s = ablation.seed_summary([0.5, 0.7, None])
    assert s["mean"] == pytest.approx(0.6) and s["std"] == pytest.approx(math.sqrt(0.02))
    assert (s["min"], s["max"]) == (0.5, 0.7)
    assert s["n"] == 2 and reporting.fmt_spread(s) == "0.600 ± 0.141 (0.500-0.700)"
    assert (
        ablation.seed_summary([None])["mean"] is None
        and reporting.fmt_spread(ablation.seed_summary([None])) == "-"
    )
    assert (
        reporting.fmt_spread(ablation.seed_summary([None, 0.25])) == "0.250"
    )  # one seed has it: no spread shown
    results = [
        {"family": "focal", "gamma": 2.0, "alpha": 0.25, "voc_ap": ablation.seed_summary([0.6])},
        {"family": "focal", "gamma": 2.0, "alpha": 0.5, "voc_ap": ablation.seed_summary([0.7])},
        {"family": "focal", "gamma": 0.5, "alpha": 0.75, "voc_ap": ablation.seed_summary([0.4])},
        {"family": "ce", "gamma": 0.0, "alpha": None, "voc_ap": ablation.seed_summary([0.9])},
    ]
    best = ablation.best_alpha_per_gamma(results)
    assert list(best) == [0.5, 2.0] and best[2.0]["alpha"] == 0.5 and best[0.5]["alpha"] == 0.75


def test_the_default_loss_grid_is_the_papers_and_every_variant_loads():
    grid = ablation.loss_grid()
    names = [v.name for v in grid]
    assert names[:4] == ["ce", "ce_a0.25", "ce_a0.5", "ce_a0.75"]
    assert len([v for v in grid if v.family == "focal"]) == 12
    assert names[-4:] == ["ohem_1to3", "ohem_1to3_nms0.5", "ohem_b256", "ohem_b256_nms0.5"]
    by_name = {v.name: v for v in grid}
    ce = load_config(None, list(by_name["ce"].overrides)).model.loss
    assert (ce.cls, ce.alpha, ce.gamma) == ("focal", None, 0.0)
    fl = load_config(None, list(by_name["fl_g5_a0.5"].overrides)).model.loss
    assert (fl.alpha, fl.gamma) == (0.5, 5.0)
    ohem = load_config(None, list(by_name["ohem_b256"].overrides)).model.loss
    assert (ohem.cls, ohem.ohem_budget, ohem.ohem_nms) == ("ohem", 256, 0.0)
    ohem = load_config(None, list(by_name["ohem_1to3_nms0.5"].overrides)).model.loss
    assert (ohem.ohem_budget, ohem.ohem_neg_pos_ratio, ohem.ohem_nms) == (0, 3.0, 0.5)
    assert by_name["ohem_b256_nms0.5"].ohem == "budget 256, NMS 0.5"
    with pytest.raises(ValueError, match="repeated"):
        ablation.loss_grid(ce_alphas=(0.5, 0.5))


def test_markdown_table_and_curve_crossings():
    text = reporting.markdown_table(["a", "b"], [[1, "x|y"], [2.5, None]])
    assert text.splitlines()[1] == "|---|---|" and "x\\|y" in text
    with pytest.raises(ValueError, match="row 0 has 1 cells"):
        reporting.markdown_table(["a", "b"], [[1]])
    curves = {"fast": [(10, 0.5, 256), (20, 0.6, 320)], "slow": [(12, 0.4, 256), (22, 0.8, 320)]}
    (note,) = cost.curve_crossings(curves)
    assert note.startswith("fast and slow cross near 1")
    assert cost.curve_crossings({"a": [(1, 0.1, 1), (2, 0.2, 2)], "b": [(1, 0.3, 1), (2, 0.4, 2)]}) == []


# ------------------------------------------------------------------------------------------ the tools


def untrained_weights(cfg, path: Path) -> Path:
    """Exported weights of a freshly built detector (what `tools/train.py` writes, without the training)."""
    from detector.lit import DetectorModule, export_weights

    torch.manual_seed(0)
    return export_weights(DetectorModule(cfg), path)


@pytest.mark.slow
def test_compare_trains_and_evaluates_detectors_and_writes_table_json_and_plot(data, tmp_path):
    """torchvision's RetinaNet is trained through the Lightning loop, ours (same architecture) comes as
    --weights. The other two detectors take the same code path (their configs: the variants test below);
    left out here to keep the test short (an untrained Faster R-CNN step costs seconds on the CPU)."""
    out, work = tmp_path / "docs", tmp_path / "work"
    tool = load_tool("compare")
    common = common_overrides(data, tmp_path)
    given = []
    for variant in compare_study.variants(
        str(REPO / "configs/retinanet_mbv2_trees.yaml"), str(REPO / "configs/faster_rcnn_mbv2_trees.yaml")
    ):
        if variant.name == "retinanet":
            cfg = runs.study_config(variant, common, tmp_path / "given")
            path = untrained_weights(cfg, tmp_path / f"{variant.name}.safetensors")
            given += ["--weights", str(path)]
    argv = ["--only", "retinanet,torchvision_retinanet", "--sizes", "64,96", "--fps-iters", "1"]
    argv += ["--time-steps", "1", "--time-warmup", "0", "--out", str(out), "--work-dir", str(work)]
    argv += [*given, *common]
    assert tool.main(argv) == 0
    md = (out / "compare.md").read_text()
    rows = table_rows(md, "detector | params")
    assert [r[0] for r in rows] == [
        "RetinaNet, ours (256x4 head)",
        "RetinaNet, torchvision (256x4 head)",
    ]
    for row in rows:
        params, gflops, step_s, fps_model, fps_e2e = (float(x) for x in row[1:6])
        assert params > 0 and gflops > 0 and step_s > 0 and fps_model > 0 and fps_e2e > 0
    assert len(table_rows(md, "detector | 64 px")) == 2 and "Machine:" in md and "Curves cross:" in md
    report = json.loads((out / "compare.json").read_text())
    results = {r["name"]: r for r in report["results"]}
    assert report["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert [r["model"] for r in report["results"]] == ["retinanet", "torchvision_retinanet"]
    for r in report["results"]:
        assert [s["size"] for s in r["by_size"]] == [64, 96] and r["at_train_size"]["size"] == 96
        assert all(s["latency_end_to_end_ms"] > 0 and s["num_images"] == 2 for s in r["by_size"])
    assert results["torchvision_retinanet"]["steps"] == 2 and results["retinanet"]["steps"] is None
    assert [p.name for p in (work / "runs").iterdir()] == ["torchvision_retinanet_s0"]  # only it trained
    # same architecture for our 256x4 RetinaNet and torchvision's: equal parameter and FLOP counts
    ours, tv = results["retinanet"], results["torchvision_retinanet"]
    assert ours["params"] == tv["params"] and ours["gflops"] == pytest.approx(tv["gflops"], rel=0.02)
    # the table's numbers are the evaluator's: the given weights evaluated alone give the same AP and size
    from detector.config import apply_overrides
    from detector.evaluation.report import count_parameters, evaluate_split
    from detector.inference.predict import load_detector

    model, cfg_w, names = load_detector(given[1])
    alone, _ = evaluate_split(model, apply_overrides(cfg_w, common), names, fps_iters=0)
    assert ours["at_train_size"]["voc_ap"] == alone["voc"]["map"] and ours["params"] == count_parameters(
        model
    )
    assert [float(x) for x in rows[0][6:9]] == [
        round(v, 3) for v in (alone["voc"]["map"], alone["voc"]["map_07"], alone["coco"]["AP"])
    ]
    png = out / "compare_speed_accuracy.png"
    assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"
    # compare.html: both detectors' detections on the same test images, everything embedded
    from report_helpers import parse_page

    page = (out / "compare.html").read_text()
    _, _, cards, urls = parse_page(page)
    assert len(cards) == 2 and all(u.startswith("data:") for u in urls)  # the two val images with objects
    for card in cards:
        assert page.count(f'alt="{card["data-name"]}: RetinaNet, ') == 2  # ours and torchvision's


@pytest.mark.slow
def test_compare_over_two_seeds_reports_the_spread_and_reuses_runs_copied_from_another_study(data, tmp_path):
    tool = load_tool("compare")
    common = common_overrides(data, tmp_path)
    argv = ["--only", "retinanet_compact", "--seeds", "0,1", "--sizes", "64,96", "--fps-iters", "1"]
    argv += ["--time-steps", "1", "--time-warmup", "0", *common]
    work = tmp_path / "work"
    assert tool.main([*argv, "--out", str(tmp_path / "a"), "--work-dir", str(work)]) == 0
    md = (tmp_path / "a" / "compare.md").read_text()
    [row] = table_rows(md, "detector | seed 0")
    seed0, seed1 = float(row[1]), float(row[2])
    assert 0.0 <= seed0 <= 1.0 and 0.0 <= seed1 <= 1.0 and row[3].startswith(f"{(seed0 + seed1) / 2:.3f} ± ")
    [result] = json.loads((tmp_path / "a" / "compare.json").read_text())["results"]
    assert [s["seed"] for s in result["seeds"]] == [0, 1]
    for i, size in enumerate([64, 96]):
        runs = [s["by_size"][i] for s in result["seeds"]]
        mean = result["by_size"][i]
        assert mean["size"] == size and mean["voc_ap_seeds"]["values"] == [r["voc_ap"] for r in runs]
        assert mean["voc_ap"] == pytest.approx(sum(r["voc_ap"] for r in runs) / 2)
        assert mean["coco"]["AP"] == pytest.approx(sum(r["coco"]["AP"] for r in runs) / 2)
        # speed is measured once, on the first seed's model
        assert runs[0]["latency_end_to_end_ms"] > 0 and runs[1]["latency_end_to_end_ms"] is None
        assert mean["latency_end_to_end_ms"] == runs[0]["latency_end_to_end_ms"]
    weights = sorted((work / "weights").iterdir())
    assert [p.name for p in weights] == [f"retinanet_compact_s{s}.safetensors" for s in (0, 1)]
    assert weights[0].read_bytes() != weights[1].read_bytes()  # the seeds train different models

    # weights copied into another study's work dir are read back with --reuse, not trained again
    other = tmp_path / "other"
    shutil.copytree(work / "weights", other / "weights")
    assert tool.main([*argv, "--reuse", "--out", str(tmp_path / "b"), "--work-dir", str(other)]) == 0
    assert not (other / "runs").exists()
    [again] = json.loads((tmp_path / "b" / "compare.json").read_text())["results"]
    assert again["at_train_size"]["voc_ap_seeds"] == result["at_train_size"]["voc_ap_seeds"]


@pytest.mark.slow
def test_compare_runs_the_voc_recipe_on_a_generated_vocdevkit(tmp_path):
    """The VOC command of compare's --help (VOC07+12 trainval, VOC07 test, 20 classes, SGD with step decay,
    bf16-mixed, ResNet-50 Faster R-CNN) end to end on a generated VOCdevkit; only the network is shrunk
    (TINY_MODEL), the schedule cut to 2 steps and the configs' GPU accelerator replaced by --device cpu, so a
    VOC run on a GPU meets no untried config path."""
    from conftest import write_tiny_voc

    from detector.config import from_yaml
    from detector.weights import read_metadata

    retinanet_voc = REPO / "configs/retinanet_mbv2_voc0712.yaml"
    classes = load_config(retinanet_voc).data.classes
    devkit = tmp_path / "VOCdevkit"
    for year, split, n, seed in (
        ("VOC2007", "trainval", 3, 0),
        ("VOC2007", "test", 3, 1),
        ("VOC2012", "trainval", 3, 2),
    ):
        write_tiny_voc(
            devkit / year, n_images=n, image_size=(64, 80), classes=classes, split=split, seed=seed
        )
    out, work = tmp_path / "docs", tmp_path / "work"
    argv = ["--config", str(retinanet_voc)]
    argv += ["--faster-rcnn-config", str(REPO / "configs/faster_rcnn_r50_fpn_voc0712.yaml")]
    argv += [
        "--only",
        "retinanet_compact,faster_rcnn",
        "--sizes",
        "64",
        "--fps-iters",
        "1",
        "--device",
        "cpu",
    ]
    argv += ["--time-steps", "1", "--time-warmup", "0", "--out", str(out), "--work-dir", str(work)]
    argv += [
        *TINY_MODEL,
        f"data.root=[{devkit / 'VOC2007'},{devkit / 'VOC2012'}]",
        f"data.eval_root={devkit / 'VOC2007'}",
        "data.size=64",
    ]
    argv += ["data.batch_size=2", "data.workers=0", "train.max_steps=2", "train.warmup_steps=1"]
    assert load_tool("compare").main(argv) == 0
    report = json.loads((out / "compare.json").read_text())
    assert [r["name"] for r in report["results"]] == ["retinanet_compact", "faster_rcnn"]
    for r in report["results"]:
        assert r["steps"] == 2 and r["params"] > 0 and r["train_s_per_step"] > 0
        [at_64] = r["by_size"]
        assert at_64["num_images"] == 3 and 0.0 <= at_64["voc_ap"] <= 1.0  # VOC2007 test only
        trained = from_yaml(read_metadata(Path(r["weights"]))["config"])
        assert (trained.train.precision, trained.train.optimizer, trained.train.schedule) == (
            "bf16-mixed",
            "sgd",
            "step",
        )
        assert len(trained.data.classes) == 20 and trained.data.train_split == "trainval"
    backbones = {
        r["name"]: from_yaml(read_metadata(Path(r["weights"]))["config"]).model.backbone.name
        for r in report["results"]
    }
    assert backbones == {"retinanet_compact": "mobilenet_v2", "faster_rcnn": "resnet50"}


def test_compare_variants_are_the_four_detectors_on_one_schedule(tmp_path):
    found = compare_study.variants(
        str(REPO / "configs/retinanet_mbv2_trees.yaml"), str(REPO / "configs/faster_rcnn_mbv2_trees.yaml")
    )
    cfgs = {v.name: runs.study_config(v, [], tmp_path, seed=3) for v in found}
    assert {n: c.model.name for n, c in cfgs.items()} == {
        "retinanet_compact": "retinanet",
        "retinanet": "retinanet",
        "torchvision_retinanet": "torchvision_retinanet",
        "faster_rcnn": "faster_rcnn",
    }
    schedules = {
        (c.data.size, c.data.batch_size, c.train.max_steps, c.train.lr, c.train.seed) for c in cfgs.values()
    }
    assert schedules == {(416, 4, 300, 0.0006, 3)}
    assert cfgs["retinanet"].model == cfgs["torchvision_retinanet"].model.__class__(
        **{**vars(cfgs["torchvision_retinanet"].model), "name": "retinanet"}
    )
    assert (
        cfgs["retinanet"].model.head.channels == 256 and cfgs["retinanet_compact"].model.head.channels == 128
    )
    assert {c.output.name for c in cfgs.values()} == set(cfgs)


def test_compare_rejects_unknown_detectors_and_bad_sizes(tmp_path, capsys):
    tool = load_tool("compare")
    assert tool.main(["--only", "yolo", "--out", str(tmp_path)]) == 2
    assert "unknown detectors ['yolo']" in capsys.readouterr().err
    assert tool.main(["--sizes", "100"]) == 2
    assert tool.main(["--weights", "nope", "--out", str(tmp_path)]) == 2
    for bad in (["--seeds", "1,1"], ["--seeds", "0,1", "--weights", str(tmp_path / "w")]):
        assert tool.main(bad) == 2
    if not torch.cuda.is_available():
        assert tool.main(["--device", "cuda", "--out", str(tmp_path)]) == 2
        assert "--device cuda: no CUDA device is available" in capsys.readouterr().err


@pytest.mark.slow
def test_ablate_loss_runs_a_small_grid_over_two_seeds(data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "docs"
    argv = ["--ce-alphas", "", "--gammas", "2", "--focal-alphas", "0.25,0.5", "--ohem-ratios", ""]
    argv += [
        "--ohem-budgets",
        "32",
        "--only",
        "fl_g2_a0.25,ohem_b32_nms0.5",
        "--seeds",
        "0,1",
        "--out",
        str(out),
    ]
    argv += ["--work-dir", str(tmp_path / "work"), *common_overrides(data, tmp_path, size=64)]
    assert load_tool("ablate_loss").main(argv) == 0
    md = (out / "ablation.md").read_text()
    rows = table_rows(md, "variant")
    assert [r[:5] for r in rows] == [
        ["fl_g2_a0.25", "FL", "0.25", "2.0", "-"],
        ["ohem_b32_nms0.5", "OHEM (CE)", "-", "0.0", "budget 32, NMS 0.5"],
    ]
    for row in rows:  # mean ± std (min-max) over the two seeds
        m = re.fullmatch(r"([\d.]+) ± ([\d.]+) \(([\d.]+)-([\d.]+)\)", row[5])
        assert m, row[5]
        mean, std, lo, hi = map(float, m.groups())
        assert 0 <= lo <= mean <= hi <= 1 and std >= 0
        assert row[7] == "2/2"
    assert table_rows(md, "gamma | best alpha")[0][:2] == ["2.0", "0.25"]
    report = json.loads((out / "ablation.json").read_text())
    assert [len(r["seeds"]) for r in report["results"]] == [2, 2]
    assert report["results"][0]["prior"] == 0.01
    assert all(s["config"]["train"]["seed"] == s["seed"] for r in report["results"] for s in r["seeds"])
    run_dirs = sorted(p.name for p in (tmp_path / "work" / "runs").iterdir())
    assert run_dirs == ["fl_g2_a0.25_s0", "fl_g2_a0.25_s1", "ohem_b32_nms0.5_s0", "ohem_b32_nms0.5_s1"]
    assert (out / "ablation.png").read_bytes()[:4] == b"\x89PNG"

    # --reuse: the same command with one more seed trains only that seed and reads the others back
    import detector.lit

    real_fit, fitted = detector.lit.fit, []
    monkeypatch.setattr(detector.lit, "fit", lambda cfg: fitted.append(cfg.output.name) or real_fit(cfg))
    seeds_at = argv.index("--seeds")
    again = [*argv, "--reuse"]
    again[seeds_at + 1] = "0,1,2"
    assert load_tool("ablate_loss").main(again) == 0
    assert fitted == ["fl_g2_a0.25_s2", "ohem_b32_nms0.5_s2"]
    reused = json.loads((out / "ablation.json").read_text())["results"]
    for before, after in zip(report["results"], reused, strict=True):
        assert after["seeds"][:2] == before["seeds"]  # same weights, same evaluation, same steps and time
        assert after["seeds"][2]["seed"] == 2
    # a file trained with another config is not taken for this one's
    (fl,) = [v for v in ablation.loss_grid([], [2.0], [0.25], [], []) if v.name == "fl_g2_a0.25"]
    trees = str(REPO / "configs" / "retinanet_mbv2_trees.yaml")
    variant = runs.Variant(fl.name, fl.name, trees, fl.overrides)
    common = argv[argv.index("--work-dir") + 2 :]
    cfg = runs.study_config(variant, common, tmp_path / "work", seed=0, tag="s0")
    assert runs.finished_run(fl.name, cfg).steps == report["results"][0]["seeds"][0]["steps"]
    cfg.train.lr *= 2
    assert runs.finished_run(fl.name, cfg) is None
    assert "trained with another config" in capsys.readouterr().out

    # --table-only: the runs that finished are tabled, the rest listed as not run, nothing is trained
    partial = [*argv, "--table-only"]
    partial[seeds_at + 1] = "1,3"
    partial[partial.index("--only") + 1] = "fl_g2_a0.5,ohem_b32_nms0.5"
    assert load_tool("ablate_loss").main(partial) == 0
    assert fitted == ["fl_g2_a0.25_s2", "ohem_b32_nms0.5_s2"]
    md = (out / "ablation.md").read_text()
    rows = {r[0]: r for r in table_rows(md, "variant")}
    assert set(rows) == {"fl_g2_a0.5", "ohem_b32_nms0.5"}
    assert (rows["fl_g2_a0.5"][5], rows["fl_g2_a0.5"][7]) == ("-", "0/2")
    ohem = rows["ohem_b32_nms0.5"]
    assert ohem[5] == reporting.fmt(reused[1]["seeds"][1]["voc_ap"]) and ohem[7] == "1/2"
    assert "Not run yet: fl_g2_a0.5 (seed 1, 3); ohem_b32_nms0.5 (seed 3)." in md
    assert json.loads((out / "ablation.json").read_text())["results"][1]["seeds"][1]["not_run"] is True


def test_anchor_scores_reports_each_models_scores_of_both_groups(data, tmp_path, capsys):
    """Two untrained detectors score every anchor near their prior (0.01 and 0.5): the tool's quantiles
    come from the models' probabilities, per group, in order; both groups coincide (nothing separates)."""
    at_prior = {}
    for prior in (0.01, 0.5):
        cfg = tiny_config(data, tmp_path, "data.size=96", f"model.loss.prior={prior}")
        at_prior[prior] = untrained_weights(cfg, tmp_path / f"prior{prior}.safetensors")
    out = tmp_path / "docs"
    tool = load_tool("anchor_scores")
    argv = [
        "--weights",
        str(at_prior[0.01]),
        "--out",
        str(out),
        "--weights",
        str(at_prior[0.5]),
        "data.workers=0",
    ]
    assert tool.main(argv) == 0
    rows = table_rows((out / "anchor_scores.md").read_text(), "weights")
    assert [r[0] for r in rows] == ["prior0.01", "prior0.5"]
    for row, prior in zip(rows, (0.01, 0.5), strict=True):
        fg, bg = [float(x) for x in row[1:4]], [float(x) for x in row[4:7]]
        assert fg == sorted(fg) and bg == sorted(bg)
        assert all(abs(p - prior) < 0.2 * prior for p in fg + bg), (prior, fg, bg)
        assert 0 <= float(row[9]) <= 1
    assert rows[0][7] == "0.0%" and rows[1][7] == "100.0%"  # score threshold 0.05: above 0.01, below 0.5
    report = json.loads((out / "anchor_scores.json").read_text())["results"]
    assert report[0]["images"] == 2 and report[0]["background"] > 10 * report[0]["foreground"] > 0
    assert tool.main(["--weights", str(tmp_path / "missing.safetensors")]) == 2
    assert "missing.safetensors" in capsys.readouterr().err


def test_ablate_loss_rejects_bad_grids(tmp_path, capsys):
    tool = load_tool("ablate_loss")
    assert tool.main(["--focal-alphas", "1.5"]) == 2
    assert tool.main(["--only", "nope", "--out", str(tmp_path)]) == 2
    assert "not in the grid" in capsys.readouterr().err


def test_loss_distribution_writes_shares_table_and_figure(data, tmp_path):
    weights = untrained_weights(tiny_config(data, tmp_path, "data.size=96"), tmp_path / "w.safetensors")
    out = tmp_path / "docs"
    tool = load_tool("loss_distribution")
    assert tool.main(["--weights", str(weights), "--out", str(out)]) == 0
    md = (out / "loss_distribution.md").read_text()
    rows = table_rows(md, "gamma")
    assert [r[0] for r in rows] == ["0", "0.5", "1", "2"]
    for row in rows:
        shares = [float(x) for x in row[1:]]
        for share, fraction in zip(shares, [1, 5, 10, 1, 5, 10], strict=True):
            assert fraction - 0.6 <= share <= 100.0  # the hardest x% carry at least x% of the loss
    report = json.loads((out / "loss_distribution.json").read_text())
    assert report["counts"]["images"] == 2 and report["counts"]["foreground"] > 0
    assert report["counts"]["background"] > 10 * report["counts"]["foreground"]
    assert (out / "loss_distribution.png").stat().st_size > 5000


def test_loss_distribution_needs_our_retinanet(data, tmp_path, capsys):
    cfg = tiny_config(data, tmp_path, model="faster_rcnn")
    weights = untrained_weights(cfg, tmp_path / "frcnn.safetensors")
    tool = load_tool("loss_distribution")
    assert tool.main(["--weights", str(weights), "--out", str(tmp_path / "o")]) == 2
    assert "need our RetinaNet" in capsys.readouterr().err
    assert tool.main(["--weights", str(tmp_path / "missing.safetensors")]) == 2
    assert load_tool("anchor_scores").main(["--weights", str(weights), "--out", str(tmp_path / "o")]) == 2
    assert "need our RetinaNet" in capsys.readouterr().err


def test_ablate_loss_reports_a_diverged_run_instead_of_crashing(tmp_path, monkeypatch):
    from detector.lit import NonFiniteLossError

    def diverge(name, cfg, reuse=False):
        raise NonFiniteLossError(f"{name}: non-finite loss for 5 steps in a row")

    monkeypatch.setattr(runs, "train_variant", diverge)
    out = tmp_path / "docs"
    argv = ["--only", "ce,fl_g2_a0.25", "--seeds", "0", "--out", str(out), "--work-dir", str(tmp_path)]
    assert load_tool("ablate_loss").main(argv) == 0
    rows = table_rows((out / "ablation.md").read_text(), "variant")
    assert [(r[0], r[5], r[7]) for r in rows] == [("ce", "-", "0/1"), ("fl_g2_a0.25", "-", "0/1")]
    report = json.loads((out / "ablation.json").read_text())
    assert "non-finite" in report["results"][0]["seeds"][0]["diverged"]


def test_ablate_loss_takes_back_recorded_seeds_of_the_same_config(tmp_path, monkeypatch, capsys):
    """--recorded: a seed recorded with this run's config is tabled as recorded (no weights, no training); one
    recorded with another config is not used; the output records the configs again."""

    def no_training(name, cfg, reuse=False):
        raise AssertionError(f"{name} was trained")

    monkeypatch.setattr(runs, "train_variant", no_training)
    work, out = tmp_path / "work", tmp_path / "docs"
    common = ["train.max_steps=7"]
    (ce,) = [v for v in ablation.loss_grid() if v.name == "ce"]
    trees = str(REPO / "configs" / "retinanet_mbv2_trees.yaml")
    variant = runs.Variant(ce.name, ce.name, trees, ce.overrides)

    def config_of(overrides: list[str], work_dir: Path, seed: int):
        return runs.study_config(variant, overrides, work_dir, seed=seed, tag=f"s{seed}")

    this = config_of(common, work, 0)
    recorded_cfg = runs.training_config(this)
    assert json.loads(json.dumps(recorded_cfg)) == recorded_cfg  # JSON-ready
    assert runs.trained_with(recorded_cfg, config_of(common, tmp_path / "elsewhere", 0))  # location aside
    assert not runs.trained_with(recorded_cfg, config_of(common, work, 1))
    older = copy.deepcopy(recorded_cfg)
    del older["model"]["loss"]["ohem_budget"]  # a field added later takes its default, as for old weights
    assert runs.trained_with(older, this)
    older["model"]["loss"]["retired_option"] = 1  # a field the config no longer has: matches nothing
    assert not runs.trained_with(older, this)
    other = runs.training_config(config_of(["train.max_steps=8"], work, 1))

    def record(seed: int, voc_ap: float, config: dict) -> dict:
        coco = {"AP": voc_ap / 3, "AP50": voc_ap, "AP75": voc_ap / 4}
        return {"seed": seed, "voc_ap": voc_ap, "voc_ap_07": voc_ap, "coco": coco, "config": config}

    recorded = tmp_path / "earlier.json"
    seeds = [record(0, 0.25, recorded_cfg), record(1, 0.5, other)]
    recorded.write_text(json.dumps({"results": [{"name": "ce", "seeds": seeds}]}))
    argv = ["--only", "ce", "--seeds", "0,1", "--table-only", "--out", str(out), "--work-dir", str(work)]
    tool = load_tool("ablate_loss")
    assert tool.main([*argv, "--recorded", str(recorded), *common]) == 0
    assert "with another config: not used" in capsys.readouterr().out
    (row,) = table_rows((out / "ablation.md").read_text(), "variant")
    assert (row[0], row[5], row[7]) == ("ce", "0.250", "1/2")
    report = json.loads((out / "ablation.json").read_text())
    assert report["results"][0]["seeds"][0] == seeds[0] and report["results"][0]["seeds"][1]["not_run"]

    # the output is itself a record: taken back, it gives the same table
    md = (out / "ablation.md").read_text()
    shutil.copy(out / "ablation.json", tmp_path / "again.json")
    assert tool.main([*argv, "--recorded", str(tmp_path / "again.json"), *common]) == 0
    assert (out / "ablation.md").read_text().replace("again.json", "earlier.json") == md

    # a file that cannot answer is an error naming it
    legacy = tmp_path / "legacy.json"
    unmarked = [{**seeds[0], "config": None}]
    legacy.write_text(json.dumps({"results": [{"name": "ce", "seeds": unmarked}]}))
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "other.json").write_text("[]")
    for name, message in [
        ("legacy.json", "ce seed 0 records no config"),
        ("broken.json", "not JSON"),
        ("other.json", "not an ablation.json of this tool"),
        ("missing.json", "cannot read it"),
    ]:
        assert tool.main([*argv, "--recorded", str(tmp_path / name), *common]) == 2
        assert f"--recorded {tmp_path / name}: {message}" in capsys.readouterr().err
