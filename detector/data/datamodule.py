"""LightningDataModule for VOC, COCO and YOLO data: one or several folders, letterboxed uint8 batches.

The reader is chosen by ``data.format`` (or detected, see :mod:`detector.data.formats`); class names are
``data.classes``, else the dataset's own. Images without objects stay in every split as negatives unless
``data.skip_empty_train`` drops them from training.

Every batch has one fixed input size (the letterbox square), so the model builds its anchors once per size.
Training order and augmentation are functions of (seed, epoch, index) alone: the sampler shuffles with a
generator seeded by (seed, epoch), and each item's augmentation is reseeded from (seed, epoch, index) before
it is loaded. So no two items or workers repeat each other, the worker count does not change what is drawn,
and the train loader is resumable: Lightning saves its position in each checkpoint, and a run resumed
mid-epoch sees exactly the batches an uninterrupted run sees.

Mosaic (``data.mosaic`` = p): with probability p a training item is a mosaic of 4 items, itself and 3 others
drawn by the item's own generator (seeded by (seed, epoch, index) too), each augmented and letterboxed to S,
placed in a 2S x 2S canvas, from which an S x S window centred in the middle half is cut. Objects keep their
scale (crowns are small); boxes are shifted and clipped with the transforms' visibility rule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler, Subset

from detector.data.augment_options import check_mosaic
from detector.data.formats import build_dataset, dataset_class_names, drop_empty
from detector.data.transforms import build_eval_transforms, build_train_transforms, crop_boxes

__all__ = [
    "EpochSeededSampler",
    "ResumableLoader",
    "SeededAugmentation",
    "DetectionDataModule",
    "collate_detection",
    "item_seed",
]

_MOSAIC_STREAM = 0x6D6F7361  # tags the mosaic generator, so its draws are unrelated to the item's transforms


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


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one item of one epoch, well mixed (SeedSequence), so nearby keys are unrelated."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0] >> 1)


class SeededAugmentation(Dataset):
    """Wraps a training dataset: takes `(epoch, index)` keys and reseeds the augmentations from
    (seed, epoch, index) before loading item `index`, so what an item looks like depends on neither the worker
    that loads it nor what was loaded before. `mosaic` > 0: that probability of a 4-image mosaic (module
    docstring); 0 draws nothing extra, so items are the same as without the option."""

    def __init__(self, dataset: Dataset, seed: int, mosaic: float = 0.0) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self.mosaic = check_mosaic(mosaic)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int] | int) -> Any:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        seed = item_seed(self.seed, epoch, index)
        if self.mosaic > 0:
            rng = np.random.default_rng([seed, _MOSAIC_STREAM])
            if rng.random() < self.mosaic:
                return self._mosaic(index, seed, rng)
        _reseed_transforms(self.dataset, seed)
        return self.dataset[index]

    def _load(self, index: int, seed: int) -> tuple[torch.Tensor, dict[str, Any]]:
        _reseed_transforms(self.dataset, seed)
        return self.dataset[index]

    def _mosaic(self, index: int, seed: int, rng: np.random.Generator) -> tuple[torch.Tensor, dict[str, Any]]:
        """Item `index` and 3 others (other indices when there are any) in a 2x2 canvas, cut to S x S."""
        n = len(self)
        others = rng.integers(0, n - 1, 3) if n > 1 else np.zeros(3, np.int64)
        others = [int(i) + int(n > 1 and i >= index) for i in others]  # skip `index` itself
        seeds = [seed] + [int(s) for s in rng.integers(0, 2**63 - 1, 3, dtype=np.int64)]
        quadrants = rng.permutation(4)
        pieces = [self._load(i, s) for i, s in zip([index, *others], seeds, strict=True)]
        size = int(pieces[0][0].shape[-1])
        for (image, target), i in zip(pieces, [index, *others], strict=True):
            if tuple(image.shape) != (3, size, size) or "boxes" not in target:
                raise ValueError(
                    f"data.mosaic needs letterboxed training items with boxes; item {i} "
                    f"({target.get('image_id', '?')}) is {tuple(image.shape)}"
                )
        canvas = torch.empty(3, 2 * size, 2 * size, dtype=torch.uint8)
        boxes, labels, difficult, offsets = [], [], [], []
        for (image, target), quadrant in zip(pieces, quadrants, strict=True):
            oy, ox = (int(quadrant) // 2) * size, (int(quadrant) % 2) * size
            canvas[:, oy : oy + size, ox : ox + size] = image
            boxes.append(target["boxes"].numpy().reshape(-1, 4) + np.array([ox, oy, ox, oy], np.float32))
            labels.append(target["labels"].numpy())
            difficult.append(target["difficult"].numpy())
            offsets.append((ox, oy))
        left, top = (int(v) for v in rng.integers(0, size + 1, 2))  # window centre in the middle half
        kept = crop_boxes(
            np.concatenate(boxes).astype(np.float32),
            np.concatenate(labels).astype(np.int64),
            np.concatenate(difficult).astype(bool),
            left,
            top,
            (size, size),
        )
        out = dict(pieces[0][1])
        out["boxes"] = torch.from_numpy(np.ascontiguousarray(kept[0])).reshape(-1, 4)
        out["labels"] = torch.from_numpy(np.ascontiguousarray(kept[1]))
        out["difficult"] = torch.from_numpy(np.ascontiguousarray(kept[2]))
        if "pad" in out:  # the item's own content still maps back to its original pixels
            ox, oy = offsets[0]
            out["pad"] = out["pad"] + torch.tensor([ox - left, oy - top], dtype=torch.float32)
        out["mosaic_ids"] = tuple(str(t.get("image_id", "?")) for _, t in pieces)
        window = canvas[:, top : top + size, left : left + size].contiguous()
        return window, out


class EpochSeededSampler(DistributedSampler):
    """Shuffles with a generator seeded by seed + epoch (Lightning calls `set_epoch` every epoch) and yields
    `(epoch, index)` keys for SeededAugmentation. Under DDP each rank takes its own share; being a
    DistributedSampler, Lightning keeps it instead of wrapping it. `resume` skips the items a checkpointed run
    had already trained on in its last epoch."""

    def __init__(self, dataset: Dataset, seed: int, shuffle: bool = True) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        replicas = dist.get_world_size() if distributed else 1
        rank = dist.get_rank() if distributed else 0
        super().__init__(dataset, num_replicas=replicas, rank=rank, shuffle=shuffle, seed=int(seed))
        self._skip = 0

    def resume(self, epoch: int, skip_items: int) -> None:
        """Start the next pass at `epoch`, after its first `skip_items` items (those already trained on)."""
        self.set_epoch(int(epoch))
        self._skip = int(skip_items)

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        skip, self._skip = self._skip, 0
        epoch = self.epoch
        for position, index in enumerate(super().__iter__()):
            if position >= skip:
                yield epoch, index


class ResumableLoader(DataLoader):
    """The train loader, stateful in Lightning's sense: each checkpoint stores its position (epoch, batches
    already trained on in that epoch) and Lightning restores it before iterating, so a run resumed from a
    mid-epoch checkpoint continues with the next batch instead of starting the epoch over."""

    def __init__(self, *args: Any, batches_done: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batches_done = batches_done

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.sampler.epoch), "batches_done": int(self._batches_done())}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, done = int(state["epoch"]), int(state["batches_done"])
        if done >= len(self):  # saved at the end of an epoch: the next one starts from its first batch
            epoch, done = epoch + 1, 0
        self.sampler.resume(epoch, done * int(self.batch_size))


class DetectionDataModule(L.LightningDataModule):
    """Train/val/test loaders over the dataset folders of a DataConfig (root, format, splits, classes, ...).

    ``class_names`` (e.g. those of trained weights) fixes the class list every split is read with; by default
    it is ``data.classes``, else the training split's own names (COCO categories, YOLO data.yaml names).
    """

    def __init__(self, cfg: Any, seed: int = 0, class_names: Sequence[str] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.seed = int(seed)
        if class_names is not None and list(cfg.classes) and list(cfg.classes) != list(class_names):
            from detector.config import ConfigError

            raise ConfigError(
                f"data.classes = {list(cfg.classes)} differ from the classes the weights were trained on "
                f"({list(class_names)}); evaluate on data with the same class list"
            )
        self._class_names: list[str] | None = list(class_names) if class_names is not None else None
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def class_names(self) -> list[str]:
        """The class list (label i is ``class_names[i - 1]``), read from the dataset once when not given."""
        if self._class_names is None:
            self._class_names = dataset_class_names(self.cfg)
        return list(self._class_names)

    def _dataset(self, split: str, train: bool) -> Dataset:
        transforms = (
            build_train_transforms(self.cfg, seed=self.seed)
            if train
            else build_eval_transforms(self.cfg.size)
        )
        dataset = build_dataset(self.cfg, split, transforms, classes=self.class_names)
        if train and getattr(self.cfg, "skip_empty_train", False):
            drop_empty(dataset)
        if len(dataset) == 0:
            roots = [getattr(d, "root", "?") for d in dataset.datasets]
            raise ValueError(f"split {split!r} of {[str(r) for r in roots]} holds no images")
        return dataset

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = self._dataset(self.cfg.train_split, train=True)
        if stage in (None, "fit", "validate") and self.val_dataset is None:
            self.val_dataset = self._dataset(self.cfg.val_split, train=False)
        if stage in (None, "test", "predict") and self.test_dataset is None:
            self.test_dataset = self._dataset(self.cfg.test_split, train=False)

    def _loader_options(self) -> dict[str, Any]:
        workers = int(self.cfg.workers)
        return {
            "batch_size": int(self.cfg.batch_size),
            "num_workers": workers,
            "persistent_workers": workers > 0,
            "collate_fn": collate_detection,
            "pin_memory": torch.cuda.is_available(),
        }

    @staticmethod
    def _set_up(dataset: Dataset | None, what: str) -> Dataset:
        if dataset is None:
            raise RuntimeError(f"DetectionDataModule.{what}_dataloader() called before setup()")
        return dataset

    def _eval_loader(self, dataset: Dataset | None, what: str) -> DataLoader:
        return DataLoader(self._set_up(dataset, what), shuffle=False, **self._loader_options())

    def _batches_done(self) -> int:
        """Batches of the current epoch already trained on (Lightning's count; 0 outside a fit)."""
        trainer = self.trainer
        if trainer is None:
            return 0
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)

    def train_dataloader(self) -> DataLoader:
        dataset = self._set_up(self.train_dataset, "train")
        options = self._loader_options()
        return ResumableLoader(
            SeededAugmentation(dataset, self.seed, mosaic=float(getattr(self.cfg, "mosaic", 0.0))),
            sampler=EpochSeededSampler(dataset, self.seed),
            drop_last=len(dataset) > options["batch_size"],
            # Worker base seeds come from this generator, not the global one, whose state a resume restores.
            generator=torch.Generator().manual_seed(self.seed),
            batches_done=self._batches_done,
            **options,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_dataset, "val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_dataset, "test")
