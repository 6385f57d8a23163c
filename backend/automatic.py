"""Automatic masklets (AUTO_MASKLETS): one prompt-less task -> one prediction of every object found.

- video: `sam2_model.video.discovery.track_everything` (discover on the first frame and every AUTO_EVERY
  frames, track frame by frame, end tracks absent AUTO_END_AFTER frames), each object one videorectangle;
- image sequence: the same over the frames, each object a brush (or bitmask) region on every frame it is seen;
- single image: the generator's masks, best predicted IoU first, one mask region each.
Every region carries the default label (`auto_label`) and, as score, the predicted IoU of the mask the
object was discovered with. At most AUTO_MAX_OBJECTS objects per task. Used by pre-annotation jobs only
(backend/preannotate/worker.py); interactive /predict never answers without prompts.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from config.settings import Settings
from sam2_model.automatic import MaskGenerator
from sam2_model.video.discovery import track_everything

from .frametime import FrameMap
from .labelconfig import LabelConfig, LabelConfigError
from .media import load_frames, validate_image
from .predict import TaskPredictor
from .results import mask_to_box, mask_to_region, masklet_to_videorectangle, prediction

AUTOMATIC = "automatic"  # JobSpec.source of automatic jobs


@dataclass(frozen=True)
class AutoOptions:
    """The AUTO_* settings a prediction depends on (the job key's signature covers all of them)."""

    label: str | None = None
    every: int = 30
    max_objects: int = 20
    end_after: int = 30  # 0: never end a track
    points_per_side: int = 16
    pred_iou_thresh: float = 0.8
    stability_thresh: float = 0.95

    @classmethod
    def from_settings(cls, settings: Settings) -> AutoOptions:
        return cls(settings.auto_label, settings.auto_every, settings.auto_max_objects, settings.auto_end_after,
                   settings.auto_points_per_side, settings.auto_pred_iou_thresh, settings.auto_stability_thresh)

    def signature(self) -> str:
        """"auto-" and 12 hex digits of the options: the prompt signature of an automatic prediction."""
        raw = json.dumps({"mode": AUTOMATIC, **asdict(self)}, sort_keys=True)
        return "auto-" + hashlib.sha256(raw.encode()).hexdigest()[:12]

    def generator(self, model) -> MaskGenerator:
        return MaskGenerator(model, points_per_side=self.points_per_side, pred_iou_thresh=self.pred_iou_thresh,
                             stability_score_thresh=self.stability_thresh)


def check_auto_label(config: LabelConfig, label: str | None) -> None:
    """LabelConfigError when AUTO_LABEL names a label the config's output cannot carry (checked at job start)."""
    if label is not None and label not in config.output_labels:
        where = "the <Labels> on the video" if config.kind == "video" else f"<{config.output.type} " \
                f'name="{config.output.name}">'
        have = ", ".join(config.output_labels) or "none"
        raise LabelConfigError(f"AUTO_LABEL {label!r} is not a label of {where} (labels: {have})")


def auto_labels(config: LabelConfig, label: str | None) -> list[str] | None:
    """The automatic regions' labels: [AUTO_LABEL], else the output control's first label; None for a video
    config without <Labels> (boxes unlabelled). LabelConfigError when a mask control has no label to give."""
    check_auto_label(config, label)
    label = label or (config.output_labels[0] if config.output_labels else None)
    if label is None and config.kind != "video":
        raise LabelConfigError(f'<{config.output.type} name="{config.output.name}"> has no <Label>: automatic '
                               "masks need a label (add one, or set AUTO_LABEL to one)")
    return [label] if label is not None else None


class AutoPredictor:
    """Automatic predictions with a TaskPredictor's model, media fetcher and model version.
    `frames_done` / `frames_total`: progress of the current task (read by the worker's heartbeat)."""

    def __init__(self, tasks: TaskPredictor, options: AutoOptions):
        self.tasks = tasks
        self.options = options
        self.frames_done = 0
        self.frames_total = 0

    def predict(self, task: Mapping[str, Any], config: LabelConfig) -> dict:
        """{"result", "score", "model_version"} of every object found in the task's media."""
        labels = auto_labels(config, self.options.label)
        self.frames_done = self.frames_total = 0
        run = {"video": self._video, "image_sequence": self._sequence, "image": self._image}[config.kind]
        results = run(task, config, labels)
        for region in results:
            region["origin"] = "prediction"
        return prediction(results, model_version=self.tasks.model_version)

    def _track(self, source, on_frame: Callable[[int, list, np.ndarray], None]
               ) -> tuple[dict[int, float], tuple[int, int], Any]:
        """track_everything over a video path or frame list; on_frame(frame, obj_ids, masks N×H×W) per frame,
        the objects present on it. -> ({object id: predicted IoU at discovery}, (height, width), the timeline
        of a video file, else None)."""
        o = self.options
        session = self.tasks.video_predictor().open(source)
        try:
            self.frames_total = session.frame_count
            scores: dict[int, float] = {}
            for result, found in track_everything(session, o.generator(session.model), every=o.every,
                                                  max_objects=o.max_objects, end_after=o.end_after or None):
                scores.update({d.obj_id: float(d.record["predicted_iou"]) for d in found})
                present = result.object_scores > 0
                on_frame(result.frame_idx, [i for i, p in zip(result.obj_ids, present) if p], result.masks[present])
                self.frames_done = result.frame_idx + 1
            return scores, session.frame_size, getattr(session.frames, "timeline", None)
        finally:
            session.close()

    def _video(self, task, config: LabelConfig, labels) -> list[dict]:
        path = self.tasks.fetcher.fetch(config.media(task["data"]), task.get("id"), self.tasks.fetcher.validate_video,
                                        "video")
        boxes: dict[int, dict[int, np.ndarray]] = {}

        def on_frame(frame: int, ids: list, masks: np.ndarray) -> None:
            for obj_id, mask in zip(ids, masks):
                box = mask_to_box(mask)
                if box is not None:
                    boxes.setdefault(obj_id, {})[frame] = box

        scores, (height, width), timeline = self._track(path, on_frame)
        fps = config.fps(task["data"])
        fmap = FrameMap.for_video(timeline, fps)
        out = []
        for obj_id in sorted(boxes):
            track = np.full((self.frames_total, 4), np.nan)
            for frame, box in boxes[obj_id].items():
                track[frame] = box
            region = masklet_to_videorectangle(
                track[fmap.decoded_frames], region_id=f"auto{obj_id}", from_name=config.output.name,
                to_name=config.object_name, frame_size=(width, height), fps=fps, frames_count=fmap.length,
                labels=labels, tolerance_px=self.tasks.box_tolerance_px, score=scores.get(obj_id))
            if region is not None:
                out.append(region)
        return out

    def _images(self, task, config: LabelConfig) -> list[np.ndarray]:
        refs = config.media(task["data"])
        refs = refs if isinstance(refs, list) else [refs]
        fetch = self.tasks.fetcher.fetch
        return load_frames(fetch(r, task.get("id"), validate_image, f"image {i}") for i, r in enumerate(refs))

    def _sequence(self, task, config: LabelConfig, labels) -> list[dict]:
        masks: list[tuple[int, int, np.ndarray]] = []  # (object, frame, mask)

        def on_frame(frame: int, ids: list, frame_masks: np.ndarray) -> None:
            masks.extend((obj_id, frame, m) for obj_id, m in zip(ids, frame_masks) if m.any())

        scores, _, _ = self._track(self._images(task, config), on_frame)
        return [mask_to_region(config, m, region_id=f"auto{obj_id}_{frame}", labels=labels, item_index=frame,
                               score=scores.get(obj_id), parent_id=f"auto{obj_id}") for obj_id, frame, m in masks]

    def _image(self, task, config: LabelConfig, labels) -> list[dict]:
        rgb = self._images(task, config)[0]
        self.frames_total = 1
        records = self.options.generator(self.tasks.image_predictor().model).generate(rgb)
        records = sorted(records, key=lambda r: -r["predicted_iou"])[: self.options.max_objects]
        self.frames_done = 1
        return [mask_to_region(config, r["segmentation"], region_id=f"auto{i}", labels=labels,
                               score=float(r["predicted_iou"])) for i, r in enumerate(records)
                if r["segmentation"].any()]
