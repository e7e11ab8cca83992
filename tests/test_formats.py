"""Format choice and detection, class names from the dataset, and negatives kept through the datamodule for
VOC, COCO and YOLO alike."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from format_writers import tiny_coco, write_yolo_split

from detector.config import ConfigError, DataConfig, load_config
from detector.data.datamodule import DetectionDataModule
from detector.data.formats import DatasetFormatUnknownError, build_dataset, dataset_class_names, detect_format
from detector.data.records import DataFormatError

SIZE = 64


def _cfg(root: Path, **kw) -> DataConfig:
    base = {"root": str(root), "size": SIZE, "batch_size": 2, "workers": 0, "color_jitter": False}
    return DataConfig(**{**base, **kw})


def _yolo(root: Path) -> Path:
    write_yolo_split(root, "train", {"a.png": ((40, 60), "0 0.5 0.5 0.3 0.3\n"), "neg.png": ((40, 60), None)})
    write_yolo_split(root, "val", {"v.png": ((40, 60), "1 0.5 0.5 0.3 0.3\n")})
    return root


def test_detect_format(tmp_path: Path, tiny_voc) -> None:
    voc = tiny_voc(n_images=1)
    tiny_coco(tmp_path / "coco")
    yolo = _yolo(tmp_path / "yolo")
    assert detect_format(voc, "train") == "voc"
    assert detect_format(tmp_path / "coco", "annotations/train.json") == "coco"
    assert detect_format(yolo, "train") == "yolo"
    (tmp_path / "odd" / "pictures").mkdir(parents=True)
    with pytest.raises(
        DatasetFormatUnknownError,
        match=r"odd: cannot tell the dataset format for split 'train'.*"
        r"set data.format=voc\|coco\|yolo",
    ):
        detect_format(tmp_path / "odd", "train")
    with pytest.raises(FileNotFoundError, match="dataset folder not found"):
        detect_format(tmp_path / "absent", "train")


def test_data_format_is_checked_and_overrides_detection(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.format = 'kitti': expected voc, coco, yolo or null"):
        load_config(None, ["data.format=kitti"])
    with pytest.raises(ConfigError, match="data.classes"):
        load_config(None, ["data.classes=[a,a]"])
    yolo = _yolo(tmp_path / "yolo")
    with pytest.raises(FileNotFoundError, match=r"yolo: not a VOC year folder"):  # told VOC: read as VOC
        build_dataset(_cfg(yolo, format="voc", classes=["cat", "dog"]), "train")


def test_class_names_come_from_the_dataset_unless_given(tmp_path: Path, tiny_voc) -> None:
    tiny_coco(tmp_path / "coco")
    coco = _cfg(tmp_path / "coco", train_split="annotations/train.json")
    assert dataset_class_names(coco) == ["cat", "dog", "bird"]
    assert dataset_class_names(_cfg(_yolo(tmp_path / "yolo"))) == ["cat", "dog"]
    assert dataset_class_names(_cfg(tmp_path / "coco", classes=["dog"])) == ["dog"]
    with pytest.raises(DataFormatError, match=r"data.classes is empty: VOC data .* needs its class names"):
        dataset_class_names(_cfg(tiny_voc(n_images=1)))
    # The weights' class names fix the list; data.classes, when given, must agree with them.
    dm = DetectionDataModule(
        _cfg(tmp_path / "coco", train_split="annotations/train.json"), class_names=["bird", "cat"]
    )
    assert dm.class_names == ["bird", "cat"] and dm.num_classes == 2
    with pytest.raises(ConfigError, match=r"data.classes = \['cat'\] differ from the classes the weights"):
        DetectionDataModule(_cfg(tmp_path / "coco", classes=["cat"]), class_names=["dog"])


def _all_items(loader) -> list[dict]:
    return [t for _, targets in loader for t in targets]


@pytest.mark.parametrize("fmt", ["voc", "coco", "yolo"])
def test_images_without_objects_stay_in_training_and_evaluation(tmp_path: Path, tiny_voc, fmt: str) -> None:
    if fmt == "voc":
        root = tiny_voc(n_images=3, boxes_per_image=(0, 1), seed=4)  # seed 4: one image has no objects
        tiny_voc(n_images=2, boxes_per_image=(0, 0), split="val", root=root)
        cfg = _cfg(root, classes=["cat", "dog"], val_split="val", test_split="val")
    elif fmt == "coco":
        tiny_coco(tmp_path / "c")
        tiny_coco(tmp_path / "c", split="val")
        splits = {"train_split": "annotations/train.json", "val_split": "annotations/val.json"}
        cfg = _cfg(tmp_path / "c", test_split="annotations/val.json", **splits)
    else:
        cfg = _cfg(_yolo(tmp_path / "y"), val_split="val", test_split="val")
    dm = DetectionDataModule(cfg)
    dm.setup("fit")
    n_train = len(dm.train_dataset)
    n_empty = sum(len(r.labels) == 0 for r in dm.train_dataset.records)
    assert n_empty >= 1
    trained = _all_items(dm.train_dataloader())
    # drop_last only when there is more than one batch; every item of the kept batches is there, negatives too
    assert sum(len(t["labels"]) == 0 for t in trained) >= (1 if len(trained) == n_train else 0)
    assert all(t["boxes"].shape[1:] == (4,) and t["boxes"].dtype == torch.float32 for t in trained)
    evaluated = _all_items(dm.val_dataloader())
    assert len(evaluated) == len(dm.val_dataset)
    skip = DetectionDataModule(type(cfg)(**{**cfg.__dict__, "skip_empty_train": True}))
    skip.setup("fit")
    assert len(skip.train_dataset) == n_train - n_empty
    assert all(len(r.labels) for r in skip.train_dataset.records)
    assert len(skip.val_dataset) == len(dm.val_dataset)  # evaluation keeps its negatives


def test_yolo_training_loader_yields_the_negative(tmp_path: Path) -> None:
    dm = DetectionDataModule(_cfg(_yolo(tmp_path / "y"), val_split="val", test_split="val"))
    dm.setup("fit")
    items = _all_items(dm.train_dataloader())
    assert len(items) == 2 and sorted(len(t["labels"]) for t in items) == [0, 1]
    assert {t["image_id"] for t in items} == {"a", "neg"}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["coco"])  # YOLO names reach the datamodule the same way (tested above)
def test_training_takes_its_classes_from_a_coco_or_yolo_dataset(tmp_path: Path, fmt: str) -> None:
    """fit() on a dataset focaldet has never seen, data.classes left empty: the exported weights carry the
    dataset's own class names."""
    from lit_helpers import tiny_config

    from detector.inference.predict import load_detector
    from detector.lit import fit

    if fmt == "coco":
        tiny_coco(tmp_path / "d")
        tiny_coco(tmp_path / "d", split="val")
        splits = [
            "data.train_split=annotations/train.json",
            "data.val_split=annotations/val.json",
            "data.test_split=annotations/val.json",
        ]
        names = ["cat", "dog", "bird"]
    else:
        _yolo(tmp_path / "d")
        splits = ["data.train_split=train", "data.val_split=val", "data.test_split=val"]
        names = ["cat", "dog"]
    cfg = tiny_config(tmp_path / "d", tmp_path, "data.classes=[]", *splits)
    result = fit(cfg)
    _, _, class_names = load_detector(result.weights)
    assert class_names == names and result.steps == 1  # one epoch of one batch (drop_last)
