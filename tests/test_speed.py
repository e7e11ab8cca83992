"""Speed measurement: counts, modes, shapes and the pipeline stages, with a tiny detector-shaped module."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import detector.data.letterbox as letterbox
from detector.evaluation.speed import measure_end_to_end_fps, measure_fps


class TinyDetector(torch.nn.Module):
    """Obeys the eval-mode detector interface: uint8 [B,3,S,S] in, a list of boxes/scores/labels dicts out."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.calls: list[tuple[tuple[int, ...], torch.dtype, bool, bool]] = []

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        inference = torch.is_inference_mode_enabled()
        self.calls.append((tuple(images.shape), images.dtype, self.training, inference))
        features = self.conv(images.float() / 255.0)
        size = images.shape[-1]
        box = torch.tensor([[size / 4, size / 4, size / 2, size / 2]])
        return [
            {"boxes": box.clone(), "scores": features[i].mean().sigmoid().reshape(1),
             "labels": torch.ones(1, dtype=torch.int64)}
            for i in range(images.shape[0])
        ]


STAT_KEYS = ("fps", "latency_ms_median", "latency_ms_p90", "latency_ms_mean", "latency_ms_min")


def test_measure_fps_runs_warmup_plus_iters_in_eval_inference_mode():
    model = TinyDetector().train()
    result = measure_fps(model, size=64, batch_size=3, warmup=2, iters=4)
    assert len(model.calls) == 6
    assert all(call == ((3, 3, 64, 64), torch.uint8, False, True) for call in model.calls)
    assert model.training  # mode restored
    for key in STAT_KEYS:
        assert result[key] > 0 and np.isfinite(result[key])
    assert result["latency_ms_min"] <= result["latency_ms_median"] <= result["latency_ms_p90"]
    # throughput is images over the summed batch latencies
    assert result["fps"] == pytest.approx(3 * 1e3 / result["latency_ms_mean"], rel=1e-9)
    assert (result["batch_size"], result["size"], result["device"], result["iters"]) == (3, 64, "cpu", 4)


def test_measure_fps_argument_errors():
    model = TinyDetector()
    with pytest.raises(ValueError, match="amp=True needs a CUDA device"):
        measure_fps(model, 32, amp=True)
    with pytest.raises(ValueError, match="iters"):
        measure_fps(model, 32, iters=0)
    with pytest.raises(ValueError, match="warmup"):
        measure_fps(model, 32, warmup=-1)
    with pytest.raises(ValueError, match="batch_size"):
        measure_fps(model, 32, batch_size=0)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            measure_fps(model, 32, device="cuda")


def write_images(tmp_path, sizes):
    paths = []
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        path = tmp_path / f"img{i}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_end_to_end_decodes_letterboxes_runs_and_maps_boxes_back(tmp_path, monkeypatch):
    sizes = [(120, 200), (90, 60), (64, 64)]
    paths = write_images(tmp_path, sizes)
    mapped = []
    original = letterbox.boxes_to_original

    def spy(boxes, scale, pad, orig_size):
        out = original(boxes, scale, pad, orig_size)
        mapped.append((tuple(orig_size), out))
        return out

    monkeypatch.setattr(letterbox, "boxes_to_original", spy)
    model = TinyDetector()
    result = measure_end_to_end_fps(model, paths, size=64, batch_size=2, warmup=1, iters=3)
    # 1 warm-up + 3 timed batches of 2, cycling over the 3 images; every batch letterboxed to 64 x 64
    assert len(model.calls) == 4
    assert all(call == ((2, 3, 64, 64), torch.uint8, False, True) for call in model.calls)
    assert result["images"] == 6 and result["iters"] == 3
    for key in (*STAT_KEYS, "decode_ms", "preprocess_ms", "model_ms", "postprocess_ms"):
        assert result[key] >= 0 and np.isfinite(result[key]), key
    total_stages = sum(result[f"{k}_ms"] for k in ("decode", "preprocess", "model", "postprocess"))
    assert total_stages <= result["latency_ms_mean"] * 1.0001 + 1e-6  # stages are inside the batch time
    # boxes were mapped into each image's original frame: the first image (120 x 200) has scale 64/200 = .32,
    # so the dummy box [16, 16, 32, 32] maps to about [50, 50, 100, 100] (y is off by the rounding of 120*.32)
    assert [m[0] for m in mapped[:4]] == [(120, 200), (90, 60), (64, 64), (120, 200)]
    torch.testing.assert_close(mapped[0][1], torch.tensor([[50.0, 50.0, 100.0, 100.0]]), rtol=0.02, atol=0)


def test_end_to_end_accepts_tensors_and_defaults_to_one_pass():
    images = [torch.randint(0, 256, (3, 50, 80), dtype=torch.uint8) for _ in range(5)]
    model = TinyDetector()
    result = measure_end_to_end_fps(model, images, size=32, batch_size=2, warmup=0)
    assert result["iters"] == 3 and result["images"] == 6  # ceil(5 / 2) batches
    assert len(model.calls) == 3


def test_end_to_end_errors_name_the_problem(tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    from detector.data.images import ImageReadError

    with pytest.raises(ImageReadError, match="notes.jpg"):
        measure_end_to_end_fps(TinyDetector(), [bad], size=32, warmup=0)
    with pytest.raises(ValueError, match="images is empty"):
        measure_end_to_end_fps(TinyDetector(), [], size=32)
    with pytest.raises(ValueError, match="amp=True needs a CUDA device"):
        measure_end_to_end_fps(TinyDetector(), [torch.zeros(3, 8, 8, dtype=torch.uint8)], size=32, amp=True)
    with pytest.raises(ValueError, match=r"uint8 \[3, H, W\]"):
        measure_end_to_end_fps(TinyDetector(), [torch.zeros(3, 8, 8)], size=32, warmup=0)
