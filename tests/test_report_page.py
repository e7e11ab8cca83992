"""The report page: its counts equal the evaluator's, it is self-contained, its gallery is worst first."""

from __future__ import annotations

import hashlib

import pytest
from report_helpers import CLASSES, evaluated_set, parse_page

from detector.evaluation.matching import FP_KINDS, image_results, match_records
from detector.html_report import gallery_order, write_report


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    report, records, ids, paths = evaluated_set(folder / "images", num_images=14, iou=0.4, score=0.25)
    out = write_report(
        folder / "eval" / "report.html",
        report,
        records,
        CLASSES,
        ids,
        paths,
        config_yaml="data:\n  size: 256\n",
        machine="test machine",
        max_images=None,
    )
    return out.read_text(), report, records, ids


def test_page_counts_equal_the_evaluators_per_class(page):
    text, report, records, _ = page
    cells, marks, _, _ = parse_page(text)
    section = report["prf"]["0.4"]  # the evaluator's numbers at the page's IoU and score
    assert section["score"] == 0.25 and records.iou_threshold == 0.4
    for c, row in enumerate(section["per_class"], start=1):
        fp_marks = sum(marks[(str(c), k)] for k in FP_KINDS)
        assert (marks[(str(c), "tp")], fp_marks, marks[(str(c), "missed")]) == (
            row["tp"],
            row["fp"],
            row["fn"],
        )
        assert cells[(str(c), "tp")] == row["tp"]
        assert cells[(str(c), "fp")] == row["fp"] == sum(cells[(str(c), k)] for k in FP_KINDS)
        assert cells[(str(c), "missed")] == row["fn"]
    assert cells[("all", "tp")] == section["tp"] and cells[("all", "fp")] == section["fp"]
    assert sum(marks[(str(c), k)] for c in (1, 2, 3) for k in FP_KINDS) == section["fp"] > 0
    for kind in FP_KINDS:  # every kind occurs in this data set, so each filter has something to show
        assert cells[("all", kind)] > 0


def test_page_is_self_contained_and_shows_the_run(page):
    text, _, _, ids = page
    _, _, cards, urls = parse_page(text)
    assert urls and all(u.startswith("data:") for u in urls)
    assert "http://" not in text and "https://" not in text
    assert hashlib.sha256(b"data:\n  size: 256\n").hexdigest() in text
    assert "test machine" in text and 'id="confusion"' in text and 'id="prf-table"' in text
    assert "not readable" not in text  # every image file was found and decoded
    assert len(cards) == len(ids)


def test_gallery_is_worst_first_and_can_be_cut_to_the_worst_k(tmp_path):
    report, records, ids, paths = evaluated_set(tmp_path / "images", num_images=9)
    results = image_results(records, report["eval"]["score"])
    order = gallery_order(results)
    errors = [results[i].errors for i in order]
    assert errors == sorted(errors, reverse=True) and errors[0] > errors[-1]
    text = write_report(tmp_path / "r.html", report, records, CLASSES, ids, paths, max_images=4).read_text()
    _, _, cards, _ = parse_page(text)
    assert [c["data-name"] for c in cards] == [ids[i] for i in order[:4]]
    assert "the worst 4 of 9 images" in text


def test_single_class_has_no_confusion_table_and_a_missing_image_is_a_placeholder(tmp_path):
    report, _, ids, paths = evaluated_set(tmp_path / "images", num_images=3)
    paths[0] = str(tmp_path / "gone.png")
    empty_det = {"boxes": [], "scores": [], "labels": []}
    one = match_records(
        [{"boxes": [[10, 10, 40, 40]], "scores": [0.9], "labels": [1]}, empty_det, empty_det],
        [
            {"boxes": [[12, 10, 40, 40]], "labels": [1]},
            {"boxes": [], "labels": []},
            {"boxes": [], "labels": []},
        ],
        0.5,
        num_classes=1,
    )
    text = write_report(tmp_path / "one.html", report, one, ["tree"], ids, paths).read_text()
    assert 'id="confusion"' not in text and 'id="error-counts"' in text
    assert text.count("image file not readable: ") == 1 and "gone.png" in text
    cells, _, cards, urls = parse_page(text)
    assert cells[("1", "tp")] == 1 and cells[("1", "fp")] == 0
    assert len(cards) == 3 and all(u.startswith("data:image/") or u == "data:," for u in urls)


def test_bad_arguments(tmp_path):
    report, records, ids, paths = evaluated_set(tmp_path / "images", num_images=2)
    with pytest.raises(ValueError, match="2 evaluated images"):
        write_report(tmp_path / "r.html", report, records, CLASSES, ids[:1], paths)
    with pytest.raises(ValueError, match="max_images"):
        write_report(tmp_path / "r.html", report, records, CLASSES, ids, paths, max_images=0)


def test_compare_page_shows_each_detector_on_the_same_images(tmp_path):
    from report_helpers import compare_page

    page, examples = compare_page(tmp_path)
    text = page.read_text()
    _, marks, cards, urls = parse_page(text)
    assert [c["data-name"] for c in cards] == [ex["image_id"] for ex in examples]
    assert all(u.startswith("data:") for u in urls) and 'id="compare-table"' in text
    for ex in examples:
        for label in ("one-stage", "two-stage"):
            assert f'alt="{ex["image_id"]}: {label}"' in text
    # The perfect "two-stage" detections add only true positives: the FP marks are the one-stage ones.
    gts = sum(len(ex["gt"]["labels"]) - int(ex["gt"]["difficult"].sum()) for ex in examples)
    assert sum(v for (c, k), v in marks.items() if k == "tp") >= gts
