"""Browser check: headless Debian Chromium, driven by Playwright, shows our backend's predictions in the editor.

The predictions come from the real backend (gunicorn, random-weight checkpoint: conftest's `backend_server`):
the user's saved keyframe / brush mask is tracked by Retrieve Predictions. Then the test logs in to the test
Label Studio as a person would, opens the video task and the image-sequence task, and compares what the
editor loaded (its region list and its own store, `window.Htx`) with the predictions stored in Label Studio.
Screenshots go to artifacts/e2e/. No browser is downloaded: Playwright drives /usr/bin/chromium
(scripts/e2e_setup.sh installs it).
"""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from tests.e2e.label_studio import PASSWORD, USERNAME
from tests.e2e.projects import (
    FPS,
    FRAME_SIZE,
    K,
    MIDDLE,
    VIDEO_FRAMES,
    Connected,
    connect_projects,
    predict_from_saved_annotations,
)

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
# Without the networking flags Chromium keeps calling Google's hosts, which this machine's network refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
EDITOR_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def page(label_studio, tmp_path_factory) -> Iterator:
    """A logged-in Playwright page (1400x900) in a fresh Chromium profile; page errors fail the test."""
    assert shutil.which(CHROMIUM), f"{CHROMIUM} is missing: run `bash scripts/e2e_setup.sh`"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, args=CHROMIUM_ARGS,
            headless=True, viewport={"width": 1400, "height": 900})
        page = browser.pages[0] if browser.pages else browser.new_page()
        page.errors = []
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        page.goto(f"{label_studio.url}/user/login/")
        page.fill('input[name="email"]', USERNAME)
        page.fill('input[name="password"]', PASSWORD)
        page.click('button[type="submit"]')
        page.wait_for_url(lambda url: "/user/login" not in url, timeout=EDITOR_TIMEOUT_MS)
        yield page
        browser.close()


@pytest.fixture(scope="module")
def predicted(label_studio, backend_server, e2e_media) -> Connected:
    """This module's projects with our backend's predictions: tracked by Retrieve Predictions from the user's
    saved annotation, which is then deleted, so the editor opens each task prefilled from the prediction."""
    projects = connect_projects(label_studio.api, e2e_media, backend_server, "browser")
    for annotation, _ in predict_from_saved_annotations(label_studio.api, projects, e2e_media).values():
        label_studio.api.request("DELETE", f"/api/annotations/{annotation['id']}", expect=(204,))
    return projects


def _open_task(page, url: str, project: int, task: int) -> None:
    page.goto(f"{url}/projects/{project}/data?task={task}")
    page.locator(".lsf-outliner-item").first.wait_for(timeout=EDITOR_TIMEOUT_MS)


def _editor_regions(page) -> list[dict]:
    """The regions of the annotation open in the editor (Label Studio prefills it from the prediction)."""
    return page.evaluate("""() => Htx.annotationStore.selected.regions.map(r => ({
        type: r.type, origin: r.origin, score: r.score, item_index: r.item_index ?? null,
        labels: r.labeling ? r.labeling.selectedLabels.map(l => l.value) : [],
        keyframes: r.sequence ? r.sequence.map(k => k.frame) : null}))""")


def _shot(page, artifacts: Path, name: str) -> None:
    page.mouse.move(1, 1)  # no tooltip over the editor
    page.screenshot(path=str(artifacts / f"browser-{name}.png"))


def test_video_task_shows_the_predicted_track(page, label_studio, predicted, artifacts):
    project, (task,) = predicted.video, predicted.video.tasks
    (stored,) = label_studio.api.predictions(task["id"])
    _open_task(page, label_studio.url, project.id, task["id"])
    # The H.264 file really plays in Chromium: decoded size and duration.
    page.wait_for_function("() => { const v = document.querySelector('video'); return v && v.readyState >= 2 }",
                           timeout=EDITOR_TIMEOUT_MS)
    width, height, duration = page.evaluate(
        "() => { const v = document.querySelector('video'); return [v.videoWidth, v.videoHeight, v.duration] }")
    assert (height, width) == FRAME_SIZE and duration == pytest.approx(VIDEO_FRAMES / FPS, abs=0.05)
    page.locator(".lsf-frames-control").wait_for(timeout=EDITOR_TIMEOUT_MS)  # the player replaced the spinner
    page.wait_for_timeout(500)
    _shot(page, artifacts, "video-frame-1")

    regions = _editor_regions(page)
    assert len(regions) == len(stored["result"]) == page.locator(".lsf-outliner-item").count()
    (region,), (track,) = regions, stored["result"]  # one object: the user's box
    assert region["type"] == "videorectangleregion" and region["origin"] == "prediction"
    assert region["labels"] == ["Car"]
    assert region["keyframes"] == [k["frame"] for k in track["value"]["sequence"]]
    assert len(region["keyframes"]) > 1, "the track does not leave the prompted frame"

    # The prompted middle frame shows the backend's box there (keyframe values, as stored).
    (keyframe,) = [k for k in track["value"]["sequence"] if k["frame"] == MIDDLE]
    assert keyframe["enabled"]
    page.click(".lsf-frames-control")
    page.fill(".lsf-frames-control input", str(MIDDLE))
    page.press(".lsf-frames-control input", "Enter")
    page.wait_for_function(f"() => Htx.annotationStore.selected.regions[0].object.frame === {MIDDLE}")
    shape = page.evaluate(f"() => Htx.annotationStore.selected.regions[0].getShape({MIDDLE})")
    for key in ("x", "y", "width", "height"):
        assert shape[key] == pytest.approx(keyframe[key]), key
    page.wait_for_timeout(500)
    _shot(page, artifacts, f"video-frame-{MIDDLE}")
    assert page.errors == []


def test_sequence_task_shows_a_mask_on_every_frame(page, label_studio, predicted, artifacts):
    project, (task,) = predicted.sequence, predicted.sequence.tasks
    (stored,) = label_studio.api.predictions(task["id"])
    _open_task(page, label_studio.url, project.id, task["id"])
    page.locator(".lsf-image img, .lsf-image canvas").first.wait_for(timeout=EDITOR_TIMEOUT_MS)
    _shot(page, artifacts, "sequence-frame-1")

    regions = _editor_regions(page)
    assert page.locator(".lsf-outliner-item").count() == len(regions) == len(stored["result"])
    assert sorted(r["item_index"] for r in regions) == sorted(r["item_index"] for r in stored["result"])
    assert K in {r["item_index"] for r in regions}, "no mask on the frame the user painted"
    assert all(r["type"] == "brushregion" and r["origin"] == "prediction" and r["labels"] == ["Car"]
               for r in regions)

    # Frame K (page K + 1) shows the user's own mask, returned unchanged by the backend.
    for _ in range(K):
        page.click(".lsf-pagination__btn_arrow-right:not(.lsf-pagination__btn_arrow-right-double)")
    page.wait_for_function(f"() => document.querySelector('.lsf-pagination__page-indicator')"
                           f".innerText.startsWith('{K + 1} ')")
    page.wait_for_timeout(500)  # the brush layer redraws after the page switch
    _shot(page, artifacts, f"sequence-frame-{K + 1}")
    assert page.errors == []
