"""LightningDataModule for VOC-layout data: one or several year folders, letterboxed batches of uint8 images.

Every batch has one fixed input size (the letterbox square), so the model builds its anchors once per size.
Augmentation randomness is seeded: the loader's generator fixes the shuffling and each worker reseeds the
transforms from its own torch seed, so workers never repeat each other and a run is reproducible.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset, get_worker_info

from detector.data.transforms import build_eval_transforms, build_train_transforms
from detector.data.voc import concat_voc

__all__ = ["VOCDataModule", "collate_detection", "seed_worker_transforms"]


def collate_detection(
    batch: Sequence[tuple[torch.Tensor, dict[str, Any]]],
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Stack letterboxed uint8 images into [B, 3, S, S] and keep the targets as a list of dicts."""
    if not batch:
        raise ValueError("collate_detection got an empty batch")
    images = [item[0] for item in batch]
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) != 1:
        ids = [t.get("image_id", "?") for _, t in batch]
        raise ValueError(
            f"images of one batch must share one size (letterbox them first); got shapes {sorted(shapes)} "
            f"for images {ids}"
        )
    return torch.stack(images), [item[1] for item in batch]


def _normalise_roots(root: Any) -> list[str]:
    """`data.root` (a path or a list of paths) as a list of strings."""
    roots = [root] if isinstance(root, (str, os.PathLike)) else list(root)
    if not roots:
        raise ValueError("data.root is empty: give a VOC year folder or a list of them")
    return [os.fspath(r) for r in roots]


def _reseed_transforms(dataset: Dataset, seed: int) -> None:
    """Find the transforms inside (nested) datasets and reseed those that can be reseeded."""
    if isinstance(dataset, ConcatDataset):
        for sub in dataset.datasets:
            _reseed_transforms(sub, seed)
    elif isinstance(dataset, Subset):
        _reseed_transforms(dataset.dataset, seed)
    else:
        transforms = getattr(dataset, "transforms", None)
        if hasattr(transforms, "reseed"):
            transforms.reseed(seed)


def seed_worker_transforms(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: reseed the augmentations from the worker's own (distinct) torch seed."""
    info = get_worker_info()
    if info is not None:
        _reseed_transforms(info.dataset, info.seed % 2**63)


class VOCDataModule(L.LightningDataModule):
    """Train/val/test loaders over the VOC folders of a DataConfig (root, splits, classes, size, ...)."""

    def __init__(self, cfg: Any, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.seed = int(seed)
        self.roots = _normalise_roots(cfg.root)
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None

    @property
    def num_classes(self) -> int:
        return len(self.cfg.classes)

    @property
    def class_names(self) -> list[str]:
        return list(self.cfg.classes)

    def _dataset(self, split: str, train: bool) -> Dataset:
        transforms = (
            build_train_transforms(self.cfg, seed=self.seed)
            if train
            else build_eval_transforms(self.cfg.size)
        )
        dataset = concat_voc(self.roots, split, classes=list(self.cfg.classes), transforms=transforms)
        if len(dataset) == 0:
            raise ValueError(f"split {split!r} of {self.roots} holds no images")
        return dataset

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = self._dataset(self.cfg.train_split, train=True)
        if stage in (None, "fit", "validate") and self.val_dataset is None:
            self.val_dataset = self._dataset(self.cfg.val_split, train=False)
        if stage in (None, "test", "predict") and self.test_dataset is None:
            self.test_dataset = self._dataset(self.cfg.test_split, train=False)

    def _loader(self, dataset: Dataset | None, train: bool, what: str) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"VOCDataModule.{what}_dataloader() called before setup()")
        workers = int(self.cfg.workers)
        batch_size = int(self.cfg.batch_size)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            drop_last=train and len(dataset) > batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            collate_fn=collate_detection,
            worker_init_fn=seed_worker_transforms if workers > 0 else None,
            generator=torch.Generator().manual_seed(self.seed),
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, train=True, what="train")

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, train=False, what="val")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, train=False, what="test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, train=False, what="predict")
