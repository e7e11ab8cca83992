"""Shared by the training/tool tests: a tiny CPU config over generated VOC data, and a compile switch."""

from __future__ import annotations

from pathlib import Path

from detector.config import Config, load_config

TINY_MODEL = [
    "model.backbone.pretrained=false",
    "model.backbone.mobilenet_c5_layer=17",
    "model.fpn.channels=16",
    "model.head.channels=16",
    "model.head.depth=1",
    "model.head.norm=none",  # GroupNorm on the 1x1 P7 of a 64 px input fails at batch 1 (1 value per group)
    "model.anchors.sizes=[16,32,48,64,96]",
]


def tiny_overrides(data_root: Path, out: Path, name: str = "tiny", model: str = "retinanet") -> list[str]:
    """Overrides for a seconds-long CPU run: 64 px, batch 2, no workers, no progress bar."""
    out = Path(out)
    return [
        f"model.name={model}",
        *TINY_MODEL,
        f"data.root={data_root}",
        "data.classes=[cat,dog]",
        "data.train_split=train",
        "data.val_split=val",
        "data.test_split=val",
        "data.size=64",
        "data.batch_size=2",
        "data.workers=0",
        "train.epochs=1",
        "train.max_steps=2",
        "train.warmup_steps=1",
        "train.optimizer=adamw",
        "train.lr=0.001",
        "train.log_every_n_steps=1",
        "trainer.accelerator=cpu",
        f"output.dir={out / 'runs'}",
        f"output.name={name}",
        f"output.weights_dir={out / 'weights'}",
        "output.progress_bar=false",
    ]


def tiny_config(
    data_root: Path, out: Path, *extra: str, name: str = "tiny", model: str = "retinanet"
) -> Config:
    return load_config(None, tiny_overrides(data_root, out, name, model) + list(extra))


def make_data(write_tiny_voc, root: Path) -> Path:
    """Four 64x80 training images and two validation images, two classes."""
    write_tiny_voc(root, n_images=4, image_size=(64, 80), split="train", seed=0)
    write_tiny_voc(root, n_images=2, image_size=(64, 80), split="val", seed=1, difficult_every=3)
    return root


def disable_loss_compile(monkeypatch) -> None:
    """Skip torch.compile of the CPU focal loss (tens of seconds per process); use the eager fused path."""
    from detector.losses import focal

    monkeypatch.setattr(focal._compiled_cpu, "enabled", False)
