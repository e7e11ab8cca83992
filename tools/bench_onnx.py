#!/usr/bin/env python
"""onnxruntime vs PyTorch inference speed of the exported RetinaNet, side by side in one process.

Both run the whole detector (uint8 batch in, detections out: normalization, network, decoding, NMS) on
the same letterboxed real images (deepforest tiles when installed, else a synthetic pattern), interleaved
repeat by repeat, with the same thread count; the outputs are checked to match before timing. Without
--weights the model comes from --config with its classifier bias calibrated so that about 50 detections per
image pass the score threshold, so NMS does realistic work.

    python tools/bench_onnx.py [--weights W | --config C] [--batch 1,4] [--repeats 9] [data.size=416]
"""

from __future__ import annotations

import datetime
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from detector import cli


def bench_images(size: int, count: int) -> tuple[torch.Tensor, str]:
    """`count` letterboxed uint8 images [count, 3, S, S] and where they came from."""
    from detector.data.images import read_image
    from detector.export.verify import synthetic_images
    from detector.inference.predict import letterbox_batch

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
    import torch

    parser = cli.ToolParser(__doc__, weights="optional")
    parser.add_argument("--batch", type=cli.comma_list(int), default=[1, 4], help="batch sizes (default 1,4)")
    parser.add_argument("--repeats", type=int, default=9, help="timed repeats per figure (default 9)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads for both")
    return cli.run(parser, bench, argv, also=(NotImplementedError,))


def bench(args, cfg) -> int:  # noqa: ANN001
    import torch

    from detector.config import to_yaml
    from detector.export.onnx import export_onnx, require_onnx
    from detector.export.runtime import OnnxDetector
    from detector.export.verify import calibrate_scores, compare_detections, model_cut_offs
    from detector.inference.predict import load_detector
    from detector.models import build_model
    from detector.reporting import load_report, machine_description

    require_onnx("onnx", "onnxruntime")
    print(load_report("start"))
    if args.weights:
        model, _, class_names = load_detector(args.weights)
        origin = str(args.weights)
    else:
        from detector.data.formats import dataset_class_names

        class_names = list(cfg.data.classes) or dataset_class_names(cfg.data)
        model = build_model(cfg.model, len(class_names)).eval()
        origin = f"{args.config or cli.DEFAULT_CONFIG} (classifier bias calibrated)"
    if cfg.model.name != "retinanet":
        raise NotImplementedError("the ONNX benchmark times the RetinaNet (a dynamic-batch export)")
    torch.set_num_threads(args.threads)
    size = cfg.data.size
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
        f"machine: {machine_description('cpu')}; onnxruntime {onnxruntime.__version__}; "
        f"{datetime.date.today()}; median of {args.repeats}"
    )
    print(load_report("end", torch.get_num_threads()))
    cli.print_table(
        "end-to-end inference (uint8 batch -> detections), outputs checked equal",
        rows,
        header=("batch", "PyTorch ms", "PyTorch FPS", "ORT ms", "ORT FPS", "ORT speed-up", "detections"),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
