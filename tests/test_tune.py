"""Recipe selection (tools/tune.py): a variant trained per seed, scored on validation, recorded with its
command; finished runs are taken back; --base re-scores recorded weights with post-processing overrides."""

from __future__ import annotations

import json

import pytest
from lit_helpers import disable_loss_compile, make_data, tiny_overrides
from test_cli import load_tool


@pytest.mark.slow
def test_a_variant_is_trained_scored_on_val_recorded_and_taken_back(tiny_voc, tmp_path, monkeypatch, capsys):
    from conftest import write_tiny_voc

    from detector.evaluation.report import evaluate_split
    from detector.inference.predict import load_detector

    disable_loss_compile(monkeypatch)
    data = make_data(write_tiny_voc, tmp_path / "voc")
    common = [o for o in tiny_overrides(data, tmp_path) if not o.startswith("output.")]
    common += ["model.score_thresh=0.0", "data.test_split=train"]
    tool = load_tool("tune")
    out, work = tmp_path / "docs", tmp_path / "work"
    argv = ["--name", "tiny", "--note", "a tiny run", "--out", str(out), "--work-dir", str(work), *common]
    assert tool.main([*argv, "--seeds", "0,1", "--test"]) == 0
    record = json.loads((out / "accuracy.json").read_text())["tiny"]
    assert record["command"].startswith("python tools/tune.py --name tiny --note 'a tiny run'")
    assert sorted(record["seeds"]) == ["0", "1"] and record["val_ap50"]["n"] == 2
    model, cfg, names = load_detector(work / "weights" / "tiny_s1.safetensors")
    report, _ = evaluate_split(model, cfg, names, "val", fps_iters=0)
    assert (
        record["seeds"]["1"]["val"]["ap50"] == report["voc"]["map"]
    )  # the recorded score is the val split's
    assert record["seeds"]["1"]["val"]["images"] == 2 and record["seeds"]["1"]["test"]["images"] == 4
    assert record["seeds"]["0"]["steps"] == 2

    import detector.lit

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(detector.lit, "fit", no_training)
    assert tool.main([*argv, "--seeds", "1"]) == 0  # taken back from its weights
    assert (
        json.loads((out / "accuracy.json").read_text())["tiny"]["seeds"]["1"]["val"]["ap50"]
        == report["voc"]["map"]
    )

    assert (
        tool.main(
            [
                "--name",
                "nms",
                "--base",
                "tiny",
                "--seeds",
                "1",
                "--out",
                str(out),
                "--work-dir",
                str(work),
                "model.nms_thresh=0.3",
                "model.detections_per_img=1",
            ]
        )
        == 0
    )
    rescored = json.loads((out / "accuracy.json").read_text())
    assert list(rescored) == ["tiny", "nms"]  # every variant kept, in the order tried
    assert rescored["nms"]["seeds"]["1"]["train_seconds"] == rescored["tiny"]["seeds"]["1"]["train_seconds"]
    table = capsys.readouterr().out
    assert "| `nms` |" in table and "| `tiny` |" in table


def test_base_takes_only_post_processing_overrides(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_tool("tune").main(["--name", "x", "--base", "y", "train.lr=0.1", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "only post-processing overrides apply; got train.lr=0.1" in err


def test_concurrent_tune_processes_keep_each_others_records(tmp_path):
    """Two processes recording 100 variants each into one accuracy.json at the same time: all 200 survive."""
    import subprocess
    import sys

    code = (
        "import sys, time; from pathlib import Path; from detector.study.tune import _record\n"
        "out, tag = Path(sys.argv[1]), sys.argv[2]\n"
        "(out / f'ready_{tag}').touch()\n"
        "while len(list(out.glob('ready_*'))) < 2: time.sleep(0.001)\n"  # both imported: start together
        "for i in range(100): _record(out, f'{tag}{i}', {'i': i, 'pad': 'x' * 2000})\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), tag]) for tag in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    recorded = json.loads((tmp_path / "accuracy.json").read_text())
    assert sorted(recorded) == sorted(f"{tag}{i}" for tag in "ab" for i in range(100))
    assert all(recorded[f"b{i}"]["i"] == i for i in range(100))
