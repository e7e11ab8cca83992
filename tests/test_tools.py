"""The command-line tools end to end (train -> eval -> infer in subprocesses, generated data), and errors."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lit_helpers import make_data, tiny_overrides

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "FOCALDET_NO_COMPILE": "1", "OMP_NUM_THREADS": "2"}


def run_tool(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / f"{name}.py"), *map(str, args)],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )


def load_tool(name: str):
    """Import tools/<name>.py as a module, to call its main(argv) in-process (fast error-path tests)."""
    spec = importlib.util.spec_from_file_location(f"tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """tools/train.py run once for the module: 2 steps of a tiny RetinaNet on generated data."""
    from conftest import write_tiny_voc

    work = tmp_path_factory.mktemp("tools")
    data = make_data(write_tiny_voc, work / "voc")
    proc = run_tool("train", *tiny_overrides(data, work, name="tiny"), cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, data, proc


@pytest.mark.slow
def test_train_prints_a_summary_and_exports_weights(trained):
    work, _, proc = trained
    out = proc.stdout
    assert "training summary" in out
    for row in (
        "optimizer steps",
        "skipped (non-finite) steps",
        "effective batch",
        "best val mAP",
        "weights",
    ):
        assert row in out
    assert (work / "weights" / "tiny.safetensors").is_file()
    run = work / "runs" / "tiny"
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "curves.png").is_file()
    assert (run / "config.yaml").is_file() and (run / "logs" / "metrics.csv").is_file()


@pytest.mark.slow
def test_eval_reports_voc_coco_fps_and_writes_json_and_pr_curves(trained):
    work, _, _ = trained
    out = work / "eval" / "results.json"
    proc = run_tool(
        "eval", "--weights", work / "weights" / "tiny.safetensors", "--out", out, "--fps-iters", "1", cwd=work
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["num_images"] == 2 and report["split"] == "val"
    assert [c["class"] for c in report["voc"]["per_class"]] == ["cat", "dog"]
    assert {"map", "map_07"} <= set(report["voc"]) and {"AP", "AP50", "AP75"} <= set(report["coco"])
    assert report["params"] > 0 and report["speed"]["model_bs1"]["fps"] > 0
    assert sum(c["num_gt"] for c in report["voc"]["per_class"]) > 0
    for png in report["pr_curves"]:
        assert Path(png).is_file()
    for text in ("AP (area)", "AP (07 11-pt)", "COCO metrics", "parameters", "FPS model_bs1"):
        assert text in proc.stdout


@pytest.mark.slow
def test_eval_report_page_and_precision_recall_f1_at_two_ious(trained):
    """`--report` writes report.html whose counts are the results JSON's; P/R/F1 at IoU 0.4 and 0.5."""
    from report_helpers import parse_page

    work, _, _ = trained
    out = work / "eval_report" / "results.json"
    proc = run_tool(
        "eval", "--weights", work / "weights" / "tiny.safetensors", "--out", out, "--fps-iters", "0",
        "--report", "eval.iou=0.4", "eval.score=0.05", cwd=work,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["eval"] == {"iou": 0.4, "score": 0.05} and sorted(report["prf"]) == ["0.4", "0.5"]
    for key, sec in report["prf"].items():
        assert sec["iou"] == float(key) and sec["score"] == 0.05
        assert {"precision", "recall", "f1", "best_f1", "best_f1_score", "map"} <= set(sec)
        assert sec["tp"] + sec["fn"] == sec["num_gt"] == sum(c["num_gt"] for c in report["voc"]["per_class"])
    assert "map40" in report["voc"] and "ap40" in report["voc"]["per_class"][0]
    page = out.with_name("report.html")
    assert report["report_page"] == str(page)
    cells, marks, cards, urls = parse_page(page.read_text())
    assert len(cards) == report["num_images"] and all(u.startswith("data:") for u in urls)
    assert "not readable" not in page.read_text()  # the evaluated image files were found
    for c, row in enumerate(report["prf"]["0.4"]["per_class"], start=1):
        assert (cells[(str(c), "tp")], cells[(str(c), "fp")], cells[(str(c), "missed")]) == (
            row["tp"], row["fp"], row["fn"]
        )
        assert marks[(str(c), "tp")] == row["tp"] and marks[(str(c), "missed")] == row["fn"]
    for text in ("AP40 (area)", "precision / recall / F1 at score >= 0.05", "best F1", "report page:"):
        assert text in proc.stdout


@pytest.mark.slow
def test_infer_draws_writes_coco_json_and_skips_a_non_image(trained):
    work, data, _ = trained
    inputs = work / "inputs"
    inputs.mkdir()
    for name in ("val_0000.jpg", "val_0001.jpg"):
        (inputs / name).write_bytes((data / "JPEGImages" / name).read_bytes())
    (inputs / "notes.txt").write_text("not an image")
    from PIL import Image

    Image.new("L", (70, 50), 128).save(inputs / "gray.png")  # another size and mode
    out = work / "infer"
    proc = run_tool(
        "infer",
        "--weights",
        work / "weights" / "tiny.safetensors",
        inputs,
        "--out",
        out,
        "--score",
        "0.0",
        "model.score_thresh=0.0",  # post-processing from the command line: the tiny model's scores all count
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "notes.txt" in proc.stderr and "skipped" in proc.stderr
    assert sorted(p.name for p in out.glob("*.png")) == ["gray.png", "val_0000.png", "val_0001.png"]
    assert Image.open(out / "gray.png").size == (70, 50)  # drawn on the original image
    results = json.loads((out / "detections.json").read_text())
    assert {r["image_id"] for r in results} == {"val_0000", "val_0001", "gray"}  # every image has detections
    for r in results:
        assert r["image_id"] in {"val_0000", "val_0001", "gray"} and r["category_id"] in (1, 2)
        x, y, w, h = r["bbox"]
        assert w >= 0 and h >= 0 and 0 <= x <= 80 and 0 <= y <= 64 and 0.0 <= r["score"] <= 1.0
    assert "3 image(s) processed" in proc.stdout


def test_train_rejects_an_unknown_key_naming_it(capsys):
    assert load_tool("train").main(["train.epochz=3"]) == 2
    assert "epochz" in capsys.readouterr().err


def test_train_missing_config_or_resume_file(capsys, tmp_path):
    train = load_tool("train")
    assert train.main(["--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err
    assert train.main(["--resume", str(tmp_path / "gone.ckpt")]) == 2
    assert "gone.ckpt" in capsys.readouterr().err


def test_eval_and_infer_missing_weights_file(capsys, tmp_path):
    missing = tmp_path / "missing.safetensors"
    assert load_tool("eval").main(["--weights", str(missing)]) == 2
    assert "weights file not found" in capsys.readouterr().err
    assert load_tool("infer").main(["--weights", str(missing), str(tmp_path)]) == 2
    assert "weights file not found" in capsys.readouterr().err


def test_a_pickle_is_refused_as_weights(capsys, tmp_path):
    import torch

    fake = tmp_path / "model.safetensors"
    torch.save({"w": torch.zeros(1)}, fake)
    assert load_tool("eval").main(["--weights", str(fake)]) == 2
    assert "not a safetensors file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("tool", "argv", "message"),
    [
        ("eval", [], "--weights"),
        ("infer", ["--weights", "w.safetensors"], "IMAGES_OR_FOLDERS"),
        ("infer", ["--weights", "w.safetensors", "x.png", "--score", "2"], "--score"),
        ("eval", ["--weights", "w.safetensors", "--fps-iters", "-1"], "--fps-iters"),
        ("demo", ["--no-such-option"], "--no-such-option"),
        ("eval", ["--weights", "w.safetensors", "--report", "--report-images", "0"], "--report-images"),
    ],
)
def test_bad_arguments_are_usage_errors(tool, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_tool(tool).main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------------------- the helpers behind the tools


def test_coco_results_are_xywh_in_original_pixels():
    import numpy as np

    from detector.evaluation.report import to_coco_results

    dets = [
        {"boxes": np.array([[10.0, 20.0, 50.0, 80.0]]), "scores": np.array([0.9]), "labels": np.array([2])},
        {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, dtype=int)},
    ]
    assert to_coco_results(["a", "b"], dets) == [
        {"image_id": "a", "category_id": 2, "bbox": [10.0, 20.0, 40.0, 60.0], "score": 0.9}
    ]


def test_expand_image_paths_walks_folders_and_reports_missing_paths(tmp_path):
    from detector.inference.predict import expand_image_paths

    (tmp_path / "d" / "sub").mkdir(parents=True)
    for rel in ("d/b.png", "d/a.jpg", "d/sub/c.txt", "d/.hidden.png", "single.png"):
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    files, problems = expand_image_paths(
        [tmp_path / "d", tmp_path / "single.png", tmp_path / "nope", tmp_path / "empty"]
    )
    assert [f.relative_to(tmp_path).as_posix() for f in files] == [
        "d/a.jpg",
        "d/b.png",
        "d/sub/c.txt",
        "single.png",
    ]
    assert len(problems) == 2 and "nope" in problems[0] and "no files" in problems[1]


def test_ground_truth_from_records_matches_targets_mapped_back(tiny_voc):
    import numpy as np
    import torch

    from detector.data.datamodule import collate_detection
    from detector.data.ground_truth import (
        detections_to_original,
        ground_truth_from_dataset,
        ground_truth_to_original,
    )
    from detector.data.transforms import build_eval_transforms
    from detector.data.voc import concat_voc

    root = tiny_voc(n_images=3, image_size=(90, 150), difficult_every=2)
    dataset = concat_voc([root], "train", classes=["cat", "dog"], transforms=build_eval_transforms(64))
    images, targets = collate_detection([dataset[i] for i in range(len(dataset))])
    by_id = ground_truth_from_dataset(dataset)
    mapped = ground_truth_to_original(targets)
    for t, m in zip(targets, mapped, strict=True):
        rec = by_id[t["image_id"]]
        np.testing.assert_allclose(m["boxes"], rec["boxes"], atol=1e-3)
        assert (m["labels"] == rec["labels"]).all() and (m["difficult"] == rec["difficult"]).all()
    assert any(rec["difficult"].any() for rec in by_id.values())
    # A detection exactly on a letterboxed ground-truth box maps back onto the annotation.
    outs = [
        {"boxes": t["boxes"], "scores": torch.ones(len(t["boxes"])), "labels": t["labels"]} for t in targets
    ]
    for det, t in zip(detections_to_original(outs, targets), targets, strict=True):
        np.testing.assert_allclose(det["boxes"], by_id[t["image_id"]]["boxes"], atol=1e-3)


def test_evaluating_on_data_with_other_classes_is_refused():
    import torch

    from detector.config import ConfigError, load_config
    from detector.evaluation.report import evaluate_split

    cfg = load_config(None, ["data.classes=[tree]"])
    with pytest.raises(ConfigError, match="data.classes"):
        evaluate_split(torch.nn.Linear(1, 1), cfg, ["cat", "dog"])
