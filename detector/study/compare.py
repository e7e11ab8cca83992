"""The one-stage vs two-stage study (`tools/compare.py`): four detectors through the same data, loop and
metrics; accuracy over seeds, cost (parameters, GFLOPs, train s/step) and speed at several input sizes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detector.config import Config
from detector.study.runs import TrainedModel, Variant

__all__ = ["PAPER_HEAD", "ComparePlan", "assign_weights", "run_compare", "variants"]

PAPER_HEAD = (
    "model.fpn.channels=256",
    "model.head.channels=256",
    "model.head.depth=4",
    "model.head.norm=none",
    "model.loss.box=l1",
)


@dataclass
class ComparePlan:
    """What `run_compare` trains and measures: configs, detectors, weights to reuse, sizes, seeds, timing."""

    retinanet_config: str
    faster_rcnn_config: str
    overrides: list[str]
    work_dir: str
    out: str
    command: str
    device: str = "cpu"
    only: list[str] | None = None
    weights: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=lambda: [256, 320, 416, 512])
    seeds: list[int] = field(default_factory=lambda: [0])
    fps_iters: int = 10
    time_steps: int = 5
    time_warmup: int = 2
    reuse: bool = False
    report_images: int = 6  # test images shown with every detector's detections in compare.html (0: no page)


def variants(retinanet_config: str, faster_rcnn_config: str) -> list:
    """The four detectors of the comparison (see the module docstring)."""
    return [
        Variant("retinanet_compact", "RetinaNet, ours (config head)", retinanet_config),
        Variant("retinanet", "RetinaNet, ours (256x4 head)", retinanet_config, PAPER_HEAD),
        Variant(
            "torchvision_retinanet",
            "RetinaNet, torchvision (256x4 head)",
            retinanet_config,
            (*PAPER_HEAD, "model.name=torchvision_retinanet", "model.assigner=iou"),  # it matches by IoU only
        ),
        Variant("faster_rcnn", "Faster R-CNN, torchvision", faster_rcnn_config),
    ]


def assign_weights(paths: list[str], chosen: list[Variant], overrides: list[str]) -> dict[str, str]:
    """Which detector each exported weights file stands in for: the one whose model section equals the
    file's stored config (the architecture decides; data and schedule may differ)."""
    from detector.config import from_yaml, load_config
    from detector.weights import read_config

    models = {v.name: _architecture(load_config(v.config, [*v.overrides, *overrides]).model) for v in chosen}
    given: dict[str, str] = {}
    for path in paths:
        stored = _architecture(from_yaml(read_config(path)).model)
        match = [name for name, m in models.items() if m == stored]
        if len(match) != 1:
            raise ValueError(
                f"--weights {path}: its model fits {', '.join(match) or 'none'} of the detectors "
                f"{list(models)}; give weights of exactly one of them"
            )
        if match[0] in given:
            raise ValueError(f"--weights: {given[match[0]]} and {path} are both {match[0]}")
        given[match[0]] = path
    return given


def _architecture(model_cfg: Any) -> Any:
    """A model section with `backbone.pretrained` blanked: where the initial weights came from does not make
    another model."""
    out = copy.deepcopy(model_cfg)
    out.backbone.pretrained = None
    return out


def run_compare(plan: ComparePlan) -> Path:
    """Train (or load) each detector per seed, measure cost and speed on the first seed's model, evaluate at
    every size, and write compare.md, .json and the speed/accuracy PNG into `plan.out`; returns compare.md."""
    from detector.reporting import machine_description, write_json
    from detector.study.cost import (
        count_gflops,
        curve_crossings,
        evaluate_at_sizes,
        first_train_batch,
        time_train_steps,
    )
    from detector.study.runs import load_variant, study_config, train_variant
    from detector.visualize import plot_speed_accuracy

    args = plan
    all_variants = variants(args.retinanet_config, args.faster_rcnn_config)
    names = [v.name for v in all_variants]
    unknown = sorted(set(args.only or []) - set(names))
    if unknown:
        raise ValueError(f"--only: unknown detectors {unknown}; expected some of {names}")
    chosen = [v for v in all_variants if not args.only or v.name in args.only]
    given = assign_weights(args.weights, all_variants, args.overrides)
    results = []
    examples: dict[str, list[dict]] = {}  # detector label -> detections on the first test images (the page)
    for variant in chosen:
        print(f"== {variant.name}: {variant.label}", flush=True)
        row: dict = {}
        for seed in args.seeds:
            cfg = study_config(variant, args.overrides, args.work_dir, seed=seed, tag=f"s{seed}")
            if variant.name in given:
                trained = load_variant(variant.name, given[variant.name])
                trained.cfg.data = cfg.data  # the study's data, whatever the weights were trained on
            else:
                trained = train_variant(variant.name, cfg, reuse=args.reuse)
            trained.model.to(args.device)
            size = int(cfg.data.size)
            sizes = sorted(set(args.sizes) | {size})
            if not row:  # the first seed's model: cost and speed
                images, targets = first_train_batch(cfg)
                row = {
                    "name": variant.name,
                    "label": variant.label,
                    "model": trained.cfg.model.name,
                    "train_size": size,
                    "batch_size": int(cfg.data.batch_size),
                    "steps": trained.steps,
                    "fit_seconds": trained.fit_seconds,
                    "params": sum(p.numel() for p in trained.model.parameters()),
                    "gflops": count_gflops(trained.model, size, args.device),
                    "train_s_per_step": time_train_steps(
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
                    "by_size": evaluate_at_sizes(trained, sizes, fps_iters=fps_iters),
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
    crossings = curve_crossings(curves)
    machine = machine_description(args.device)
    markdown = render(results, args, crossings, machine, png.name)
    (out / "compare.md").write_text(markdown)
    write_json(
        out / "compare.json",
        {
            "machine": machine,
            "device": args.device,
            "command": args.command,
            "crossings": crossings,
            "results": results,
        },
    )
    page = write_page(out / "compare.html", results, examples, png, machine, args) if examples else None
    print(markdown)
    print(f"written: {out / 'compare.md'}, {out / 'compare.json'}, {png}" + (f", {page}" if page else ""))
    return out / "compare.md"


def example_detections(trained: TrainedModel, cfg: Config, count: int) -> list[dict]:
    """The first `count` test images with ground truth, their annotations and this detector's detections."""
    from detector.data.formats import build_dataset
    from detector.data.images import read_image
    from detector.inference.predict import predict

    dataset = build_dataset(cfg.data, cfg.data.test_split, classes=list(trained.class_names))
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


def write_page(
    path: Path,
    results: list[dict],
    examples: dict[str, list[dict]],
    png: Path,
    machine: str,
    plan: ComparePlan,
) -> Path:
    """compare.html: the study's tables and plot, and each detector's detections on the same test images."""
    from detector.html_compare import write_compare_report

    first = next(iter(examples.values()))
    by_id = {label: {ex["image_id"]: ex["detections"] for ex in exs} for label, exs in examples.items()}
    merged = [
        {**ex, "detections": {label: d[ex["image_id"]] for label, d in by_id.items() if ex["image_id"] in d}}
        for ex in first
    ]
    iou, score = first[0]["eval"] if first else (0.5, 0.3)
    names = first[0]["class_names"] if first else []
    return write_compare_report(
        path,
        results,
        merged,
        names,
        speed_accuracy_png=png,
        iou=iou,
        score=score,
        machine=machine,
        command=plan.command,
    )


SIDE_BY_SIDE = (
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
)


def side_by_side(
    results: list[dict], cell: Any, spread: Any = None
) -> tuple[tuple[str, ...], list[list[str]]]:
    """The study's main table at the training size (header, rows); `cell` formats a number, `spread` (when
    given: several seeds) formats the VOC and COCO AP seed summaries instead of their means."""
    rows = []
    for r in results:
        a = r["at_train_size"]
        coco = a.get("coco", {})
        rows.append(
            [
                r["label"],
                cell(r["params"] / 1e6, 2),
                cell(r.get("gflops"), 2),
                cell(r.get("train_s_per_step"), 3),
                cell(a.get("fps_model_bs1"), 1),
                cell(a.get("fps_end_to_end_bs1"), 1),
                spread(a["voc_ap_seeds"]) if spread else cell(a.get("voc_ap")),
                cell(a.get("voc_ap_07")),
                spread(a["coco_ap_seeds"]) if spread else cell(coco.get("AP")),
                cell(coco.get("AP50")),
                cell(coco.get("AP75")),
            ]
        )
    return SIDE_BY_SIDE, rows


def ap_by_size(results: list[dict], cell: Any) -> tuple[list[int], list[list[str]]]:
    """The sizes evaluated and, per detector, 'VOC AP / latency' at each size (`cell` formats a number)."""
    sizes = sorted({s["size"] for r in results for s in r["by_size"]})
    rows = []
    for r in results:
        at = {s["size"]: s for s in r["by_size"]}
        rows.append(
            [
                r["label"],
                *(
                    f"{cell(at[size]['voc_ap'])} / {cell(at[size].get('latency_end_to_end_ms'), 1)} ms"
                    if size in at
                    else "-"
                    for size in sizes
                ),
            ]
        )
    return sizes, rows


def mean_over_seeds(seeds: list[dict]) -> list[dict]:
    """Per input size: the first seed's row (its speed) with accuracy averaged over the seeds, and the
    spread of VOC AP and COCO AP (`study.seed_summary`) under `voc_ap_seeds` / `coco_ap_seeds`."""
    from detector.study.ablation import seed_summary

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
    from detector.reporting import fmt, fmt_spread, markdown_table

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


def render(results: list[dict], args: ComparePlan, crossings: list[str], machine: str, png: str) -> str:
    """The comparison as markdown: main table, AP/latency by size, crossings, machine and command."""
    from detector.reporting import fmt, fmt_spread, markdown_table

    several = len(args.seeds) > 1
    header, rows = side_by_side(results, fmt, fmt_spread if several else None)
    sizes, by_size = ap_by_size(results, fmt)
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
        f"Command: `{args.command}`",
        "",
    ]
    return "\n".join(lines)
