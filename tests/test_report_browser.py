"""The report page in a real browser: headless Chromium over the DevTools protocol.

Checks that the page renders with no console error and no request outside the file system, that every
image loads, and that the filter and sort controls change what is shown (against what the match records
say should be shown). Skipped, with the reason, where Chromium is not installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from chromium_cdp import Chromium, find_browser
from PIL import Image
from report_helpers import CLASSES, evaluated_set

from detector.evaluation.matching import image_results
from detector.html_report import gallery_order, write_report

pytestmark = pytest.mark.slow

VISIBLE_NAMES = (
    "Array.from(document.querySelectorAll('#gallery .card'))"
    ".filter(c => c.offsetParent !== null).map(c => c.dataset.name)"
)


def choose(browser: Chromium, select: str, value: str) -> list[str]:
    """Pick an option of a control as a user would (value + change event); the visible cards, in order."""
    return browser.evaluate(
        f"(() => {{ const s = document.getElementById({select!r}); s.value = {value!r};"
        f" s.dispatchEvent(new Event('change', {{bubbles: true}})); return {VISIBLE_NAMES}; }})()"
    )


@pytest.fixture()
def browser(tmp_path):
    executable = find_browser()
    if executable is None:
        pytest.skip(
            "Chromium is not installed (apt-get install chromium, as .ci/run does): "
            "the report page was NOT checked in a browser"
        )
    chromium = Chromium(executable, tmp_path / "profile")
    try:
        yield chromium
    finally:
        chromium.close()


def test_report_page_in_headless_chromium(browser, tmp_path):
    report, records, ids, paths = evaluated_set(tmp_path / "images", num_images=10)
    page = write_report(
        tmp_path / "eval" / "report.html",
        report,
        records,
        CLASSES,
        ids,
        paths,
        config_yaml="model: {}\n",
        machine="test",
    )
    results = image_results(records, report["eval"]["score"])

    for domain in ("Network", "Runtime", "Log", "Page"):
        browser.call(f"{domain}.enable")
    browser.call(
        "Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False
    )
    browser.call("Page.navigate", url=page.resolve().as_uri())
    browser.wait_for("Page.loadEventFired")
    assert browser.evaluate("document.readyState") == "complete"

    # Every image decoded (the 10 gallery images and the two plots), none broken.
    images = browser.evaluate(
        "Array.from(document.images)"
        ".map(i => [i.alt, i.complete && i.naturalWidth > 0 && i.naturalHeight > 0])"
    )
    assert len(images) == len(ids) + 2
    assert [alt for alt, ok in images if not ok] == []

    # Filters: the cards shown are exactly the images whose marks match, by the match records.
    everything = browser.evaluate(VISIBLE_NAMES)
    assert everything == [ids[i] for i in gallery_order(results)]  # worst first
    missed = choose(browser, "filter-kind", "missed")
    assert sorted(missed) == sorted(ids[r.index] for r in results if r.missed.size)
    assert 0 < len(missed) < len(ids)
    choose(browser, "filter-kind", "")
    bird = choose(browser, "filter-class", "3")
    has_bird = [
        ids[r.index]
        for r in results
        if 3 in records.dets.labels[np.r_[r.tp, r.fp]].tolist() or 3 in records.gts.labels[r.missed].tolist()
    ]
    assert sorted(bird) == sorted(has_bird) and len(bird) < len(ids)
    dup_bird = choose(browser, "filter-kind", "duplicate")
    assert sorted(dup_bird) == sorted(
        ids[r.index]
        for r in results
        if any(records.kind[k] == "duplicate" and records.dets.labels[k] == 3 for k in r.fp)
    )
    choose(browser, "filter-class", "")
    choose(browser, "filter-kind", "")
    status = browser.evaluate("document.getElementById('gallery-status').textContent")
    assert status == f"showing {len(ids)} of {len(ids)} images"

    # Sort: by name, then back to most errors first.
    assert choose(browser, "sort", "name") == sorted(ids)
    by_f1 = choose(browser, "sort", "f1")
    assert [results[ids.index(n)].f1 for n in by_f1] == sorted(r.f1 for r in results)
    assert choose(browser, "sort", "errors") == everything

    shot = browser.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)
    png = base64.b64decode(shot["data"])
    (tmp_path / "report.png").write_bytes(png)
    picture = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    assert picture.shape == (900, 1280) and picture.std() > 10  # something was drawn

    # Nothing but the file itself and data: URIs was requested, and nothing complained.
    requested = [
        e["params"]["request"]["url"] for e in browser.events if e["method"] == "Network.requestWillBeSent"
    ]
    assert requested and all(u.startswith(("file://", "data:")) for u in requested), requested
    assert problems(browser) == []


def problems(browser: Chromium) -> list:
    """Requests outside the file system, failed loads, script errors and console errors so far."""
    out = [
        e["params"]["request"]["url"]
        for e in browser.events
        if e["method"] == "Network.requestWillBeSent"
        and not e["params"]["request"]["url"].startswith(("file://", "data:"))
    ]
    out += [
        e["params"]
        for e in browser.events
        if e["method"] in ("Network.loadingFailed", "Runtime.exceptionThrown")
    ]
    out += [
        e["params"]
        for e in browser.events
        if e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert")
    ]
    out += [
        e["params"]["entry"]
        for e in browser.events
        if e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error"
    ]
    return out


def test_compare_page_in_headless_chromium(browser, tmp_path):
    from report_helpers import compare_page

    page, examples = compare_page(tmp_path)
    for domain in ("Network", "Runtime", "Log", "Page"):
        browser.call(f"{domain}.enable")
    browser.call("Page.navigate", url=page.resolve().as_uri())
    browser.wait_for("Page.loadEventFired")
    images = browser.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
    assert images == [True] * (2 * len(examples))  # two detectors per image; no plot file given
    ids = [ex["image_id"] for ex in examples]
    assert choose(browser, "sort", "name") == sorted(ids)
    assert len(choose(browser, "filter-kind", "tp")) > 0
    assert problems(browser) == []


def test_browser_checks_can_fail(browser, tmp_path):
    """The same checks catch a broken image, a remote request and a script error."""
    page = Path(tmp_path / "bad.html")
    page.write_text(
        "<!DOCTYPE html><html><head><link rel='icon' href='data:,'></head><body>"
        "<img alt='missing' src='missing.png'><img alt='remote' src='http://127.0.0.1:9/x.png'>"
        "<script>console.error('boom'); undefinedFunction();</script></body></html>"
    )
    for domain in ("Network", "Runtime", "Log", "Page"):
        browser.call(f"{domain}.enable")
    browser.call("Page.navigate", url=page.resolve().as_uri())
    browser.wait_for("Page.loadEventFired")
    images = dict(browser.evaluate("Array.from(document.images).map(i => [i.alt, i.naturalWidth > 0])"))
    assert images["missing"] is False
    requested = [
        e["params"]["request"]["url"] for e in browser.events if e["method"] == "Network.requestWillBeSent"
    ]
    assert any(u.startswith("http://") for u in requested)
    assert len(problems(browser)) >= 3
    assert any(e["method"] == "Runtime.exceptionThrown" for e in browser.events)
    assert any(
        e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] == "error" for e in browser.events
    )
