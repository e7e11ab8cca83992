"""Tiled inference on a large image: megapixels per second, ours against torchvision's RetinaNet; peak memory.

Speed (default): our MobileNetV2-FPN RetinaNet (configs/retinanet_mbv2_trees.yaml, random init) and
torchvision's `retinanet_resnet50_fpn(weights=None, weights_backbone=None)` (the model DeepForest's
`predict_tile` runs), both through the same `detector.tiling.predict_tiled` (same tiles, batches and merge) on
the same generated image, at the same tile size and overlap; torchvision's transform is set to the tile size
(min_size = max_size = tile) so both networks see the tiles at the same resolution. Runs alternate, ours and
torchvision's, so background load hits both alike; the median of `--repeats` after one warm-up run.

    python tools/bench_tiling.py [--width 1200 --height 1200 --tile 416 --overlap 0.25 --batch 4 --repeats 3]

Memory (`--memory W H`): writes a generated W x H PNG to /tmp (never to the repository), then, in a fresh
subprocess, reads it with `read_image(max_pixels=0)` and runs our model over it by tiles, and reports the
peak RSS up to the end of reading (`resource.getrusage` ru_maxrss), the RSS after reading, the decoded image's
bytes, and the peak RSS of the tiled prediction alone (VmHWM after `echo 5 > /proc/self/clear_refs`).
`--model letterbox` letterboxes every batch as the model path does but runs no network: the tiling machinery's
own memory, quick enough for 10,000 x 10,000 px on a small machine.

    python tools/bench_tiling.py --memory 10000 10000 [--tile 416 --batch 4]

Seams (`--seams`): on the bundled tree sources (real crown layouts, whole annotation files), an oracle tile
detector that reports the visible part of every annotated crown at least `--visible` visible in a tile (random
scores, so a cut part often outscores the whole crown) is merged three ways: ours (cut-box rule, then NMS),
NMS only, and no merge; each against the whole image's annotations (VOC AP50, false positives). It also counts
what the per-tile split (`detector.data.trees`, 400 px tiles) does to the same annotations.

    python tools/bench_tiling.py --seams [--tile 416 --overlap 0.25]

Merge cost (`--merge W H`): 200 random crown-sized detections per tile of a W x H image (a model at its
`detections_per_img` cap), merged by `merge_tile_detections` (grid NMS above 4000 boxes) against the same
cut-box step followed by torchvision's `batched_nms` over the whole image (all pairs); ratio printed.

    python tools/bench_tiling.py --merge 5000 5000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.config import load_config  # noqa: E402
from detector.models import build_model  # noqa: E402
from detector.tiling import predict_tiled, tile_windows, torch_predict_batch  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "retinanet_mbv2_trees.yaml"


def machine() -> str:
    """CPU model, cores, threads, load average and library versions, in one line."""
    name = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return (
        f"{name}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, load average {load}; "
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"Python {platform.python_version()}"
    )


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


def bench_speed(args: argparse.Namespace) -> dict:
    image = generated_image(args.height, args.width)
    n_tiles = len(tile_windows(args.height, args.width, args.tile, args.overlap))
    runners = {
        "ours (MobileNetV2-FPN RetinaNet, trees config)": torch_predict_batch(
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
    from detector.inference import letterbox_batch

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
        torch_predict_batch(build_ours(tile), tile) if model_name == "ours" else letterbox_only(tile)
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


def bench_memory(args: argparse.Namespace) -> dict:
    width, height = args.memory
    from PIL import Image

    folder = Path(tempfile.mkdtemp(prefix="focaldet_tiling_", dir="/tmp"))
    path = folder / f"generated_{width}x{height}.png"
    Image.fromarray(generated_image(height, width).permute(1, 2, 0).numpy()).save(path, compress_level=1)
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); from tools.bench_tiling import _memory_child; "
        "a = sys.argv; print(json.dumps(_memory_child(a[2], int(a[3]), int(a[4]), float(a[5]), a[6])))"
    )
    repo = str(Path(__file__).resolve().parents[1])
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


def bench_seams(args: argparse.Namespace) -> dict:
    from detector.data.trees import SPLIT_SOURCES, _load_source, find_deepforest_data, make_tiles
    from detector.inference import voc_metrics
    from detector.tiling import merge_tile_detections

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


def bench_merge(args: argparse.Namespace) -> dict:
    from torchvision.ops import batched_nms

    from detector.tiling import merge_tile_detections, suppress_cut_boxes

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=1200)
    parser.add_argument("--tile", type=int, default=416)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--memory", type=int, nargs=2, metavar=("W", "H"), help="peak-memory run instead")
    parser.add_argument(
        "--model",
        choices=("ours", "letterbox"),
        default="ours",
        help="memory run: our model, or letterboxing only (the tiling machinery without a network)",
    )
    parser.add_argument("--seams", action="store_true", help="merge check on the tree sources instead")
    parser.add_argument("--merge", type=int, nargs=2, metavar=("W", "H"), help="merge cost instead")
    parser.add_argument(
        "--visible", type=float, default=0.3, help="seams: visible fraction an oracle reports"
    )
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.seams:
        result = bench_seams(args)
        print(f"seams: oracle tile detections merged, tile {args.tile}, overlap {args.overlap}:")
        for r in result["rows"]:
            print(f"  {r['source']} ({r['split']}, {r['size']}, {r['crowns']} crowns, {r['tiles']} tiles)")
            for key in ("ours", "NMS only", "no merge"):
                m = r[key]
                print(f"    {key:9s} detections {m['detections']:5d}  FP {m['fp']:5d}  AP50 {m['ap50']:.3f}")
            pt = r["per_tile_split"]
            print(
                f"    per-tile split: {pt['tiles']} tiles, {pt['boxes']} boxes ({pt['cut_boxes']} cut), "
                f"{pt['crowns_in_no_tile']} crowns in no tile"
            )
        print(f"machine: {result['machine']}")
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
        return 0
    if args.merge:
        result = bench_merge(args)
        print(f"merge, {result['image']} px, {result['tiles']} tiles, {result['detections']} detections:")
        for key in ("ours", "batched_nms"):
            print(f"  {key:12s} {result['seconds'][key]:8.2f} s  kept {result['kept'][key]}")
        print(f"  ratio batched_nms / ours: {result['ratio']:.1f}x")
        print(f"machine: {result['machine']}")
        return 0
    result = bench_memory(args) if args.memory else bench_speed(args)
    if args.memory:
        print(
            f"memory, {result['image']} px generated image, tile {result['tile']}, batch {result['batch']}, "
            f"model {result['model']}:"
        )
        keys = ("image_mib", "rss_model_mib", "rss_after_read_mib", "peak_rss_reading_mib")
        for key in (*keys, "peak_rss_tiling_mib"):
            value = result[key]
            print(f"  {key:22s} {'n/a' if value is None else f'{value:9.1f}'}")
        print(f"  tiles {result['tiles']}, detections {result['detections']}, {result['seconds']:.1f} s")
    else:
        print(
            f"tiled inference, {result['image']}, {result['tiles']} tiles of {result['tile']} px, overlap "
            f"{result['overlap']}, batch {result['batch']}, median of {result['repeats']}:"
        )
        for name, row in result["results"].items():
            print(f"  {name:48s} {row['median_s']:8.2f} s  {row['mp_per_s']:7.3f} MP/s")
        print(f"  ratio ours / torchvision: {result['ratio_ours_vs_torchvision']:.2f}x")
    print(f"machine: {result['machine']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
