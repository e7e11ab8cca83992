"""The one command line of every tool: overrides anywhere, comma lists that cannot swallow them, one error
path.

Every script in tools/ is covered: the config-taking ones print the config they resolved (`--print-config`)
with key=value overrides put before, between and after their options; the others refuse overrides. Nothing
trains here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from detector import cli
from detector.config import load_config

REPO = Path(__file__).resolve().parents[1]
TOOLS = sorted(p.stem for p in (REPO / "tools").glob("*.py"))
CONFIG_FREE = {"prepare_trees", "bench_model", "bench_focal", "check_kernel", "bench_tiling", "bench_matcher"}
# Three overrides a test spreads over the command line, and what the resolved config must then hold.
OVERRIDES = ("data.batch_size=3", "train.seed=7", "model.score_thresh=0.2")
EXPECTED = {("data", "batch_size"): 3, ("train", "seed"): 7, ("model", "score_thresh"): 0.2}


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"cli_tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """Exported weights of a tiny random RetinaNet (its config says data.size=64, batch_size=2)."""
    from lit_helpers import tiny_config

    from detector.lit import DetectorModule, export_weights

    out = tmp_path_factory.mktemp("cli")
    cfg = tiny_config(out / "data", out)
    return export_weights(DetectorModule(cfg, ["cat", "dog"]), out / "tiny.safetensors")


def option_groups(tool: str, weights: Path, tmp: Path) -> tuple[list[str], list[str]]:
    """Two groups of real options of `tool`: overrides go before, between and after them."""
    w = str(weights)
    return {
        "train": (["--config", cli.DEFAULT_CONFIG], []),
        "eval": (["--weights", w, "--split", "val"], ["--out", str(tmp / "r.json"), "--fps-iters", "0"]),
        "infer": (["--weights", w, "a.png"], ["--out", str(tmp / "out"), "b.png", "--score", "0.5"]),
        "demo": (["--out", str(tmp / "demo")], ["--score", "0.2", "--fps-iters", "0"]),
        "compare": (["--sizes", "256,320"], ["--only", "faster_rcnn,retinanet", "--seeds", "0,1"]),
        "ablate_loss": (["--only", "fl_g2_a0.25", "--seeds", "0,1"], ["--gammas", "2", "--ohem-budgets", ""]),
        "loss_distribution": (["--weights", w, "--gammas", "0,2"], ["--max-images", "2"]),
        "anchor_scores": (["--weights", w], ["--max-images", "2", "--weights", w]),
        "fit_anchors": (
            ["--bases", "16,32", "--top", "3"],
            ["--out", str(tmp / "fit.json"), "--max-images", "2"],
        ),
        "export_onnx": (["--weights", w], ["--out", str(tmp / "m.onnx"), "--batch", "1"]),
        "bench_onnx": (["--batch", "1,2"], ["--repeats", "1"]),
        "convert_dataset": ([str(tmp / "src"), str(tmp / "dst"), "--to", "coco"], ["--splits", "train,test"]),
        "tune": (["--name", "x", "--seeds", "0,1"], ["--out", str(tmp / "acc"), "--test"]),
    }[tool]


def test_every_tool_is_covered() -> None:
    config_tools = {"train", "eval", "infer", "demo", "compare", "ablate_loss", "loss_distribution"}
    config_tools |= {"anchor_scores", "export_onnx", "bench_onnx", "convert_dataset", "fit_anchors", "tune"}
    assert set(TOOLS) == config_tools | CONFIG_FREE


@pytest.mark.parametrize("tool", sorted(set(TOOLS) - CONFIG_FREE))
@pytest.mark.parametrize("where", ["before", "between", "after", "everywhere"])
def test_overrides_anywhere_reach_the_config(tool, where, weights, tmp_path, capsys) -> None:
    first, second = option_groups(tool, weights, tmp_path)
    a, b, c = OVERRIDES
    argv = {
        "before": [a, b, c, *first, *second],
        "between": [*first, a, b, c, *second],
        "after": [*first, *second, a, b, c],
        "everywhere": [a, *first, b, *second, c],
    }[where]
    assert load_tool(tool).main([*argv, "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    for (section, key), value in EXPECTED.items():
        assert printed[section][key] == value, (tool, where, section, key)


def test_weights_are_the_default_config(weights, capsys) -> None:
    """A tool given weights starts from the config stored in them; --config replaces only the data section."""
    assert load_tool("eval").main(["--weights", str(weights), "--print-config"]) == 0
    stored = yaml.safe_load(capsys.readouterr().out)
    assert stored["data"]["size"] == 64 and stored["model"]["fpn"]["channels"] == 16
    trees = str(REPO / "configs" / "retinanet_mbv2_trees.yaml")
    assert load_tool("eval").main(["--config", trees, "--weights", str(weights), "--print-config"]) == 0
    mixed = yaml.safe_load(capsys.readouterr().out)
    assert mixed["data"]["size"] == load_config(trees).data.size != 64
    assert mixed["model"]["fpn"]["channels"] == 16  # the tensors decide the architecture


@pytest.mark.parametrize("tool", sorted(CONFIG_FREE))
def test_config_free_tools_refuse_overrides(tool, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load_tool(tool).main(["data.root=x", "--help"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "takes no key=value config overrides" in err


@pytest.mark.parametrize("tool", sorted(set(TOOLS) - CONFIG_FREE))
def test_one_error_path(tool, weights, tmp_path, capsys) -> None:
    """A bad override and an unknown option both end in exit code 2 and one line naming the problem."""
    first, _ = option_groups(tool, weights, tmp_path)
    assert load_tool(tool).main([*first, "data.no_such_key=1", "--print-config"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and "no_such_key" in err
    with pytest.raises(SystemExit) as exit_info:
        load_tool(tool).main([*first, "--no-such-option"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--no-such-option" in err


def test_split_overrides_leaves_option_values_alone() -> None:
    parser = cli.ToolParser(None)
    parser.add_argument("--out")
    parser.add_argument("--flag", action="store_true")
    overrides, rest = cli.split_overrides(
        parser, ["--out", "a.b=c", "--flag", "data.root=d", "--out=x.y=z", "model.loss.gamma=1"]
    )
    assert overrides == ["data.root=d", "model.loss.gamma=1"]
    assert rest == ["--out", "a.b=c", "--flag", "--out=x.y=z"]


def test_comma_lists() -> None:
    assert cli.comma_list(int)("256,320, 416") == [256, 320, 416]
    assert cli.comma_list(float, allow_empty=True)("") == []
    with pytest.raises(Exception, match="comma list"):
        cli.comma_list(int)("")
    with pytest.raises(Exception, match="'a'"):
        cli.comma_list(int)("1,a")


def test_device_auto_and_missing_cuda(monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.resolve_device("auto") == "cpu" and cli.resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="no CUDA device"):
        cli.resolve_device("cuda")
    with pytest.raises(ValueError, match="expected auto, cpu"):
        cli.resolve_device("gpu0")
