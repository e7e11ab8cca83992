#!/usr/bin/env python
"""onnxruntime vs PyTorch inference speed of the exported RetinaNet, side by side in one process.

Both run the whole detector (uint8 batch in, detections out: normalization, network, decoding, NMS) on
the same letterboxed real images (deepforest tiles when installed, else a synthetic pattern), interleaved
repeat by repeat, with the same thread count; the outputs are checked to match before timing. Without
--weights the model comes from --config with its classifier bias calibrated so that about 50 detections per
image pass the score threshold, so NMS does realistic work.

    python tools/bench_onnx.py [--weights W | --config C] [--size 416] [--batch 1 4] [--repeats 9]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.cli import fail, print_table  # noqa: E402
from detector.export import calibrate_scores  # noqa: E402


def cpu_name() -> str:
    """The CPU model name from /proc/cpuinfo (platform's guess elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def bench_images(size: int, count: int) -> tuple[torch.Tensor, str]:
    """`count` letterboxed uint8 images [count, 3, S, S] and where they came from."""
    from detector.data.images import read_image
    from detector.export import synthetic_images
    from detector.inference import letterbox_batch

    spec = importlib.util.find_spec("deepforest")
    if spec is not None and spec.submodule_search_locations:
        data = Path(next(iter(spec.submodule_search_locations))) / "data"
        files = [
            data / n for n in ("OSBS_029.png", "SOAP_061.png", "2019_YELL_2_541000_4977000_image_crop.png")
        ]
        files = [f for f in files if f.is_file()]
        if files:
            images = [read_image(files[i % len(files)]) for i in range(count)]
            return letterbox_batch(images, size)[0], "deepforest tiles"
    return synthetic_images(size, batch=count), "synthetic pattern"


def timed(fn, repeats: int) -> list[float]:
    """Wall-clock seconds of `repeats` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--weights", help="safetensors file written by tools/train.py")
    source.add_argument("--config", default="configs/retinanet_mbv2_trees.yaml", help="config (no --weights)")
    parser.add_argument("--size", type=int, help="input size (default: data.size of the config)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4], help="batch sizes (default 1 4)")
    parser.add_argument("--repeats", type=int, default=9, help="timed repeats per figure (default 9)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads for both")
    args = parser.parse_args(argv)

    from detector.config import load_config, to_yaml
    from detector.export import (
        OnnxNotInstalledError,
        compare_detections,
        export_onnx,
        model_cut_offs,
        require_onnx,
    )
    from detector.inference import load_detector
    from detector.models import build_model
    from detector.onnx_runtime import OnnxDetector

    try:
        require_onnx("onnx", "onnxruntime")
        if args.weights:
            model, cfg, class_names = load_detector(args.weights)
            origin = str(args.weights)
        else:
            cfg = load_config(args.config)
            class_names = list(cfg.data.classes)
            model = build_model(cfg.model, len(class_names)).eval()
            origin = f"{args.config} (classifier bias calibrated)"
    except (OnnxNotInstalledError, FileNotFoundError, ValueError) as err:
        return fail(err)
    if cfg.model.name != "retinanet":
        return fail(NotImplementedError("the ONNX benchmark times the RetinaNet (a dynamic-batch export)"))
    torch.set_num_threads(args.threads)
    size = args.size or cfg.data.size
    images, image_source = bench_images(size, max(args.batch))
    if not args.weights:
        calibrate_scores(model, images, above=50)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(
            model, Path(tmp) / "model.onnx", size, class_names, to_yaml(cfg), dynamic_batch=True
        )
        detector = OnnxDetector(path, threads=args.threads, spin=False)  # no spinning into PyTorch's turn
        rows = []
        for batch in args.batch:
            x = images[:batch]
            with torch.inference_mode():
                stats = compare_detections(model(x), detector(x), **model_cut_offs(model))
            pt, ox = [], []
            for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits both alike
                with torch.inference_mode():
                    pt += timed(lambda x=x: model(x), 1)
                ox += timed(lambda x=x: detector(x), 1)
            pt_s, ox_s = statistics.median(pt), statistics.median(ox)
            rows.append(
                (
                    batch,
                    f"{pt_s * 1e3:.1f}",
                    f"{batch / pt_s:.2f}",
                    f"{ox_s * 1e3:.1f}",
                    f"{batch / ox_s:.2f}",
                    f"{pt_s / ox_s:.2f}x",
                    stats["detections"],
                )
            )
    import onnxruntime

    print(f"model: {origin}; input uint8 [B, 3, {size}, {size}]; images: {image_source}")
    print(
        f"machine: {cpu_name()}, {args.threads} threads; torch {torch.__version__}, onnxruntime "
        f"{onnxruntime.__version__}; {datetime.date.today()}; median of {args.repeats}"
    )
    print_table(
        "end-to-end inference (uint8 batch -> detections), outputs checked equal",
        rows,
        header=("batch", "PyTorch ms", "PyTorch FPS", "ORT ms", "ORT FPS", "ORT speed-up", "detections"),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
