#!/usr/bin/env python
"""`make demo`: prepare the tree crowns, train the default detector, evaluate it on the test split, draw
two test images.

Everything goes under `--out` (default demo_out/): the run (checkpoints, curves), the exported weights, the
evaluation (results.json, PR curves, report.html: the page to open) and the drawn detections. Sized to fit
in 20 minutes on a 2-core CPU; `--max-steps` / `--epochs` and any `key=value` override change the recipe
from the command line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from detector.cli import fail, print_eval_report, print_table, save_pr_curves

DEFAULT_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "retinanet_mbv2_trees.yaml")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", default=DEFAULT_CONFIG, help="experiment YAML (default configs/retinanet_mbv2_trees.yaml)"
    )
    parser.add_argument(
        "--data", default="data/trees", help="tree dataset folder (built here when incomplete)"
    )
    parser.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    parser.add_argument("--max-steps", type=int, help="cap on optimizer steps (default: the config's)")
    parser.add_argument("--epochs", type=int, help="epochs (default: the config's)")
    parser.add_argument("--score", type=float, default=0.3, help="score threshold of the drawn detections")
    parser.add_argument("--fps-iters", type=int, default=5, help="timed batches per FPS figure; 0 skips FPS")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    args = parser.parse_args(argv)
    for name in ("max_steps", "epochs"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")

    from detector.config import ConfigError, load_config

    out = Path(args.out)
    overrides = [
        f"data.root={args.data}",
        f"output.dir={out / 'runs'}",
        f"output.weights_dir={out / 'weights'}",
    ]
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    try:
        cfg = load_config(args.config, overrides + list(args.overrides))
    except ConfigError as err:
        return fail(err)

    timings: list[tuple[str, str]] = []
    start = time.perf_counter()
    try:
        prepare_trees(Path(args.data))
    except Exception as err:  # deepforest missing, unwritable folder: say so and stop
        return fail(err)
    timings.append(("prepare data", f"{time.perf_counter() - start:.1f} s"))

    from detector.data.voc import VOCFormatError
    from detector.inference import evaluate_split, load_detector, predict
    from detector.lit import NonFiniteLossError, fit
    from detector.weights import WeightsError

    t = time.perf_counter()
    try:
        result = fit(cfg)
    except (ConfigError, FileNotFoundError, NonFiniteLossError, VOCFormatError, WeightsError) as err:
        return fail(err)
    timings.append(("train", f"{time.perf_counter() - t:.1f} s"))

    t = time.perf_counter()
    model, cfg_w, class_names = load_detector(result.weights)
    report, voc_result = evaluate_split(
        model, cfg_w, class_names, cfg.data.test_split, fps_iters=args.fps_iters
    )
    eval_dir = out / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    report["weights"] = str(result.weights)
    report["pr_curves"] = save_pr_curves(voc_result, class_names, eval_dir)
    from detector.config import to_yaml
    from detector.html_report import write_eval_page

    page = write_eval_page(eval_dir / "results.json", report, voc_result, class_names, to_yaml(cfg_w))
    report["report_page"] = None if page is None else str(page)
    (eval_dir / "results.json").write_text(json.dumps(report, indent=2))
    timings.append(("evaluate", f"{time.perf_counter() - t:.1f} s"))

    t = time.perf_counter()
    drawn = draw_examples(model, cfg_w, class_names, out / "detections", args.score, predict)
    timings.append(("draw", f"{time.perf_counter() - t:.1f} s"))
    timings.append(("total", f"{time.perf_counter() - start:.1f} s"))

    print_table("training summary", result.rows())
    print_eval_report(report)
    print_table(
        "demo",
        [
            *timings,
            ("results", str(eval_dir / "results.json")),
            ("report page", str(page) if page else "not written (see the warning above)"),
            *[(f"drawn ({i + 1})", str(p)) for i, p in enumerate(drawn)],
        ],
    )
    return 0


def trees_complete(root: Path) -> bool:
    """True when both split files exist and every listed tile has its image and annotation."""
    for split in ("train", "test"):
        split_file = root / "ImageSets" / "Main" / f"{split}.txt"
        if not split_file.is_file():
            return False
        ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        if not ids or not all(
            (root / "Annotations" / f"{i}.xml").is_file() and (root / "JPEGImages" / f"{i}.png").is_file()
            for i in ids
        ):
            return False
    return True


def prepare_trees(root: Path) -> None:
    """Build the tree dataset unless it is already there and complete."""
    if trees_complete(root):
        print(f"tree dataset present: {root}")
        return
    from detector.data.trees import build_trees_dataset

    summary = build_trees_dataset(root)
    counts = ", ".join(
        f"{split}: {info['tiles']} tiles / {info['boxes']} boxes" for split, info in summary["splits"].items()
    )
    print(f"tree dataset built in {root} ({counts})")


def draw_examples(model, cfg, class_names, folder: Path, score: float, predict, count: int = 2) -> list[Path]:
    """Detections (score >= `score`) drawn on the first `count` test images that have ground truth."""
    from detector.config import split_roots
    from detector.data.images import read_image
    from detector.data.voc import concat_voc
    from detector.visualize import draw_detections, save_image

    dataset = concat_voc(
        split_roots(cfg.data, cfg.data.test_split), cfg.data.test_split, classes=list(class_names)
    )
    records = [r for r in dataset.records if len(r.labels)][:count] or dataset.records[:count]
    written = []
    for rec in records:
        image = read_image(rec.image_path)
        det = predict(model, [image], cfg.data.size)[0]
        drawn = draw_detections(
            image, det["boxes"], det["labels"], det["scores"], class_names, score_threshold=score
        )
        written.append(save_image(drawn, folder / f"{rec.image_id}.png"))
    return written


if __name__ == "__main__":
    sys.exit(main())
