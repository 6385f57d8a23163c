"""Browser check of backend/frametime.py: Label Studio 1.23.2's editor, seeked to frame f, shows the decoded
frame FrameMap.decoded(f) and draws there the box the backend wrote for it.

Clips whose frames spell their own index (tests/test_frames.index_frame) with unusual timing: a 30 fps file
under the default framerate 24, a variable frame rate, a first timestamp of 1.0 s. Each project gets one
prediction written as backend/predict.py writes it: the box of decoded frame i is a function of i, and editor
frame f gets the box of the decoded frame it shows. In Chromium the test seeks with the editor's frame control,
reads which frame the <video> element shows (drawn into a canvas, its index decoded) and the Konva rectangle
drawn, and compares both with the mapping.
"""
from __future__ import annotations

import base64
import io
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from backend.frametime import FrameMap
from backend.results import masklet_to_videorectangle
from sam2_model.video.frames import VideoFileSource
from tests.clips import vfr_pts, write_clip
from tests.e2e.test_browser import EDITOR_TIMEOUT_MS, _drawn_rects, _open_task, _seek, page  # noqa: F401
from tests.test_frames import frame_index

pytestmark = pytest.mark.e2e

SIZE = (96, 128)  # (height, width)
TOLERANCE_PX = 0.5
CLIPS = {  # name: (timestamps, time base, framerate attribute, editor frame rate, editor frames to check)
    "file30_default24": (list(range(45)), Fraction(1, 30), None, 24.0, [2, 13, 25, 35]),
    "vfr": (vfr_pts(40, seed=2), Fraction(1, 1000), "30", 30.0, [5, 12, 20, 30]),
    # stamped from 1.0 s: Chromium keeps currentTime >= 1.0, so the editor cannot stay on frames 1..29 (a seek
    # there lands on frame 30, which shows the first frame as those would)
    "late_start": ([30 + i for i in range(45)], Fraction(1, 30), "30", 30.0, [31, 32, 50, 73]),
}
CONFIG = ('<View><Labels name="videoLabels" toName="video"><Label value="Car"/></Labels>'
          '<Video name="video" value="$video"{}/><VideoRectangle name="box" toName="video"/></View>')


def true_box(i: int) -> np.ndarray:
    """The box (x1, y1, x2, y2 pixels) written for decoded frame i: it moves 2 px right per frame."""
    return np.array([4.0 + 2 * i, 30.0, 24.0 + 2 * i, 50.0])


@pytest.fixture(scope="module")
def projects(label_studio, tmp_path_factory):
    """name -> (project id, task id, FrameMap)."""
    out = {}
    tmp = tmp_path_factory.mktemp("time-clips")
    for name, (pts, base, attribute, fps, _) in CLIPS.items():
        path = write_clip(tmp / f"{name}.mp4", pts, base, size=SIZE)
        with VideoFileSource(path) as src:
            frames = FrameMap.for_video(src.timeline, fps)
            n = src.frame_count
        config = CONFIG.format("" if attribute is None else f' framerate="{attribute}"')
        project = label_studio.api.create_project(f"time {name}", config)["id"]
        (task,) = label_studio.api.import_file(project, path)
        boxes = np.stack([true_box(i) for i in range(n)])
        region = masklet_to_videorectangle(boxes[frames.decoded_frames], region_id=f"track-{name}", from_name="box",
                                           to_name="video", frame_size=(SIZE[1], SIZE[0]), fps=fps,
                                           frames_count=frames.length, labels=["Car"], tolerance_px=TOLERANCE_PX)
        label_studio.api.create_prediction(task["id"], [region])
        out[name] = (project, task["id"], frames)
    return out


def _shown_frame(page) -> int:  # noqa: F811
    """The index spelled by the frame the <video> element shows now."""
    page.wait_for_function("() => { const v = document.querySelector('video'); return v && !v.seeking "
                           "&& v.readyState >= 2 }", timeout=EDITOR_TIMEOUT_MS)
    page.wait_for_timeout(150)
    height, width = SIZE
    url = page.evaluate(f"""() => {{ const v = document.querySelector('video');
        const c = document.createElement('canvas'); c.width = {width}; c.height = {height};
        c.getContext('2d').drawImage(v, 0, 0, {width}, {height}); return c.toDataURL('image/png') }}""")
    rgb = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.partition(",")[2]))).convert("RGB"))
    return frame_index(rgb)


@pytest.mark.parametrize("name", list(CLIPS))
def test_editor_frame_shows_the_mapped_frame_and_its_box(page, label_studio, projects, name):  # noqa: F811
    project, task, frames = projects[name]
    _open_task(page, label_studio.url, project, task)
    page.locator(".lsf-frames-control").wait_for(timeout=EDITOR_TIMEOUT_MS)
    length = page.evaluate("() => Htx.annotationStore.selected.regions[0].object.length")
    # round(duration * F): Chromium's duration of the clip stamped from 1.0 s is one frame short of the
    # timeline's end (74 frames, not 75), so the backend takes the editor's count from a region's framesCount
    assert abs(length - frames.length) <= (1 if name == "late_start" else 0), (length, frames.length)
    for f in CLIPS[name][4]:
        try:
            _seek(page, f)
        except Exception:
            state = page.evaluate("() => [Htx.annotationStore.selected.regions[0].object.frame, "
                                  "document.querySelector('video').currentTime, "
                                  "document.querySelector('.lsf-frames-control input')?.value]")
            raise AssertionError(f"seek to {f}: editor state {state}")
        shown = _shown_frame(page)
        assert shown == frames.decoded(f), (name, f, shown, frames.decoded(f))
        (rect,) = _drawn_rects(page, f"track-{name}")
        assert np.abs(np.asarray(rect) - true_box(shown)).max() <= TOLERANCE_PX + 1e-6, (name, f, rect, shown)
    assert page.errors == []
