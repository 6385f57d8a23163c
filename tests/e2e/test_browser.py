"""Browser check: headless Debian Chromium, driven by Playwright, shows our backend's predictions in the editor.

The predictions come from the real backend (gunicorn, random-weight checkpoint: conftest's `backend_server`):
the user's saved keyframe / brush mask is tracked by Retrieve Predictions. Then the test logs in to the test
Label Studio as a person would, opens the video task and the image-sequence task, and compares what the
editor loaded (its region list and its own store, `window.Htx`) with the predictions stored in Label Studio, and
what it draws (its Konva canvas, `window.Konva`): the video box on every frame between keyframes and its absence
where the object is out of the frame (a clip where the object leaves and comes back, with the true track written
by backend.results), the user's brush mask on its page. Screenshots go to artifacts/e2e/. No browser is
downloaded: Playwright drives /usr/bin/chromium (scripts/e2e_setup.sh installs it).
"""
from __future__ import annotations

import base64
import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import sync_playwright

from backend.results import masklet_to_videorectangle, sequence_to_boxes
from config.settings import Settings
from tests.e2e.label_studio import PASSWORD, USERNAME
from tests.e2e.projects import (
    FPS,
    FRAME_SIZE,
    K,
    LEAVING_OBJECT,
    MIDDLE,
    VIDEO_FRAMES,
    Connected,
    Project,
    connect_projects,
    create_video_project,
    make_leaving_media,
    predict_from_saved_annotations,
    user_mask,
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


def _drawn_boxes(page) -> list[list[float] | None]:
    """What the editor draws for the first region on every 1-based frame 1..VIDEO_FRAMES: its shape in pixels
    (x1, y1, x2, y2) where the editor's own drawing rule holds (isInLifespan(frame) and getShape(frame), as its
    VideoRectangle view tests before drawing the box), else None."""
    shapes = page.evaluate("""(n) => { const r = Htx.annotationStore.selected.regions[0]; const out = [];
        for (let f = 1; f <= n; f++) { const s = r.getShape(f);
            out.push(r.isInLifespan(f) && s ? [s.x, s.y, s.x + s.width, s.y + s.height] : null) }
        return out }""", VIDEO_FRAMES)
    height, width = FRAME_SIZE
    scale = np.array([width, height, width, height]) / 100
    return [None if s is None else list(np.asarray(s) * scale) for s in shapes]


def _compare_drawn(drawn: list, track: np.ndarray, tolerance: float) -> None:
    """The editor hides the region exactly where `track` (frames x 4, NaN rows) is absent, and draws a box within
    `tolerance` px of the track's on every other frame."""
    for frame, (box, tracked) in enumerate(zip(drawn, track), start=1):
        if np.isnan(tracked).any():
            assert box is None, f"frame {frame}: drawn at {box} where the track says absent"
        else:
            assert box is not None, f"frame {frame}: hidden where the track says present"
            assert np.abs(np.asarray(box) - tracked).max() <= tolerance + 1e-6, (frame, box, tracked)


def _drawn_layers(page) -> int:
    """Konva images the editor draws over the frame image (brush layers): those larger than the image itself."""
    height, width = FRAME_SIZE
    return page.evaluate(f"""() => Konva.stages.flatMap(s => s.find(n => n.getClassName() === 'Image'
        && n.isVisible() && n.name() !== 'highlight' && n.width() > {width})).length""")


def _drawn_brush(page, region_id: str) -> np.ndarray:
    """The brush layer the editor drew for the region, scaled to the image's size: bool (H, W), alpha > 0."""
    height, width = FRAME_SIZE
    url = page.evaluate(f"""(id) => {{
        const r = Htx.annotationStore.selected.regions.find(r => r.id.split('#')[0] === id);
        if (!r || !r.layerRef) return null;
        const c = document.createElement('canvas'); c.width = {width}; c.height = {height};
        c.getContext('2d').drawImage(r.layerRef.toCanvas(), 0, 0, {width}, {height});
        return c.toDataURL('image/png') }}""", region_id)
    assert url, f"region {region_id} has no drawn layer"
    rgba = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.partition(",")[2]))).convert("RGBA"))
    return rgba[..., 3] > 0


def _drawn_rects(page, region_id: str) -> list[list[float]]:
    """The Konva rectangles the editor draws for the region now (x1, y1, x2, y2 in video pixels)."""
    return page.evaluate("""(id) => Konva.stages.flatMap(s => s.find(n => n.getClassName() === 'Rect'
        && n.id().split('#')[0] === id && n.isVisible()).map(r => [r.x(), r.y(), r.x() + r.width(),
        r.y() + r.height()]))""", region_id)


def _seek(page, frame: int) -> None:
    page.click(".lsf-frames-control")
    page.fill(".lsf-frames-control input", str(frame))
    page.press(".lsf-frames-control input", "Enter")
    page.wait_for_function(f"() => Htx.annotationStore.selected.names.get('video').frame === {frame}")


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

    # Every frame, keyframe or not, is drawn as our model of the editor's interpolation says (results.py), which
    # the keyframe tests hold within BOX_TOLERANCE_PX of the track.
    height, width = FRAME_SIZE
    _compare_drawn(_drawn_boxes(page), sequence_to_boxes(track["value"]["sequence"], VIDEO_FRAMES, (width, height)),
                   0.0)

    # The prompted middle frame shows the backend's box there (keyframe values, as stored).
    (keyframe,) = [k for k in track["value"]["sequence"] if k["frame"] == MIDDLE]
    assert keyframe["enabled"]
    _seek(page, MIDDLE)
    shape = page.evaluate(f"() => Htx.annotationStore.selected.regions[0].getShape({MIDDLE})")
    for key in ("x", "y", "width", "height"):
        assert shape[key] == pytest.approx(keyframe[key]), key
    page.wait_for_timeout(500)
    _shot(page, artifacts, f"video-frame-{MIDDLE}")
    assert page.errors == []


def test_sequence_task_shows_a_mask_on_every_frame(page, label_studio, predicted, artifacts, e2e_media):
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

    # Page 1 draws no mask when no region lies on frame 0; frame K (page K + 1) draws the user's own mask,
    # returned unchanged by the backend: the brush layer the editor painted, read back at the image's size.
    if 0 not in {r["item_index"] for r in regions}:
        assert _drawn_layers(page) == 0
    (on_k,) = [r for r in stored["result"] if r["item_index"] == K and r.get("parentID") == "user-mask"]
    for _ in range(K):
        page.click(".lsf-pagination__btn_arrow-right:not(.lsf-pagination__btn_arrow-right-double)")
    page.wait_for_function(f"() => document.querySelector('.lsf-pagination__page-indicator')"
                           f".innerText.startsWith('{K + 1} ')")
    page.wait_for_timeout(500)  # the brush layer redraws after the page switch
    _shot(page, artifacts, f"sequence-frame-{K + 1}")
    assert _drawn_layers(page) > 0
    drawn, painted = _drawn_brush(page, on_k["id"]), user_mask(e2e_media)
    assert (drawn & painted).sum() / (drawn | painted).sum() >= 0.9, "the mask drawn is not the user's"
    assert page.errors == []


@pytest.fixture(scope="module")
def leaving(label_studio, tmp_path_factory) -> tuple[Project, np.ndarray, dict]:
    """A video project on a clip whose object leaves and comes back, with one prediction: the object's true
    boxes (pixel edges, NaN where absent) as backend.results writes them at the default BOX_TOLERANCE_PX.
    (project, the true boxes (frames x 4), the region)."""
    media = make_leaving_media(tmp_path_factory.mktemp("leaving"))
    project = create_video_project(label_studio.api, media, "browser leaving")
    boxes = media.clip.boxes()[:, LEAVING_OBJECT].copy()
    boxes[:, 2:] += 1  # inclusive last pixel -> pixel edge, as results.mask_to_box
    height, width = FRAME_SIZE
    region = masklet_to_videorectangle(boxes, region_id="leaving", from_name="box", to_name="video",
                                       frame_size=(width, height), fps=FPS, labels=["Car"],
                                       tolerance_px=Settings().box_tolerance_px)
    (task,) = project.tasks
    label_studio.api.create_prediction(task["id"], [region])
    return project, boxes, region


def test_editor_draws_the_track_between_keyframes_and_hides_it_while_absent(page, label_studio, leaving,
                                                                           artifacts):
    project, boxes, region = leaving
    (task,) = project.tasks
    absent = np.isnan(boxes).any(axis=1)
    keyframes = {k["frame"] for k in region["value"]["sequence"]}
    between = [f for f in range(1, VIDEO_FRAMES + 1) if f not in keyframes and not absent[f - 1]]
    assert absent[1:-1].any() and not absent[0] and not absent[-1], "the object must leave and come back"
    assert len(between) >= 3, f"keyframes on {sorted(keyframes)}: too few frames between them to check"

    _open_task(page, label_studio.url, project.id, task["id"])
    page.locator(".lsf-frames-control").wait_for(timeout=EDITOR_TIMEOUT_MS)
    assert [r["keyframes"] for r in _editor_regions(page)] == [sorted(keyframes)]
    _compare_drawn(_drawn_boxes(page), boxes, Settings().box_tolerance_px)

    # The player draws it so: on every frame between keyframes the rectangle on the canvas (video pixels) is
    # within tolerance of the true box; on two frames of the absence nothing is drawn.
    gone = np.flatnonzero(absent) + 1  # 1-based
    for frame in [*between, int(gone[1]), int(gone[-1])]:
        _seek(page, frame)
        page.wait_for_timeout(100)
        rects = _drawn_rects(page, region["id"])
        if absent[frame - 1]:
            assert rects == [], f"frame {frame}: drawn while the object is out of the frame"
        else:
            (rect,) = rects
            assert np.abs(np.asarray(rect) - boxes[frame - 1]).max() <= Settings().box_tolerance_px + 1e-6, \
                (frame, rect, boxes[frame - 1])
    _shot(page, artifacts, f"leaving-frame-{frame}")
    assert page.errors == []

