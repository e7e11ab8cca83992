"""Tiled inference on a large image: megapixels per second, ours against torchvision's RetinaNet; peak memory.

Speed (default): our MobileNetV2-FPN RetinaNet (configs/retinanet_mbv2_trees.yaml, random init) and
torchvision's `retinanet_resnet50_fpn(weights=None, weights_backbone=None)` (the model DeepForest's
`predict_tile` runs), both through the same `detector.inference.tiling.predict_tiled` (same tiles, batches and
merge) on
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

    python tools/bench_tiling.py --memory 10000,10000 [--tile 416 --batch 4]

Seams (`--seams`): on the bundled tree sources (real crown layouts, whole annotation files), an oracle tile
detector that reports the visible part of every annotated crown at least `--visible` visible in a tile (random
scores, so a cut part often outscores the whole crown) is merged three ways: ours (cut-box rule, then NMS),
NMS only, and no merge; each against the whole image's annotations (VOC AP50, false positives). It also counts
what the per-tile split (`detector.data.trees`, 400 px tiles) does to the same annotations.

    python tools/bench_tiling.py --seams [--tile 416 --overlap 0.25]

Merge cost (`--merge W H`): 200 random crown-sized detections per tile of a W x H image (a model at its
`detections_per_img` cap), merged by `merge_tile_detections` (grid NMS above 4000 boxes) against the same
cut-box step followed by torchvision's `batched_nms` over the whole image (all pairs); ratio printed.

    python tools/bench_tiling.py --merge 5000,5000
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from detector import cli


def main(argv: list[str] | None = None) -> int:
    parser = cli.ToolParser(__doc__, config=False)
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=1200)
    parser.add_argument("--tile", type=int, default=416)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--memory", type=cli.comma_list(int), metavar="W,H", help="peak-memory run instead")
    parser.add_argument(
        "--model",
        choices=("ours", "letterbox"),
        default="ours",
        help="memory run: our model, or letterboxing only (the tiling machinery without a network)",
    )
    parser.add_argument("--seams", action="store_true", help="merge check on the tree sources instead")
    parser.add_argument("--merge", type=cli.comma_list(int), metavar="W,H", help="merge cost instead")
    parser.add_argument(
        "--visible", type=float, default=0.3, help="seams: visible fraction an oracle reports"
    )
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse(argv)
    for name in ("memory", "merge"):
        if getattr(args, name) is not None and len(getattr(args, name)) != 2:
            parser.error(f"--{name} takes W,H (two sizes), got {getattr(args, name)}")
    import torch

    from detector.bench.tiling import bench_memory, bench_merge, bench_seams, bench_speed

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
