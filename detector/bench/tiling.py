"""The tiled-inference benchmark behind `tools/bench_tiling.py`: megapixels per second of ours against
torchvision's RetinaNet R50-FPN through the same tiling, peak memory on a generated large image (in a fresh
subprocess), the seam check with oracle detections on the tree sources, and the merge's cost.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detector.config import load_config
from detector.inference.tiling import batch_predictor, predict_tiled, tile_windows
from detector.models import build_model

__all__ = ["bench_memory", "bench_merge", "bench_seams", "bench_speed", "generated_image"]


CONFIG = Path(__file__).resolve().parents[2] / "configs" / "retinanet_mbv2_trees.yaml"


def machine() -> str:
    """The machine line (`detector.reporting`) with the load average at the time of the call."""
    from detector.reporting import load_report, machine_description

    return f"{machine_description('cpu')}; {load_report('now', torch.get_num_threads())}"


def generated_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """uint8 [3, H, W]: a smooth gradient with bright discs (tree-crown sized), built row band by row band."""
    rng = np.random.default_rng(seed)
    image = np.empty((height, width, 3), np.uint8)
    xs = np.arange(width, dtype=np.float32)
    for y0 in range(0, height, 1024):
        ys = np.arange(y0, min(y0 + 1024, height), dtype=np.float32)[:, None]
        base = (40 + 60 * (xs[None, :] / width) + 40 * (ys / height)).astype(np.uint8)
        image[y0 : y0 + len(ys)] = base[:, :, None]
    n = max(1, height * width // 4000)  # about 250 crowns per megapixel
    cx, cy = rng.integers(0, width, n), rng.integers(0, height, n)
    radius = rng.integers(8, 30, n)
    colour = rng.integers(60, 200, (n, 3))
    for x, y, r, c in zip(cx, cy, radius, colour, strict=True):
        y0, y1, x0, x1 = max(0, y - r), min(height, y + r), max(0, x - r), min(width, x + r)
        yy, xx = np.ogrid[y0:y1, x0:x1]
        disc = (yy - y) ** 2 + (xx - x) ** 2 <= r * r
        image[y0:y1, x0:x1][disc] = c
    return torch.from_numpy(image).permute(2, 0, 1)


def build_ours(size: int) -> torch.nn.Module:
    """Our detector of configs/retinanet_mbv2_trees.yaml, random init (no ImageNet lookup), eval mode."""
    cfg = load_config(CONFIG, ["model.backbone.pretrained=false", f"data.size={size}"])
    return build_model(cfg.model, 1).eval()


def build_torchvision(tile: int) -> torch.nn.Module:
    """torchvision's RetinaNet ResNet50-FPN, random init, one class (as DeepForest), input at tile size."""
    from torchvision.models.detection import retinanet_resnet50_fpn

    model = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2)
    model.transform.min_size, model.transform.max_size = (tile,), tile
    return model.eval()


def torchvision_predict_batch(model: torch.nn.Module):
    """`predict_batch` for torchvision's detector: float tiles in [0, 1]; boxes come back in tile pixels."""

    @torch.inference_mode()
    def run(tiles: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return model([t.float().div_(255) for t in tiles])

    return run


def bench_speed(args: Any) -> dict:
    image = generated_image(args.height, args.width)
    n_tiles = len(tile_windows(args.height, args.width, args.tile, args.overlap))
    runners = {
        "ours (MobileNetV2-FPN RetinaNet, trees config)": batch_predictor(
            build_ours(args.tile), args.tile
        ),
        "torchvision retinanet_resnet50_fpn": torchvision_predict_batch(build_torchvision(args.tile)),
    }
    kwargs = {"tile": args.tile, "overlap": args.overlap, "batch_size": args.batch, "progress": False}
    times: dict[str, list[float]] = {name: [] for name in runners}
    warm = image[:, : args.tile, : args.tile]
    for run in runners.values():  # warm-up: one batch each (allocator, lazy inits)
        run([warm] * args.batch)
    for _ in range(args.repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            predict_tiled(run, image, **kwargs)
            times[name].append(time.perf_counter() - start)
    mp = args.height * args.width / 1e6
    rows = {
        name: {"median_s": statistics.median(t), "mp_per_s": mp / statistics.median(t)}
        for name, t in times.items()
    }
    ours, theirs = (rows[n]["mp_per_s"] for n in runners)
    return {
        "image": f"{args.width}x{args.height} ({mp:.2f} MP)",
        "tiles": n_tiles,
        "tile": args.tile,
        "overlap": args.overlap,
        "batch": args.batch,
        "repeats": args.repeats,
        "results": rows,
        "ratio_ours_vs_torchvision": ours / theirs,
        "machine": machine(),
    }


def _reset_peak() -> bool:
    """Reset the process's RSS high-water mark (VmHWM) on Linux (`echo 5 > /proc/self/clear_refs`)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _vm_hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def letterbox_only(size: int):
    """A `predict_batch` that letterboxes each batch as the model path does and detects nothing: the memory
    of the tiling machinery without a network (`--model letterbox`)."""
    from detector.inference.predict import letterbox_batch

    def run(tiles: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        batch, _ = letterbox_batch(tiles, size)
        empty = {
            "boxes": torch.zeros(0, 4),
            "scores": torch.zeros(0),
            "labels": torch.zeros(0, dtype=torch.int64),
        }
        return [dict(empty) for _ in range(batch.shape[0])]

    return run


def _memory_child(path: str, tile: int, batch: int, overlap: float, model_name: str = "ours") -> dict:
    """Runs in the fresh subprocess: read the file, tile it through the model, report RSS figures (MiB)."""
    from detector.data.images import read_image

    def rss_mib() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    predict_batch = (
        batch_predictor(build_ours(tile), tile) if model_name == "ours" else letterbox_only(tile)
    )
    base = rss_mib()
    image = read_image(path, max_pixels=0)
    after_read = rss_mib()
    peak_read = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    reset = _reset_peak()  # from here VmHWM is the peak of the tiled prediction alone
    start = time.perf_counter()
    out = predict_tiled(predict_batch, image, tile, overlap, batch_size=batch)
    seconds = time.perf_counter() - start
    return {
        "image_mib": image.numel() / 2**20,
        "rss_model_mib": base,
        "rss_after_read_mib": after_read,
        "peak_rss_reading_mib": peak_read,
        "peak_rss_tiling_mib": _vm_hwm_mib() if reset else None,
        "tiles": len(tile_windows(int(image.shape[1]), int(image.shape[2]), tile, overlap)),
        "detections": len(out["scores"]),
        "seconds": seconds,
    }


def bench_memory(args: Any) -> dict:
    width, height = args.memory
    from PIL import Image

    folder = Path(tempfile.mkdtemp(prefix="focaldet_tiling_", dir="/tmp"))
    path = folder / f"generated_{width}x{height}.png"
    Image.fromarray(generated_image(height, width).permute(1, 2, 0).numpy()).save(path, compress_level=1)
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); from detector.bench.tiling import _memory_child; "
        "a = sys.argv; print(json.dumps(_memory_child(a[2], int(a[3]), int(a[4]), float(a[5]), a[6])))"
    )
    repo = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": repo}
    argv = [sys.executable, "-c", code, repo, str(path), str(args.tile), str(args.batch), str(args.overlap)]
    argv.append(args.model)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    finally:  # the generated image never outlives the run
        path.unlink()
        folder.rmdir()
    if proc.returncode:
        raise SystemExit(f"memory run failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result |= {"image": f"{width}x{height}", "tile": args.tile, "batch": args.batch, "model": args.model}
    result["machine"] = machine()
    return result


def _greedy_matches(det_boxes: torch.Tensor, det_scores: torch.Tensor, gt: torch.Tensor) -> int:
    """True positives at IoU 0.5, VOC-style: by score, each detection takes the best unmatched crown."""
    from torchvision.ops import box_iou

    if len(det_boxes) == 0 or len(gt) == 0:
        return 0
    iou = box_iou(det_boxes[det_scores.argsort(descending=True)], gt)
    taken = torch.zeros(len(gt), dtype=torch.bool)
    tp = 0
    for row in iou:
        row = row.masked_fill(taken, -1)
        best = int(row.argmax())
        if row[best] >= 0.5:
            taken[best], tp = True, tp + 1
    return tp


def bench_seams(args: Any) -> dict:
    from detector.data.trees import SPLIT_SOURCES, _load_source, find_deepforest_data, make_tiles
    from detector.evaluation.voc import voc_metrics
    from detector.inference.tiling import merge_tile_detections

    src = find_deepforest_data()
    gen = torch.Generator().manual_seed(0)
    rows = []
    for split, names in SPLIT_SOURCES.items():
        for name in names:
            pixels, gt_np = _load_source(src, name)
            height, width = pixels.shape[:2]
            gt = torch.as_tensor(gt_np, dtype=torch.float32)
            windows = tile_windows(height, width, args.tile, args.overlap)
            boxes, tiles = [], []
            for i, (x0, y0, x1, y1) in enumerate(windows):
                clipped = gt.clone()
                clipped[:, 0::2] = clipped[:, 0::2].clamp(x0, x1)
                clipped[:, 1::2] = clipped[:, 1::2].clamp(y0, y1)
                w, h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
                full = (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])
                seen = (w >= 2) & (h >= 2) & (w * h >= args.visible * full)
                boxes.append(clipped[seen])
                tiles.append(torch.full((int(seen.sum()),), i))
            b, t = torch.cat(boxes), torch.cat(tiles)
            scores = 0.3 + 0.7 * torch.rand(len(b), generator=gen)
            labels = torch.ones(len(b), dtype=torch.int64)
            win = torch.tensor(windows, dtype=torch.float32)
            merged = {
                "ours": merge_tile_detections(b, scores, labels, t, win, (height, width)),
                "NMS only": merge_tile_detections(b, scores, labels, t, win, (height, width), edge_ios=2.0),
                "no merge": {"boxes": b, "scores": scores, "labels": labels},
            }
            row = {"source": name, "split": split, "size": f"{width}x{height}", "crowns": len(gt)}
            row["tiles"] = len(windows)
            gts = [
                {
                    "boxes": gt_np,
                    "labels": np.ones(len(gt_np), np.int64),
                    "difficult": np.zeros(len(gt_np), bool),
                }
            ]
            for key, det in merged.items():
                tp = _greedy_matches(det["boxes"], det["scores"], gt)
                ap = voc_metrics([{k: v.numpy() for k, v in det.items()}], gts, 1)["map"]
                row[key] = {
                    "detections": len(det["scores"]),
                    "tp": tp,
                    "fp": len(det["scores"]) - tp,
                    "ap50": ap,
                }
            cut = make_tiles(src, name, split)
            row["per_tile_split"] = {
                "tiles": len(cut),
                "boxes": int(sum(len(c.boxes) for c in cut)),
                "cut_boxes": int(sum(int(c.truncated.sum()) for c in cut)),
                "crowns_in_no_tile": int(len(gt) - _crowns_kept(gt_np, cut)),
            }
            rows.append(row)
    return {
        "tile": args.tile,
        "overlap": args.overlap,
        "visible": args.visible,
        "rows": rows,
        "machine": machine(),
    }


def _crowns_kept(gt: np.ndarray, tiles: list) -> int:
    """How many annotated crowns appear (whole or as a kept part) in some tile of the per-tile split."""
    from detector.data.trees import tile_boxes

    kept = np.zeros(len(gt), bool)
    for tile in tiles:
        _, keep = tile_boxes(gt, *tile.origin)
        kept |= keep
    return int(kept.sum())


def bench_merge(args: Any) -> dict:
    from torchvision.ops import batched_nms

    from detector.inference.tiling import merge_tile_detections, suppress_cut_boxes

    width, height = args.merge
    windows = tile_windows(height, width, args.tile, args.overlap)
    gen = torch.Generator().manual_seed(0)
    boxes, tiles = [], []
    for i, (x0, y0, x1, y1) in enumerate(windows):
        xy = torch.rand(200, 2, generator=gen) * torch.tensor([max(1, x1 - x0 - 40), max(1, y1 - y0 - 40)])
        wh = 20 + torch.rand(200, 2, generator=gen) * 60
        local = torch.cat([xy, xy + wh], 1).clamp(
            max=torch.tensor([x1 - x0, y1 - y0] * 2, dtype=torch.float32)
        )
        boxes.append(local + torch.tensor([x0, y0, x0, y0], dtype=torch.float32))
        tiles.append(torch.full((200,), i))
    b, t = torch.cat(boxes), torch.cat(tiles)
    scores = torch.rand(len(b), generator=gen)
    labels = torch.ones(len(b), dtype=torch.int64)
    win = torch.tensor(windows, dtype=torch.float32)
    start = time.perf_counter()
    ours = merge_tile_detections(b, scores, labels, t, win, (height, width))
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    keep = suppress_cut_boxes(b, scores, labels, t, win, (height, width))
    ref = batched_nms(b[keep], scores[keep], labels[keep], 0.5)
    ref_s = time.perf_counter() - start
    return {
        "image": f"{width}x{height}",
        "tiles": len(windows),
        "detections": len(b),
        "kept": {"ours": len(ours["scores"]), "batched_nms": len(ref)},
        "seconds": {"ours": ours_s, "batched_nms": ref_s},
        "ratio": ref_s / ours_s,
        "machine": machine(),
    }


