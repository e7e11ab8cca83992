"""Config loading: YAML onto typed defaults, dotted overrides, errors that name the key, shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from detector.config import Config, ConfigError, apply_overrides, from_yaml, load_config, split_roots, to_yaml

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
EXPECTED = {
    "retinanet_mbv2_trees.yaml",
    "faster_rcnn_mbv2_trees.yaml",
    "retinanet_r50_fpn_voc0712.yaml",
    "faster_rcnn_r50_fpn_voc0712.yaml",
    "retinanet_mbv2_voc0712.yaml",
}


def test_the_five_experiment_configs_are_shipped():
    assert {p.name for p in CONFIGS} >= EXPECTED


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_round_trips(path):
    cfg = load_config(path)
    assert cfg.model.name in ("retinanet", "faster_rcnn")
    assert cfg.output.name == path.stem  # the run and its weights are named after the file
    assert from_yaml(to_yaml(cfg)) == cfg


def test_shipped_recipes_match_their_descriptions():
    trees = load_config(CONFIGS[0].parent / "retinanet_mbv2_trees.yaml")
    assert (trees.model.backbone.name, trees.data.root, trees.data.classes) == (
        "mobilenet_v2",
        "data/trees",
        ["tree"],
    )
    assert trees.model.anchors.sizes[0] == 16.0 and trees.data.vflip
    frcnn = load_config(CONFIGS[0].parent / "faster_rcnn_mbv2_trees.yaml")
    assert frcnn.model.name == "faster_rcnn" and frcnn.train == trees.train and frcnn.data == trees.data
    for name in ("retinanet_r50_fpn_voc0712", "faster_rcnn_r50_fpn_voc0712", "retinanet_mbv2_voc0712"):
        path = CONFIGS[0].parent / f"{name}.yaml"
        voc = load_config(path)
        assert split_roots(voc.data, "trainval") == ["data/VOCdevkit/VOC2007", "data/VOCdevkit/VOC2012"]
        assert split_roots(voc.data, "test") == ["data/VOCdevkit/VOC2007"]  # VOC07 test: 2012 has none public
        assert (voc.data.train_split, voc.data.test_split, len(voc.data.classes)) == ("trainval", "test", 20)
        assert (voc.train.optimizer, voc.train.lr, voc.data.batch_size, voc.train.epochs) == (
            "sgd",
            0.01,
            16,
            12,
        )


def test_yaml_then_dotted_overrides(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  epochs: 5\n  lr: 0.02\ndata:\n  root: [a, b]\n")
    cfg = load_config(path, ["train.epochs=3", "data.batch_size=2", "model.anchors.sizes=[8,16,32,64,128]"])
    assert isinstance(cfg, Config)
    assert (cfg.train.epochs, cfg.train.lr, cfg.data.batch_size) == (3, 0.02, 2)
    assert cfg.model.anchors.sizes == [8.0, 16.0, 32.0, 64.0, 128.0]
    assert split_roots(cfg.data, cfg.data.train_split) == ["a", "b"]
    assert split_roots(cfg.data, cfg.data.test_split) == ["a", "b"]  # no eval_root: the same folders
    assert cfg.model.head.channels == Config().model.head.channels  # untouched keys keep their defaults


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["train.epochz=3"], "epochz"),
        (["data.batch_size=two"], "batch_size"),
        (["model.name=yolo"], "model.name"),
        (["data.size=100"], "data.size"),
        (["train.optimizer=adam"], "train.optimizer"),
        (["train.precision=8-bit"], "train.precision"),
        (["model.anchors.sizes=[1,2]"], "model.anchors.sizes"),
        (["model.loss.normalize=anchor"], "model.loss.normalize"),
        (["model.loss.ohem_nms=1.5"], "model.loss.ohem_nms"),
        (["data.eval_root=[]"], "data.eval_root"),
        (["data.root=[]"], "data.root"),
        (["data.color_strength=0"], "data.color_strength"),
        (["data.color_strength=5"], "data.color_strength"),
    ],
)
def test_bad_override_is_a_config_error_naming_the_key(overrides, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(None, overrides)


def test_unknown_key_in_yaml_names_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "learning_rate" in str(err.value) and str(path) in str(err.value)


def test_bad_value_in_yaml_names_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  workers: many\n")
    with pytest.raises(ConfigError, match="workers"):
        load_config(path)


def test_missing_file_and_malformed_override():
    with pytest.raises(ConfigError, match="not found"):
        load_config("no/such/config.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.epochs"])


def test_apply_overrides_to_a_loaded_config():
    cfg = load_config(None, ["train.lr=0.5"])
    out = apply_overrides(cfg, ["data.size=64", "output.export=last"])
    assert (out.data.size, out.train.lr, out.output.export) == (64, 0.5, "last")
    assert cfg.data.size != 64  # the input config is not modified
    with pytest.raises(ConfigError, match="sizee"):
        apply_overrides(cfg, ["data.sizee=64"])
    with pytest.raises(ConfigError, match="data.size"):
        apply_overrides(cfg, ["data.size=65"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(cfg, ["data.size"])
