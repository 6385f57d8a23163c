"""Test media, the README's label configs, and Label Studio projects built from them over the REST API."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from label_studio_sdk.converter.brush import mask2rle
from label_studio_sdk.label_interface import LabelInterface
from PIL import Image

from sam2_model.train.synthetic import SyntheticClip, generate_clip
from sam2_model.video.frames import write_h264
from tests.e2e.label_studio import LabelStudioAPI

VIDEO_CONFIG = (
    '<View><Labels name="videoLabels" toName="video"><Label value="Car"/><Label value="Person"/></Labels>'
    '<Video name="video" value="$video" framerate="25"/><VideoRectangle name="box" toName="video"/></View>'
)
SEQUENCE_CONFIG = """<View>
  <Image name="frames" valueList="$frames"/>
  <BrushLabels name="brush" toName="frames"><Label value="Car"/><Label value="Person"/></BrushLabels>
  <KeyPointLabels name="kp" toName="frames" smart="true">
    <Label value="Car"/><Label value="Person"/>
  </KeyPointLabels>
  <RectangleLabels name="rect" toName="frames" smart="true">
    <Label value="Car"/><Label value="Person"/>
  </RectangleLabels>
</View>"""

FPS = 25.0  # = the framerate in VIDEO_CONFIG
VIDEO_FRAMES = 30
FRAME_SIZE = (240, 320)  # (height, width), even: the H.264 video has exactly this size
SEQUENCE_LENGTH = 8
MIDDLE = VIDEO_FRAMES // 2  # 1-based frame of the user's VideoRectangle keyframe
K = 3  # item_index of the user's brush mask in the sequence
# generate_clip(LEAVING_SEED, leave_and_return=True): object LEAVING_OBJECT is out of the frame on 1-based frames
# 15..24 and back from 25 on, and moves slowly enough on frames 1..8 that keyframes skip frames
LEAVING_SEED, LEAVING_OBJECT = 3, 0


@dataclass
class E2EMedia:
    """A synthetic clip with ground truth, as an H.264 file and as PNG frames (the first SEQUENCE_LENGTH)."""

    clip: SyntheticClip
    video: Path
    frames: list[Path]


def make_media(folder: Path, seed: int = 5) -> E2EMedia:
    clip = generate_clip(seed, num_frames=VIDEO_FRAMES, size=FRAME_SIZE, num_objects=2, fps=FPS)
    video = folder / "clip.mp4"
    write_h264(video, clip.frames, FPS)
    frames = []
    for i in range(SEQUENCE_LENGTH):
        path = folder / f"frame_{i:03d}.png"
        Image.fromarray(clip.frames[i]).save(path)
        frames.append(path)
    return E2EMedia(clip, video, frames)


def make_leaving_media(folder: Path) -> E2EMedia:
    """A clip whose object LEAVING_OBJECT leaves the frame and comes back, as an H.264 file (no PNG frames)."""
    clip = generate_clip(LEAVING_SEED, num_frames=VIDEO_FRAMES, size=FRAME_SIZE, num_objects=2, fps=FPS,
                         leave_and_return=True)
    video = folder / "leaving.mp4"
    write_h264(video, clip.frames, FPS)
    return E2EMedia(clip, video, [])


@dataclass
class Project:
    id: int
    label_config: str
    tasks: list[dict]


def create_video_project(api: LabelStudioAPI, media: E2EMedia, title: str = "SAM 2 video") -> Project:
    """A video project with one task: the uploaded clip, data {"video": "/data/upload/<project>/<name>.mp4"}."""
    project = api.create_project(title, VIDEO_CONFIG)["id"]
    return Project(project, VIDEO_CONFIG, api.import_file(project, media.video))


def create_sequence_project(api: LabelStudioAPI, media: E2EMedia, title: str = "SAM 2 frames") -> Project:
    """An image-sequence project with one task {"frames": ["/data/upload/<project>/<uuid>-frame_000.png", ...]}:
    the frames are uploaded without making tasks, then one task lists their URLs in frame order."""
    project = api.create_project(title, SEQUENCE_CONFIG)["id"]
    urls = api.upload_files(project, media.frames)
    return Project(project, SEQUENCE_CONFIG, api.import_tasks(project, [{"frames": urls}]))


@dataclass
class Connected:
    """Both projects, connected to one ML backend (the ML backend records' ids)."""

    video: Project
    sequence: Project
    video_ml: int
    sequence_ml: int


def connect_projects(api: LabelStudioAPI, media: E2EMedia, backend_url: str, title: str) -> Connected:
    """A video and an image-sequence project with one task each, both connected to `backend_url`."""
    video = create_video_project(api, media, f"{title} video")
    sequence = create_sequence_project(api, media, f"{title} frames")
    video_ml = api.connect_ml_backend(video.id, backend_url, title=title)
    sequence_ml = api.connect_ml_backend(sequence.id, backend_url, title=title)
    assert video_ml["readable_state"] == sequence_ml["readable_state"] == "Connected", (video_ml, sequence_ml)
    return Connected(video, sequence, video_ml["id"], sequence_ml["id"])


# ---------------------------------------------------------------- what the editor sends


def videorectangle_keyframe(frame: int, box_px: np.ndarray, *, region_id: str = "user-box",
                            labels: tuple[str, ...] = ("Car",), frame_size: tuple[int, int] = FRAME_SIZE,
                            frames_count: int = VIDEO_FRAMES) -> dict:
    """A VideoRectangle drawn on 1-based `frame`, box (x1, y1, x2, y2) in pixels, as the editor sends it
    (frame_size: (height, width) of a video of frames_count frames)."""
    h, w = frame_size
    x1, y1, x2, y2 = (float(v) for v in box_px)
    return {
        "id": region_id, "type": "videorectangle", "from_name": "box", "to_name": "video", "origin": "manual",
        "value": {"framesCount": frames_count, "duration": frames_count / FPS, "labels": list(labels),
                  "sequence": [{"frame": frame, "time": (frame - 1) / FPS, "enabled": True, "rotation": 0,
                                "x": 100 * x1 / w, "y": 100 * y1 / h,
                                "width": 100 * (x2 - x1 + 1) / w, "height": 100 * (y2 - y1 + 1) / h}]},
    }


def brush_on_frame(mask: np.ndarray, item_index: int, *, region_id: str = "user-mask",
                   labels: tuple[str, ...] = ("Car",)) -> dict:
    """A BrushLabels region painted on frame `item_index` of the sequence, as the editor sends it."""
    return {
        "id": region_id, "type": "brushlabels", "from_name": "brush", "to_name": "frames", "origin": "manual",
        "item_index": item_index, "original_width": int(mask.shape[1]), "original_height": int(mask.shape[0]),
        "image_rotation": 0,
        "value": {"format": "rle", "rle": [int(v) for v in mask2rle(mask.astype(np.uint8) * 255)],
                  "brushlabels": list(labels)},
    }


def user_keyframe(media: E2EMedia) -> dict:
    """The user's VideoRectangle keyframe on frame MIDDLE, around the clip's first object."""
    return videorectangle_keyframe(MIDDLE, media.clip.boxes()[MIDDLE - 1, 0])


def user_mask(media: E2EMedia) -> np.ndarray:
    """The clip's first object on sequence frame K: the mask the user paints (bool (H, W))."""
    return media.clip.masks[K, 0]


def predict_from_saved_annotations(api: LabelStudioAPI, projects: Connected, media: E2EMedia) -> dict[str, tuple]:
    """The user saves an annotation in each project (the keyframe; the brush mask on frame K), then runs
    Retrieve Predictions, which tracks from it. {"video" | "sequence": (annotation, the stored prediction)}."""
    saved = {}
    cases = [("video", projects.video, user_keyframe(media)),
             ("sequence", projects.sequence, brush_on_frame(user_mask(media), K))]
    for name, project, prompt in cases:
        (task,) = project.tasks
        annotation = api.request("POST", f"/api/tasks/{task['id']}/annotations", json={"result": [prompt]}).json()
        processed = api.retrieve_predictions(project.id)["processed_items"]
        (stored,) = api.predictions(task["id"])
        assert processed == 1, f"Retrieve Predictions processed {processed} tasks of project {name}"
        saved[name] = (annotation, stored)
    return saved


def prediction_errors(label_config: str, prediction: dict) -> list[str]:
    """label_studio_sdk's LabelInterface verdict on a stored or returned prediction ([] = valid)."""
    return LabelInterface(label_config).validate_prediction(
        {"result": prediction["result"], "score": prediction.get("score")}, return_errors=True) or []
