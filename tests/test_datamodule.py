"""DetectionDataModule and collate: letterboxed uint8 batches, list targets, several roots, workers."""

from __future__ import annotations

import pytest
import torch

from detector.config import DataConfig
from detector.data.datamodule import DetectionDataModule, collate_detection

SIZE = 64


def _cfg(root, workers=0, batch_size=2, **kw) -> DataConfig:
    return DataConfig(
        root=root,
        classes=["cat", "dog"],
        train_split="train",
        val_split="val",
        test_split="val",
        size=SIZE,
        batch_size=batch_size,
        workers=workers,
        vflip=True,
        scale_jitter=0.2,
        **kw,
    )


@pytest.fixture
def voc_root(tiny_voc):
    root = tiny_voc(n_images=5, image_size=(90, 120), split="train", difficult_every=3, seed=1)
    tiny_voc(n_images=3, image_size=(120, 80), split="val", root=root, seed=2)
    return root


def _check_batch(images, targets, batch_size):
    assert images.dtype == torch.uint8 and images.shape == (batch_size, 3, SIZE, SIZE)
    assert isinstance(targets, list) and len(targets) == batch_size
    for t in targets:
        assert t["boxes"].dtype == torch.float32 and t["boxes"].shape[1:] == (4,)
        assert ((t["boxes"] >= 0) & (t["boxes"] <= SIZE)).all()
        assert t["labels"].dtype == torch.int64 and ((t["labels"] >= 1) & (t["labels"] <= 2)).all()
        assert len(t["difficult"]) == len(t["labels"]) == len(t["boxes"])
        assert t["scale"].shape == (2,) and t["pad"].shape == (2,)
        assert isinstance(t["image_id"], str) and len(t["orig_size"]) == 2


def test_collate_stacks_images_and_lists_targets():
    batch = [(torch.full((3, 8, 8), i, dtype=torch.uint8), {"image_id": str(i)}) for i in range(3)]
    images, targets = collate_detection(batch)
    assert images.shape == (3, 3, 8, 8) and images.dtype == torch.uint8
    assert [t["image_id"] for t in targets] == ["0", "1", "2"] and images[2].eq(2).all()
    with pytest.raises(ValueError, match="share one size"):
        collate_detection(batch + [(torch.zeros(3, 8, 9, dtype=torch.uint8), {"image_id": "odd"})])
    with pytest.raises(ValueError, match="empty batch"):
        collate_detection([])


def test_train_val_loaders(voc_root):
    dm = DetectionDataModule(_cfg(str(voc_root)))
    assert dm.num_classes == 2 and dm.class_names == ["cat", "dog"]
    with pytest.raises(RuntimeError, match="before setup"):
        dm.train_dataloader()
    dm.setup("fit")
    train = list(dm.train_dataloader())
    assert len(train) == 2  # 5 images, batch 2, drop_last
    for images, targets in train:
        _check_batch(images, targets, 2)
    ids = [t["image_id"] for _, ts in train for t in ts]
    assert len(set(ids)) == 4 and all(i.startswith("train_") for i in ids)
    val = list(dm.val_dataloader())
    assert [len(ts) for _, ts in val] == [2, 1]  # no drop_last, no shuffle
    assert [t["image_id"] for _, ts in val for t in ts] == ["val_0000", "val_0001", "val_0002"]
    for images, targets in val:
        _check_batch(images, targets, len(targets))
        assert all(t["pad"].tolist() == [0.0, 0.0] for t in targets)
    dm.setup("test")
    assert sum(len(ts) for _, ts in dm.test_dataloader()) == 3


def test_small_train_set_keeps_its_only_batch(tiny_voc):
    root = tiny_voc(n_images=2, split="train")
    tiny_voc(n_images=1, split="val", root=root)
    dm = DetectionDataModule(_cfg(str(root), batch_size=4))
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 1 and batches[0][0].shape[0] == 2


def test_two_roots_concatenate(voc_root, tiny_voc):
    other = tiny_voc(n_images=3, image_size=(70, 70), split="train", seed=5)
    tiny_voc(n_images=2, split="val", root=other, seed=6)
    dm = DetectionDataModule(_cfg([str(voc_root), str(other)], batch_size=3))
    dm.setup(None)
    assert len(dm.train_dataset) == 8 and len(dm.val_dataset) == 5
    sizes = {tuple(t["orig_size"]) for _, ts in dm.val_dataloader() for t in ts}
    assert sizes == {(120, 80), (160, 192)}
    for images, targets in dm.train_dataloader():
        _check_batch(images, targets, 3)


def test_one_worker_loads_and_is_reproducible(voc_root):
    def first_epoch(seed):
        dm = DetectionDataModule(_cfg(str(voc_root), workers=1), seed=seed)
        dm.setup("fit")
        loader = dm.train_dataloader()
        assert loader.persistent_workers and loader.num_workers == 1
        return list(loader)

    a, b = first_epoch(0), first_epoch(0)
    for (ia, ta), (ib, tb) in zip(a, b, strict=True):
        _check_batch(ia, ta, 2)
        assert torch.equal(ia, ib)
        assert all(torch.equal(x["boxes"], y["boxes"]) for x, y in zip(ta, tb, strict=True))


def test_bad_root_is_a_clear_error(tmp_path, voc_root):
    with pytest.raises(ValueError, match="data.root is empty"):
        DetectionDataModule(_cfg([])).setup("fit")
    with pytest.raises(ValueError, match="data.eval_root is empty .reading split 'val'"):
        DetectionDataModule(_cfg(str(voc_root), eval_root=[])).setup("test")
    dm = DetectionDataModule(_cfg(str(tmp_path / "missing")))
    with pytest.raises(FileNotFoundError, match="missing"):
        dm.setup("fit")


def test_eval_root_holds_the_val_and_test_splits_and_root_the_training_split(tiny_voc, tmp_path):
    """VOC07+12: train on both years' trainval, validate and test on VOC2007 test, which VOC2012 lacks."""
    voc07, voc12 = tmp_path / "VOC2007", tmp_path / "VOC2012"
    tiny_voc(n_images=3, split="train", root=voc07, seed=1)
    tiny_voc(n_images=2, split="val", root=voc07, seed=2)
    tiny_voc(n_images=4, split="train", root=voc12, seed=3)
    with pytest.raises(FileNotFoundError, match="VOC2012.*val"):  # without eval_root: val read from both
        DetectionDataModule(_cfg([str(voc07), str(voc12)])).setup("test")
    dm = DetectionDataModule(_cfg([str(voc07), str(voc12)], eval_root=str(voc07)))
    dm.setup(None)
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (7, 2, 2)


class _SameImage(torch.utils.data.Dataset):
    """Four copies of one image through one train transform: only the augmentation can tell them apart."""

    def __init__(self, transforms):
        self.transforms = transforms
        g = torch.Generator().manual_seed(0)
        self.image = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8, generator=g)

    def __len__(self):
        return 4

    def __getitem__(self, index):
        target = {
            "boxes": torch.tensor([[2.0, 3.0, 30.0, 20.0]]),
            "labels": torch.tensor([1]),
            "difficult": torch.tensor([False]),
            "image_id": str(index),
            "orig_size": (40, 50),
        }
        return self.transforms(self.image, target)


def _same_image_loader(workers: int, seed: int = 0) -> torch.utils.data.DataLoader:
    from detector.data.datamodule import EpochSeededSampler, SeededAugmentation
    from detector.data.transforms import build_train_transforms

    dataset = _SameImage(build_train_transforms(_cfg("unused", color_jitter=True), seed=seed))
    return torch.utils.data.DataLoader(
        SeededAugmentation(dataset, seed),
        sampler=EpochSeededSampler(dataset, seed),
        batch_size=1,
        num_workers=workers,
        collate_fn=collate_detection,
    )


def _epoch(loader, epoch: int) -> list[tuple[str, torch.Tensor]]:
    loader.sampler.set_epoch(epoch)
    return [(targets[0]["image_id"], images[0]) for images, targets in loader]


def test_augmentation_depends_on_seed_epoch_and_item_not_on_workers():
    one, two = _same_image_loader(workers=0), _same_image_loader(workers=2)
    for epoch in (0, 1):
        a, b = _epoch(one, epoch), _epoch(two, epoch)
        assert [i for i, _ in a] == [i for i, _ in b]  # the same order ...
        assert all(torch.equal(x, y) for (_, x), (_, y) in zip(a, b, strict=True))  # ... and the same pixels
        # Four copies of one image: only the augmentation tells them apart, and no two items repeat.
        assert len({im.numpy().tobytes() for _, im in a}) == 4
    e0, e1 = dict(_epoch(one, 0)), dict(_epoch(one, 1))
    assert [i for i, _ in _epoch(one, 0)] != [i for i, _ in _epoch(one, 1)]  # a new order each epoch
    assert not any(torch.equal(e0[k], e1[k]) for k in e0)  # and a new augmentation of each item
    other_seed = dict(_epoch(_same_image_loader(workers=0, seed=1), 0))
    assert not any(torch.equal(e0[k], other_seed[k]) for k in e0)


def test_train_loader_resumes_mid_epoch_with_the_batches_an_uninterrupted_run_sees(voc_root):
    from detector.data.datamodule import ResumableLoader

    def loader(done: int) -> ResumableLoader:
        dm = DetectionDataModule(_cfg(str(voc_root), batch_size=2, color_jitter=True), seed=3)
        dm.setup("fit")
        out = dm.train_dataloader()
        out._batches_done = lambda: done  # stands in for Lightning's progress counter
        return out

    def ids_and_pixels(batches):
        return [([t["image_id"] for t in ts], images) for images, ts in batches]

    straight = loader(0)
    assert isinstance(straight, ResumableLoader) and len(straight) == 2  # 5 images, batch 2, drop_last
    epochs = []
    for epoch in range(3):
        straight.sampler.set_epoch(epoch)
        epochs.append(ids_and_pixels(straight))
    # A checkpoint after the first batch of epoch 1 ...
    state = loader(1).state_dict()
    state["epoch"] = 1
    resumed = loader(0)
    resumed.load_state_dict(state)
    after = ids_and_pixels(resumed)  # ... continues with the second batch of epoch 1
    resumed.sampler.set_epoch(2)
    after += ids_and_pixels(resumed)
    expected = epochs[1][1:] + epochs[2]
    assert [ids for ids, _ in after] == [ids for ids, _ in expected]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(after, expected, strict=True))
    # A checkpoint at the end of epoch 0 resumes at the start of epoch 1.
    at_end = loader(0)
    at_end.load_state_dict({"epoch": 0, "batches_done": 2})
    assert [ids for ids, _ in ids_and_pixels(at_end)] == [ids for ids, _ in epochs[1]]
