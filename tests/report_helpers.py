"""A small evaluated data set for the report-page tests: real image files, three classes, every error kind."""

from __future__ import annotations

from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from test_eval_voc import random_dataset  # noqa: F401 - re-exported for the tests

from detector.evaluation.matching import match_records, prf_by_iou
from detector.evaluation.voc import voc_ap

CLASSES = ["cat", "dog", "bird"]


def evaluated_set(folder: Path, num_images: int = 12, seed: int = 3, iou: float = 0.5, score: float = 0.3):
    """(report, records, image ids, image paths) of random detections on generated PNG images."""
    dets, gts = random_dataset(np.random.default_rng(seed), num_images=num_images, num_classes=len(CLASSES))
    folder.mkdir(parents=True, exist_ok=True)
    ids, paths = [], []
    for i, g in enumerate(gts):
        im = Image.new("RGB", (272, 272), (90, 110, 90))
        draw = ImageDraw.Draw(im)
        for (x1, y1, x2, y2), lab in zip(g["boxes"], g["labels"], strict=True):
            draw.rectangle([x1, y1, x2, y2], fill=((200, 60, 60), (60, 160, 60), (70, 80, 210))[int(lab) - 1])
        ids.append(f"img{i:03d}")
        paths.append(folder / f"img{i:03d}.png")
        im.save(paths[-1])
    prf, _ = prf_by_iou(dets, gts, CLASSES, score, (0.4, 0.5, iou))
    area = voc_ap(dets, gts, 0.5, num_classes=len(CLASSES))
    report = {
        "split": "test",
        "num_images": num_images,
        "model": "retinanet",
        "backbone": "mobilenet_v2",
        "size": 256,
        "params": 1234567,
        "voc": {
            "map": area["map"],
            "map_07": area["map"],
            "map40": prf["0.4"]["map"],
            "per_class": [
                {
                    "class": n,
                    "num_gt": area["num_gt"][c],
                    "num_det": sum(int((d["labels"] == c).sum()) for d in dets),
                    "ap": area["ap"].get(c),
                    "ap_07": None,
                    "ap40": prf["0.4"]["per_class"][c - 1]["ap"],
                }
                for c, n in enumerate(CLASSES, start=1)
            ],
        },
        "coco": {"AP": 0.25, "AP50": 0.5},
        "eval": {"iou": iou, "score": score},
        "prf": prf,
        "speed": {"device": "cpu", "model_bs1": {"fps": 12.5, "latency_ms_median": 80.0}},
    }
    records = match_records(dets, gts, iou, num_classes=len(CLASSES))
    return report, records, ids, [str(p) for p in paths]


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[tuple[str, str], int] = {}
        self.cards: list[dict[str, str]] = []
        self.urls: list[str] = []
        self._cell: tuple[str, str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "td" and "data-kind" in a:
            self._cell = (a["data-class"], a["data-kind"])
        if "card" in (a.get("class") or "").split():
            self.cards.append(a)
        for key in ("src", "href"):
            if key in a:
                self.urls.append(a[key])

    def handle_data(self, data):
        if self._cell is not None:
            self.cells[self._cell] = int(data)
            self._cell = None


def parse_page(text: str) -> tuple[dict[tuple[str, str], int], Counter, list[dict[str, str]], list[str]]:
    """(error-count cells by (class, kind), gallery marks counted by (class, kind), cards, every src/href)."""
    parser = _PageParser()
    parser.feed(text)
    marks = Counter(
        tuple(token.rsplit(":", 1)) for card in parser.cards for token in card["data-marks"].split()
    )
    return parser.cells, marks, parser.cards, parser.urls


def compare_page(folder: Path) -> tuple[Path, list[dict]]:
    """A compare.html of two made-up detectors on three generated images (the study's row layout)."""
    from detector.html_compare import write_compare_report

    report, records, ids, paths = evaluated_set(folder / "images", num_images=3)
    d, g = records.dets, records.gts
    examples = []
    for i in range(3):
        gt = {
            "boxes": g.boxes[g.image == i],
            "labels": g.labels[g.image == i],
            "difficult": g.difficult[g.image == i],
        }
        det = {
            "boxes": d.boxes[d.image == i],
            "scores": d.scores[d.image == i],
            "labels": d.labels[d.image == i],
        }
        perfect = {"boxes": gt["boxes"], "scores": np.full(len(gt["labels"]), 0.9), "labels": gt["labels"]}
        examples.append(
            {
                "image_id": ids[i],
                "path": paths[i],
                "gt": gt,
                "detections": {"one-stage": det, "two-stage": perfect},
            }
        )
    rows = [
        {
            "label": name,
            "params": 3.2e6,
            "gflops": 1.5,
            "train_s_per_step": 0.4,
            "at_train_size": {
                "size": 256,
                "fps_model_bs1": 20.0,
                "fps_end_to_end_bs1": 15.0,
                "voc_ap": ap,
                "voc_ap_07": ap,
                "coco": {"AP": ap / 2, "AP50": ap, "AP75": ap / 3},
            },
            "by_size": [{"size": 256, "voc_ap": ap, "latency_end_to_end_ms": 60.0}],
        }
        for name, ap in (("one-stage", 0.4), ("two-stage", 0.6))
    ]
    page = write_compare_report(folder / "compare.html", rows, examples, CLASSES, machine="test", command="x")
    return page, examples
