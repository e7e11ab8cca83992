#!/usr/bin/env python
"""One-stage vs two-stage: train several detectors the same way and compare accuracy, cost and speed.

Detectors (same data, schedule, input size, hardware, all through the shared Lightning loop):
  retinanet_compact      our RetinaNet as in the config (trees: 128-ch FPN, 128 x 3 GroupNorm heads)
  retinanet              our RetinaNet with the paper's head (256-ch FPN, 256 x 4 heads, no norm, L1 box loss)
  torchvision_retinanet  torchvision's RetinaNet (the reference) with exactly that architecture
  faster_rcnn            the two-stage baseline (torchvision Faster R-CNN on the same backbone/FPN)

Table: parameters, GFLOPs (one forward at the training size, 2 FLOPs per multiply-add), train s/step
(median, batch `data.batch_size`, data loading excluded), FPS at batch 1 (model only, end to end), VOC area AP
and 11-point AP, COCO AP/AP50/AP75 on the test split. Plot: VOC AP against end-to-end latency at each
`--sizes` (models trained at `data.size`, evaluated at each size). Writes compare.md, compare.json and
compare_speed_accuracy.png into --out; runs and weights go to --work-dir.

Seeds: with `--seeds 0 1 2` each detector trains once per seed; accuracy is the mean over the seeds (table:
mean ± sample std, min-max and each seed's VOC AP), speed and cost are measured on the first seed's model.
Each further seed costs its training again plus about a minute of evaluation per detector and size.

Budget: the defaults train 4 detectors for the configs' 300 steps (batch 4, 416 px) on the tree tiles
(data/trees, `python tools/prepare_trees.py`). Measured on a 2-core CPU (docs/compare.md): training takes
13 min for the compact RetinaNet (the demo's recipe), 30 min for each 256x4-head RetinaNet (4x its FLOPs),
21 min for Faster R-CNN, plus 3-5 min of timing and evaluation at 4 sizes per detector: about 1 h 45 min.
`train.max_steps=N` (a positional override, for every detector) scales the training part; `--only` and
`--weights NAME=PATH` skip detectors; `--reuse` continues an interrupted run, or reads back weights
trained earlier (copied into --work-dir/weights as NAME_sSEED.safetensors). `--device` (default: the GPU
when there is one) is where training, timing and evaluation run; on an NVIDIA H100 the tree study above takes
about 4 minutes (docs/gpu/compare.md). On VOC, GPU:
  python tools/compare.py --retinanet-config configs/retinanet_mbv2_voc0712.yaml \
      --faster-rcnn-config configs/faster_rcnn_r50_fpn_voc0712.yaml --sizes 320 416 512 608 --out docs/voc
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from detector.cli import add_reuse_option, run_reporting_errors  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAPER_HEAD = (
    "model.fpn.channels=256",
    "model.head.channels=256",
    "model.head.depth=4",
    "model.head.norm=none",
    "model.loss.box=l1",
)


def variants(retinanet_config: str, faster_rcnn_config: str) -> list:
    """The four detectors of the comparison (see the module docstring)."""
    from detector.study import Variant

    return [
        Variant("retinanet_compact", "RetinaNet, ours (config head)", retinanet_config),
        Variant("retinanet", "RetinaNet, ours (256x4 head)", retinanet_config, PAPER_HEAD),
        Variant(
            "torchvision_retinanet",
            "RetinaNet, torchvision (256x4 head)",
            retinanet_config,
            (*PAPER_HEAD, "model.name=torchvision_retinanet"),
        ),
        Variant("faster_rcnn", "Faster R-CNN, torchvision", faster_rcnn_config),
    ]


def parse_weights(items: list[str], known: list[str]) -> dict[str, str]:
    """`NAME=PATH` pairs: use these trained weights instead of training that detector."""
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or name not in known:
            raise ValueError(f"--weights {item!r}: expected NAME=PATH with NAME one of {known}")
        out[name] = path
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--retinanet-config", default=str(ROOT / "configs" / "retinanet_mbv2_trees.yaml"))
    parser.add_argument("--faster-rcnn-config", default=str(ROOT / "configs" / "faster_rcnn_mbv2_trees.yaml"))
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", help="run only these detectors (default: all four)"
    )
    parser.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="use these exported weights instead of training NAME (repeat per detector)",
    )
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 320, 416, 512], help="eval input sizes")
    parser.add_argument("--fps-iters", type=int, default=10, help="timed batches per FPS figure (>= 1)")
    parser.add_argument("--time-steps", type=int, default=5, help="timed training steps per detector (>= 1)")
    parser.add_argument(
        "--time-warmup",
        type=int,
        default=2,
        help="untimed training steps first (the CPU focal loss compiles)",
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=[0], help="train each detector once per seed (default: 0)"
    )
    parser.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="train, time and evaluate here (auto: the GPU when there is one; cpu/cuda also set "
        "trainer.accelerator)",
    )
    parser.add_argument(
        "--out", default=str(ROOT / "docs"), help="folder for compare.{md,json,html} and the PNG"
    )
    parser.add_argument(
        "--report-images",
        type=int,
        default=6,
        help="test images shown with every detector's detections in compare.html (0: no page)",
    )
    parser.add_argument("--work-dir", default=str(ROOT / "runs" / "compare"), help="runs and weights go here")
    add_reuse_option(parser)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides for every detector")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.report_images < 0:
        parser.error(f"--report-images must be >= 0, got {args.report_images}")
    if args.fps_iters < 1 or args.time_steps < 1 or args.time_warmup < 0:
        parser.error("--fps-iters and --time-steps must be >= 1, --time-warmup >= 0")
    if any(s <= 0 or s % 32 for s in args.sizes):
        parser.error(f"--sizes must be positive multiples of 32, got {args.sizes}")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds must not repeat, got {args.seeds}")
    if args.weights and len(args.seeds) > 1:
        parser.error("--weights gives one trained model per detector: use it with a single seed")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here (use --device cpu or auto)")
    if args.device != "auto":  # train where the study measures
        args.overrides = [*args.overrides, f"trainer.accelerator={'gpu' if args.device == 'cuda' else 'cpu'}"]
    args.device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")

    from detector.lit import NonFiniteLossError

    return run_reporting_errors(run, args, also=(NonFiniteLossError,))


def run(args: argparse.Namespace) -> int:
    from detector import study
    from detector.visualize import plot_speed_accuracy

    all_variants = variants(args.retinanet_config, args.faster_rcnn_config)
    names = [v.name for v in all_variants]
    unknown = sorted(set(args.only or []) - set(names))
    if unknown:
        raise ValueError(f"--only: unknown detectors {unknown}; expected some of {names}")
    chosen = [v for v in all_variants if not args.only or v.name in args.only]
    given = parse_weights(args.weights, names)
    results = []
    examples: dict[str, list[dict]] = {}  # detector label -> detections on the first test images (the page)
    for variant in chosen:
        print(f"== {variant.name}: {variant.label}", flush=True)
        row: dict = {}
        for seed in args.seeds:
            cfg = study.study_config(variant, args.overrides, args.work_dir, seed=seed, tag=f"s{seed}")
            if variant.name in given:
                trained = study.load_variant(variant.name, given[variant.name])
                trained.cfg.data = cfg.data  # the study's data, whatever the weights were trained on
            else:
                trained = study.train_variant(variant.name, cfg, reuse=args.reuse)
            trained.model.to(args.device)
            size = int(cfg.data.size)
            sizes = sorted(set(args.sizes) | {size})
            if not row:  # the first seed's model: cost and speed
                images, targets = study.first_train_batch(cfg)
                row = {
                    "name": variant.name,
                    "label": variant.label,
                    "model": trained.cfg.model.name,
                    "train_size": size,
                    "batch_size": int(cfg.data.batch_size),
                    "steps": trained.steps,
                    "fit_seconds": trained.fit_seconds,
                    "params": sum(p.numel() for p in trained.model.parameters()),
                    "gflops": study.count_gflops(trained.model, size, args.device),
                    "train_s_per_step": study.time_train_steps(
                        trained.model,
                        images,
                        targets,
                        steps=args.time_steps,
                        warmup=args.time_warmup,
                        precision=trained.cfg.train.precision,
                    ),
                    "seeds": [],
                }
            if not row["seeds"] and args.report_images:
                examples[variant.label] = example_detections(trained, cfg, args.report_images)
            fps_iters = args.fps_iters if not row["seeds"] else 0
            row["seeds"].append(
                {
                    "seed": seed,
                    "weights": trained.weights,
                    "steps": trained.steps,
                    "fit_seconds": trained.fit_seconds,
                    "by_size": study.evaluate_at_sizes(trained, sizes, fps_iters=fps_iters),
                }
            )
            del trained
        row["weights"] = row["seeds"][0]["weights"]
        row["by_size"] = mean_over_seeds(row["seeds"])
        row["at_train_size"] = next(r for r in row["by_size"] if r["size"] == row["train_size"])
        results.append(row)

    out = Path(args.out)
    curves = {
        r["label"]: [(s["latency_end_to_end_ms"], s["voc_ap"] or 0.0, s["size"]) for s in r["by_size"]]
        for r in results
    }
    png = plot_speed_accuracy(
        curves, out / "compare_speed_accuracy.png", ylabel="VOC AP50 (area), test split"
    )
    crossings = study.curve_crossings(curves)
    machine = study.machine_description(args.device)
    markdown = render(results, args, crossings, machine, png.name)
    (out / "compare.md").write_text(markdown)
    study.write_json(
        out / "compare.json",
        {
            "machine": machine,
            "device": args.device,
            "command": command_line(args),
            "crossings": crossings,
            "results": results,
        },
    )
    page = write_page(out / "compare.html", results, examples, png, machine, args) if examples else None
    print(markdown)
    print(f"written: {out / 'compare.md'}, {out / 'compare.json'}, {png}" + (f", {page}" if page else ""))
    return 0


def example_detections(trained, cfg, count: int) -> list[dict]:
    """The first `count` test images with ground truth, their annotations and this detector's detections."""
    from detector.config import split_roots
    from detector.data.images import read_image
    from detector.data.voc import concat_voc
    from detector.inference import predict

    split = cfg.data.test_split
    dataset = concat_voc(split_roots(cfg.data, split), split, classes=list(trained.class_names))
    records = [r for r in dataset.records if len(r.labels)][:count]
    out = []
    for rec in records:
        det = predict(trained.model, [read_image(rec.image_path)], int(cfg.data.size))[0]
        out.append(
            {
                "image_id": str(rec.image_id),
                "path": str(rec.image_path),
                "gt": {"boxes": rec.boxes, "labels": rec.labels, "difficult": rec.difficult},
                "detections": {k: v.numpy() for k, v in det.items()},
                "class_names": list(trained.class_names),
                "eval": (float(cfg.eval.iou), float(cfg.eval.score)),
            }
        )
    return out


def write_page(path: Path, results: list[dict], examples: dict[str, list[dict]], png: Path, machine: str,
               args: argparse.Namespace) -> Path:
    """compare.html: the study's tables and plot, and each detector's detections on the same test images."""
    from detector.html_report import write_compare_report

    first = next(iter(examples.values()))
    by_id = {label: {ex["image_id"]: ex["detections"] for ex in exs} for label, exs in examples.items()}
    merged = [
        {**ex, "detections": {label: d[ex["image_id"]] for label, d in by_id.items() if ex["image_id"] in d}}
        for ex in first
    ]
    iou, score = first[0]["eval"] if first else (0.5, 0.3)
    names = first[0]["class_names"] if first else []
    return write_compare_report(path, results, merged, names, speed_accuracy_png=png, iou=iou, score=score,
                                machine=machine, command=command_line(args))


def mean_over_seeds(seeds: list[dict]) -> list[dict]:
    """Per input size: the first seed's row (its speed) with accuracy averaged over the seeds, and the
    spread of VOC AP and COCO AP (`study.seed_summary`) under `voc_ap_seeds` / `coco_ap_seeds`."""
    from detector.study import seed_summary

    rows = []
    for i, first in enumerate(seeds[0]["by_size"]):
        per_seed = [s["by_size"][i] for s in seeds]
        voc = seed_summary([r["voc_ap"] for r in per_seed])
        coco = {k: seed_summary([r["coco"][k] for r in per_seed])["mean"] for k in first["coco"]}
        rows.append(
            {
                **first,
                "voc_ap": voc["mean"],
                "voc_ap_07": seed_summary([r["voc_ap_07"] for r in per_seed])["mean"],
                "coco": coco,
                "voc_ap_seeds": voc,
                "coco_ap_seeds": seed_summary([r["coco"]["AP"] for r in per_seed]),
            }
        )
    return rows


def seed_table(results: list[dict], seeds: list[int]) -> list[str]:
    """Each seed's VOC AP at the training size, then the spread: lines of markdown."""
    from detector.study import fmt, fmt_spread, markdown_table

    rows = []
    for r in results:
        at = r["train_size"]
        per_seed = [next(s for s in run["by_size"] if s["size"] == at)["voc_ap"] for run in r["seeds"]]
        a = r["at_train_size"]
        rows.append(
            [r["label"], *map(fmt, per_seed), fmt_spread(a["voc_ap_seeds"]), fmt_spread(a["coco_ap_seeds"])]
        )
    header = ["detector", *(f"seed {s}" for s in seeds), "VOC AP", "COCO AP"]
    return [f"VOC AP per seed at {results[0]['train_size']} px:", "", markdown_table(header, rows)]


def command_line(args: argparse.Namespace) -> str:
    return "python tools/compare.py " + " ".join(args.argv)


def render(
    results: list[dict], args: argparse.Namespace, crossings: list[str], machine: str, png: str
) -> str:
    """The comparison as markdown: main table, AP/latency by size, crossings, machine and command."""
    from detector.study import fmt, fmt_spread, markdown_table

    several = len(args.seeds) > 1
    header = [
        "detector",
        "params (M)",
        "GFLOPs",
        "train s/step",
        "FPS model bs1",
        "FPS e2e bs1",
        "VOC AP",
        "VOC07 11-pt AP",
        "COCO AP",
        "AP50",
        "AP75",
    ]
    rows = []
    for r in results:
        a = r["at_train_size"]
        rows.append(
            [
                r["label"],
                fmt(r["params"] / 1e6, 2),
                fmt(r["gflops"], 2),
                fmt(r["train_s_per_step"], 3),
                fmt(a["fps_model_bs1"], 1),
                fmt(a["fps_end_to_end_bs1"], 1),
                fmt_spread(a["voc_ap_seeds"]) if several else fmt(a["voc_ap"]),
                fmt(a["voc_ap_07"]),
                fmt_spread(a["coco_ap_seeds"]) if several else fmt(a["coco"]["AP"]),
                fmt(a["coco"]["AP50"]),
                fmt(a["coco"]["AP75"]),
            ]
        )
    sizes = sorted({s["size"] for r in results for s in r["by_size"]})
    by_size = [
        [
            r["label"],
            *(
                next(
                    (
                        f"{fmt(s['voc_ap'])} / {fmt(s['latency_end_to_end_ms'], 1)} ms"
                        for s in r["by_size"]
                        if s["size"] == size
                    ),
                    "-",
                )
                for size in sizes
            ),
        ]
        for r in results
    ]
    first = results[0]
    # weights exported before the step count was stored have none: any seed's count says the schedule
    steps = next((s["steps"] for r in results for s in r["seeds"] if s["steps"]), None)
    seeds = ", ".join(str(s) for s in args.seeds)
    lines = [
        "# One-stage vs two-stage detectors",
        "",
        f"Trained at {first['train_size']} px, batch {first['batch_size']}, {steps or '-'} steps "
        "(same data, schedule and Lightning loop for all); evaluated on the test split.",
        f"Seeds {seeds}: accuracy is the mean over the seeds (VOC AP and COCO AP: mean ± sample std "
        "(min-max)), cost and speed are the first seed's model."
        if several
        else f"Seed {seeds}.",
        "",
        markdown_table(header, rows),
        f"VOC AP at each input size / end-to-end latency per image at batch 1 (plot: `{png}`):",
        "",
        markdown_table(["detector", *(f"{s} px" for s in sizes)], by_size),
        "Curves cross: " + ("; ".join(crossings) if crossings else "nowhere in the measured range") + ".",
        "",
        *(seed_table(results, args.seeds) if several else []),
        f"Machine: {machine}.",
        "",
        f"Command: `{command_line(args)}`",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
