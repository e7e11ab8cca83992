"""Run an exported focaldet ONNX model with onnxruntime behind the detector interface.

`OnnxDetector(path)(images uint8 [B, 3, S, S]) -> list[dict(boxes, scores, labels)]`, like the PyTorch
model in eval mode, with class names, input size and config read from the model's metadata. It is an
`nn.Module` so that prediction (`detector.inference.predict.predict`, tiling included), evaluation and the
speed helpers written for the PyTorch detector take it unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detector.export.onnx import FORMAT_VERSION, require_onnx, unpad

__all__ = ["OnnxDetector"]


class OnnxDetector(nn.Module):
    """An exported model in an onnxruntime CPU session; call it on uint8 batches like the PyTorch detector.

    The weights live in the session; the module's one empty parameter only answers callers that ask
    `next(model.parameters()).device` (always the CPU: the session runs there whatever `.to()` says).
    """

    def __init__(self, path: str | Path, threads: int | None = None, spin: bool = True) -> None:
        super().__init__()
        require_onnx("onnxruntime")
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.path}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        if not spin:  # idle pool threads sleep instead of spinning: fairer when sharing cores (benchmarks)
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types for bad files
            raise ValueError(f"{self.path}: not a loadable ONNX model ({err})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("focaldet.format") != FORMAT_VERSION:
            raise ValueError(
                f"{self.path}: not a focaldet ONNX export (metadata focaldet.format is "
                f"{meta.get('focaldet.format')!r}, expected {FORMAT_VERSION!r}); "
                "export with tools/export_onnx.py"
            )
        self.metadata: dict[str, str] = dict(meta)
        self.class_names: list[str] = list(json.loads(meta["focaldet.class_names"]))
        self.size = int(meta["focaldet.input_size"])
        self.score_thresh = float(meta["focaldet.score_thresh"])
        self.config_yaml = meta.get("focaldet.config", "")
        batch_dim = self.session.get_inputs()[0].shape[0]
        self.fixed_batch = batch_dim if isinstance(batch_dim, int) else None
        self.device_marker = nn.Parameter(torch.empty(0), requires_grad=False)
        self.eval()

    def num_parameters(self) -> int:
        """Elements in the graph's initializers: the weights (plus small folded constants such as anchors)."""
        require_onnx("onnx")
        import onnx

        graph = onnx.load(str(self.path)).graph
        return sum(int(np.prod(t.dims)) for t in graph.initializer)

    def config(self) -> Any:
        """The training config stored at export time (a `detector.config.Config`)."""
        from detector.config import from_yaml

        if not self.config_yaml:
            raise ValueError(f"{self.path}: no config in the metadata")
        return from_yaml(self.config_yaml)

    def run(self, images: torch.Tensor | np.ndarray) -> list[np.ndarray]:
        """Raw outputs (boxes, scores, labels, num_detections) for uint8 images [B, 3, S, S]."""
        array = images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[1:] != (3, self.size, self.size):
            raise ValueError(
                f"{self.path}: expects uint8 images [B, 3, {self.size}, {self.size}], "
                f"got {array.dtype} {tuple(array.shape)}"
            )
        if self.fixed_batch is not None and array.shape[0] != self.fixed_batch:
            if self.fixed_batch != 1:
                raise ValueError(
                    f"{self.path}: exported for batch {self.fixed_batch}, got {array.shape[0]} "
                    "(re-export with --dynamic-batch)"
                )
            outs = [self.run(array[i : i + 1]) for i in range(array.shape[0])]  # batch-1 model: one by one
            return [np.concatenate(parts) for parts in zip(*outs, strict=True)]
        return self.session.run(None, {"images": np.ascontiguousarray(array)})

    def forward(self, images: torch.Tensor | np.ndarray) -> list[dict[str, torch.Tensor]]:
        """Detections per image in the S x S input frame (boxes, scores, labels 1..C), by score."""
        return unpad(*self.run(images))
