"""The reader-study page in a real browser: headless Chromium (Debian's chromium + chromedriver, via selenium).

Two scripted readers answer every item of a generated study from file://; the first reloads the page mid-study
and must resume where it stopped with its half-given answers restored. A screenshot is checked for the three
linked views, and clicking / scrolling a view moves the shared cursor. The downloaded exports are read back by
`analyse` and its numbers compared with the scripted answers. `make test` installs the browser when it is
missing (as root); without one this test is skipped with the reason.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from reader_study_helpers import METHODS, scripted_answers, write_method_folders

from bundle.evaluation.reader_study.analysis import analyse
from bundle.evaluation.reader_study.study import key_path_for, make_study

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
selenium = pytest.importorskip("selenium", reason="selenium is not installed (pip install -r requirements-dev.txt)")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="no chromium/chromedriver on PATH: `make test` installs them as root (apt-get install chromium "
    "chromium-driver)",
)


@pytest.fixture
def browser(tmp_path, monkeypatch):
    """browser(name) -> a fresh headless Chromium with its own profile (a reader's own machine) and downloads."""
    monkeypatch.setenv("SE_AVOID_STATS", "true")  # selenium's usage statistics: no network here
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    started = []

    def start(name: str):
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for arg in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1400,1400",
            "--force-device-scale-factor=1",
            "--no-first-run",
        ):
            opts.add_argument(arg)  # fmt: skip
        opts.add_argument(f"--user-data-dir={tmp_path / name / 'profile'}")
        downloads = tmp_path / name / "downloads"
        downloads.mkdir(parents=True)
        drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
        started.append(drv)
        drv.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        drv.downloads = downloads
        drv.set_page_load_timeout(30)
        return drv

    yield start
    for drv in started:
        drv.quit()


def _wait(drv, script: str, timeout: float = 10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = drv.execute_script(script)
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {script}")


def _answer(drv, item: dict, answers: dict, only: tuple[str, ...] | None = None) -> None:
    from selenium.webdriver.common.by import By

    for qid, value in answers.items():
        if only is not None and qid not in only:
            continue
        if isinstance(value, dict):
            for label, score in value.items():
                drv.find_element(By.CSS_SELECTOR, f'input[name="{qid}:{label}"][value={str(score)!r}]').click()
        elif qid == "comment":
            drv.find_element(By.CSS_SELECTOR, f"textarea[name={qid!r}]").send_keys(value)
        else:
            drv.find_element(By.CSS_SELECTOR, f"input[name={qid!r}][value={value!r}]").click()


def _views_in_screenshot(drv, label: str) -> None:
    """The three canvases of panel `label` are on screen, show the volume (not blank) and differ (3 planes)."""
    from PIL import Image
    from selenium.webdriver.common.by import By

    shot = Image.open(io.BytesIO(drv.get_screenshot_as_png())).convert("L")
    crops = []
    for plane in ("axial", "coronal", "sagittal"):
        el = drv.find_element(By.ID, f"view-{label}-{plane}")
        r = el.rect
        crop = np.asarray(shot.crop((r["x"], r["y"], r["x"] + r["width"], r["y"] + r["height"])), dtype=float)
        assert crop.shape == (r["height"], r["width"]) and r["width"] >= 280, (plane, crop.shape)
        assert crop.std() > 20, f"{plane} view of {label} looks blank in the screenshot (std {crop.std():.1f})"
        crops.append(crop)
    assert np.abs(crops[0] - crops[1]).mean() > 5 and np.abs(crops[0] - crops[2]).mean() > 5


def _run_reader(drv, index: Path, key: dict, reader: int, reload_at: int | None = None) -> dict:
    from selenium.webdriver.common.by import By

    drv.get(index.as_uri())
    drv.find_element(By.ID, "reader").send_keys(f"reader{reader}")
    drv.find_element(By.ID, "begin").click()
    for n, item in enumerate(key["items"]):
        _wait(drv, f"return window.VIEWER.ready === {item['item']!r}")
        assert drv.find_element(By.ID, "progress").text == f"Case {n + 1} of {len(key['items'])}"
        answers = scripted_answers(item, reader)
        if n == 0 and reader == 0:
            _views_in_screenshot(drv, "A")
            _views_in_screenshot(drv, "Reference")
            _linked_cursor(drv)
        if n == reload_at:
            _answer(drv, item, answers, only=("preference", "confidence"))
            drv.refresh()  # a reload mid-item: the page resumes this item with the answers given so far
            _wait(drv, f"return window.VIEWER && window.VIEWER.ready === {item['item']!r}")
            assert drv.find_element(By.ID, "progress").text == f"Case {n + 1} of {len(key['items'])}"
            pref = answers["preference"]
            assert drv.find_element(By.CSS_SELECTOR, f"input[name='preference'][value={pref!r}]").is_selected()
            answers = {k: v for k, v in answers.items() if k not in ("preference", "confidence")}
        _answer(drv, item, answers)
        time.sleep(0.05)
        drv.find_element(By.ID, "next").click()
    assert drv.find_element(By.ID, "done").is_displayed()
    errors = [e for e in drv.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    before = set(drv.downloads.iterdir())
    drv.find_element(By.ID, "export").click()
    end = time.monotonic() + 10
    while time.monotonic() < end:
        new = [p for p in set(drv.downloads.iterdir()) - before if p.suffix == ".json"]
        if new:
            time.sleep(0.2)
            return {"path": new[0], "data": json.loads(new[0].read_text())}
        time.sleep(0.1)
    raise AssertionError("the export did not download")


def _linked_cursor(drv) -> None:
    """A click on the axial view sets x and y of the shared cursor (the coronal slice follows); scrolling moves z."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    before = drv.execute_script("return window.VIEWER.cursor.slice()")
    axial = drv.find_element(By.ID, "view-A-axial")
    ActionChains(drv).move_to_element_with_offset(axial, -50, -40).click().perform()
    after = drv.execute_script("return window.VIEWER.cursor.slice()")
    assert after[0] < before[0] and after[1] > before[1] and after[2] == before[2], (before, after)
    coronal_label = drv.execute_script("return document.getElementById('cursor-pos').textContent")
    assert coronal_label == "cursor " + ", ".join(str(c + 1) for c in after)
    drv.execute_script(
        "arguments[0].dispatchEvent(new WheelEvent('wheel', {deltaY: -100, bubbles: true, cancelable: true}))", axial
    )
    assert drv.execute_script("return window.VIEWER.cursor[2]") == after[2] + 1
    drv.find_element(By.ID, "zoom-in").click()
    assert drv.execute_script("return window.VIEWER.zoom") == pytest.approx(1.5)
    mean = (
        "const c = arguments[0], d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i]; return s / (d.length / 4);"
    )
    before = drv.execute_script(mean, axial)
    drv.execute_script(  # a narrow window at a low level brightens the image: window/level is applied
        "for (const [id, v] of [['window', 40], ['level', 30]]) { const e = document.getElementById(id);"
        " e.value = v; e.dispatchEvent(new Event('input')); }"
    )
    assert drv.execute_script("return [window.VIEWER.window, window.VIEWER.level]") == [40, 30]
    assert drv.execute_script(mean, axial) > before + 10
    drv.find_element(By.ID, "reset").click()


def test_scripted_readers_in_chromium(tmp_path, browser):
    vols = write_method_folders(tmp_path / "vols")
    study = tmp_path / "study"
    candidates = {m: vols / m for m in METHODS}
    key = make_study(candidates, study, reference=vols / "hr", seed=7)
    exports = [_run_reader(browser("first"), study / "index.html", key, 0, reload_at=1)]
    exports.append(_run_reader(browser("second"), study / "index.html", key, 1))

    for exp in exports:
        assert exp["data"]["study_id"] == key["study_id"] and exp["data"]["complete"] is True
        assert len(exp["data"]["answers"]) == len(key["items"])
        assert all(a["time_s"] >= 0 for a in exp["data"]["answers"])
    stats = analyse([e["path"] for e in exports], key_path_for(study), tmp_path / "report", reps=200)

    n = len(key["items"])
    even = sum(int(it["item"].split("_")[1]) % 2 == 0 for it in key["items"])
    pref = stats["questions"]["preference"]["methods"]
    assert pref[METHODS[0]]["chosen"] == n + even and pref[METHODS[0]]["shown"] == 2 * n
    assert pref[METHODS[1]]["chosen"] == n - even
    assert pref[METHODS[2]]["chosen"] == 0
    conf = stats["questions"]["confidence"]["methods"]
    for i, m in enumerate(METHODS):
        assert conf[m]["mean"] == pytest.approx(((5 - i) + 3) / 2)
    assert stats["questions"]["hallucination"]["none"] == 2 * n
    assert sorted(t["text"] for t in stats["questions"]["comment"]["texts"]) == ["reader 0 note", "reader 1 note"]
    assert stats["completion"] == {"reader0": n, "reader1": n}
    assert (tmp_path / "report" / "report.png").stat().st_size > 1000
    assert "## preference" in (tmp_path / "report" / "report.md").read_text()


def _rect_overlap(a: dict, b: dict) -> bool:
    return (
        a["x"] < b["x"] + b["width"]
        and b["x"] < a["x"] + a["width"]
        and a["y"] < b["y"] + b["height"]
        and b["y"] < a["y"] + a["height"]
    )


def _open_first_item(drv, study: Path, key: dict) -> None:
    from selenium.webdriver.common.by import By

    drv.get((study / "index.html").as_uri())
    drv.find_element(By.ID, "reader").send_keys("layout")
    drv.find_element(By.ID, "begin").click()
    _wait(drv, f"return window.VIEWER.ready === {key['items'][0]['item']!r}")


def test_views_fill_the_window_with_markers_and_labels_outside_and_choices_that_fit(tmp_path, browser):
    """In a 1400-pixel window: four panels (three candidates and the reference) get views of >= 280 px (twice
    the old 200 px in area), three panels >= 400 px; every view carries L/R, A/P, S/I markers from the affine
    on its edges (x flipped here: +x points left) and its slice label above, outside the image; "neither" is
    offered only where two candidates are shown, and three are asked for the "sharpest"."""
    from selenium.webdriver.common.by import By

    flipped = np.diag([-1.0, 1.0, 2.0, 1.0])  # LAS: +x left, +y anterior, +z superior
    vols = write_method_folders(tmp_path / "vols", affine=flipped)
    drv = browser("layout")
    expected = {  # plane -> (left, right, top, bottom) edge markers for LAS
        "axial": ("R", "L", "A", "P"),
        "coronal": ("R", "L", "S", "I"),
        "sagittal": ("P", "A", "S", "I"),
    }
    for design, panels, least in (("all", 4, 280), ("pairs", 3, 400)):
        study = tmp_path / f"study_{design}"
        key = make_study({m: vols / m for m in METHODS}, study, reference=vols / "hr", seed=3, design=design)
        _open_first_item(drv, study, key)
        labels = key["items"][0]["labels"]
        assert len(drv.find_elements(By.CSS_SELECTOR, ".panel")) == panels
        for title in [*labels, "Reference"]:
            for plane, (left, right, top, bottom) in expected.items():
                view = drv.find_element(By.ID, f"view-{title}-{plane}")
                assert view.rect["width"] >= least and view.rect["height"] == view.rect["width"], (design, view.rect)
                marks = {
                    e: drv.find_element(By.ID, f"marker-{title}-{plane}-{e}")
                    for e in ("left", "right", "top", "bottom")
                }
                assert [marks[e].text for e in ("left", "right", "top", "bottom")] == [left, right, top, bottom]
                for e, m in marks.items():
                    assert not _rect_overlap(m.rect, view.rect), (plane, e)
                label = drv.find_element(By.ID, f"label-{title}-{plane}")
                assert re.fullmatch(rf"{plane} \d+/\d+", label.text) and not _rect_overlap(label.rect, view.rect)
                assert label.rect["y"] + label.rect["height"] <= view.rect["y"]
        page_width = drv.execute_script("return document.documentElement.scrollWidth")
        assert page_width <= 1400, "the panels overflow the window"
        offered = [
            e.find_element(By.XPATH, "..").text.strip()
            for e in drv.find_elements(By.CSS_SELECTOR, "input[name='hallucination']")
        ]
        legend = drv.find_element(By.CSS_SELECTOR, "fieldset[data-qid='sharpness'] legend").text
        if len(labels) > 2:
            assert offered == [*labels, "none of them"] and legend == "Which image is sharpest?"
        else:
            assert offered == [*labels, "neither"] and legend == "Which image is sharper?"
