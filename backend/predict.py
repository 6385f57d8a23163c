"""One task -> one prediction, for the three project kinds.

- video (`<Video>` + `<VideoRectangle>`): every user keyframe is a box prompt on its frame; all objects are
  tracked in both directions and each comes back as one videorectangle region (its id and label kept, the
  user's keyframes verbatim, computed keyframes where the box moves beyond BOX_TOLERANCE_PX).
- image sequence (`<Image valueList>`): keypoint/rectangle/brush prompts located by item_index; every
  object comes back as a brush (or bitmask) region on every frame where it is seen.
- single image: SAM 2 image mode, one mask region per object.
A mask the user gave as the only prompt of a frame comes back on that frame exactly as given.
Interactive answers hold only the objects of the regions in context.result (`named`): the other regions of
the task's draft may be stale copies of what the user sees, or deleted since. Every returned region is marked
origin "prediction" (Label Studio then does not take it for the user's own drawing).
Images and image sequences: the backend's own masks, accepted in the editor, are recognised and the prompts
they came from put back (answers.py); the answer reuses the accepted regions' ids, so Accept replaces them.
Tracking work is bounded by `deadline` (see tracking.Tracker); what was not reached is left out.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sam2_model import ImagePredictor
from sam2_model.video.predictor import VideoPredictor

from .frametime import FrameMap, regions_frames_count
from .answers import AnswerMemory, reuse_ids
from .labelconfig import LabelConfig
from .media import MediaFetcher, load_frames, load_image, validate_image
from .prompts import FramePrompt, ObjectPrompts, PromptError, image_prompts, video_prompts
from .results import mask_to_region, masklet_to_videorectangle, prediction
from .sessions import SessionStore
from .tracking import NOBODY, Tracker

logger = logging.getLogger(__name__)

PROMPT_TYPES = ("videorectangle", "keypointlabels", "rectanglelabels", "brushlabels", "bitmasklabels")
MASK_PROMPT_LOGIT = 10.0  # a user mask as SAM's low-res mask input: +/- this logit


def has_prompt_regions(regions: Sequence[Mapping[str, Any]], config: LabelConfig) -> bool:
    """Cheap test, before any download: could these regions hold a prompt for the config's media?"""
    return any(r.get("type") in PROMPT_TYPES and r.get("to_name") == config.object_name for r in regions)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(min(x, 60.0), -60.0)))


def _labels(config: LabelConfig, obj: ObjectPrompts) -> list[str] | None:
    """All labels of the object's region (its first label when the region has none), those the output control
    can carry."""
    region = obj.region or {}
    kind = "labels" if region.get("type") == "videorectangle" else region.get("type")
    labels = (region.get("value") or {}).get(kind) if kind else None
    labels = [x for x in labels if isinstance(x, str)] if isinstance(labels, list) else []
    labels = labels or ([obj.label] if obj.label is not None else [])
    labels = [x for x in labels if not config.output_labels or x in config.output_labels]
    return labels or None


def named_regions(context: Mapping[str, Any] | None) -> set[str] | None:
    """Ids of the regions in an interactive context.result; None (every object) for batch requests and for
    contexts whose regions carry no id."""
    ids = {str(r["id"]) for r in (context or {}).get("result") or [] if isinstance(r, Mapping) and r.get("id")}
    return ids if context is not None and ids else None


def _wanted(objects: Sequence[ObjectPrompts], named: set[str] | None) -> list[ObjectPrompts]:
    """The objects an answer returns: all, or those holding a prompt of a `named` region."""
    if named is None:
        return list(objects)
    return [o for o in objects if {str(r.get("id")) for r in o.sources} & named]


def _mask_only(fp: FramePrompt | None) -> np.ndarray | None:
    """The user's mask when it is the frame's only prompt (it is then returned as given)."""
    if fp is not None and fp.mask is not None and not fp.points and fp.box is None:
        return fp.mask
    return None


@dataclass
class EmbeddedImage:
    """An image predictor holding one image's embedding, and that image's size."""

    predictor: ImagePredictor
    width: int
    height: int

    def nbytes(self) -> int:
        """Embedding plus the two high-resolution feature maps: about 4x the embedding."""
        emb = self.predictor.get_image_embedding()
        return 4 * emb.numel() * emb.element_size()


class TaskPredictor:
    """Prediction for one task at a time, sharing the model, the media cache and the session store."""

    def __init__(
        self,
        video_predictor: Callable[[], VideoPredictor],
        image_predictor: Callable[[], ImagePredictor],
        fetcher: MediaFetcher,
        store: SessionStore,
        max_frames: int,
        box_tolerance_px: float,
        model_version: str,
        answers: AnswerMemory | None = None,
    ):
        self.video_predictor = video_predictor
        self.image_predictor = image_predictor
        self.fetcher = fetcher
        self.store = store
        self.max_frames = max_frames
        self.box_tolerance_px = box_tolerance_px
        self.model_version = model_version
        self.answers = AnswerMemory() if answers is None else answers

    def predict(self, task: Mapping[str, Any], config: LabelConfig, regions: list[dict], deadline: float,
                named: set[str] | None = None, owner: str = NOBODY) -> dict:
        """The prediction for `task` from `regions` (prompts); empty when they hold no prompt. named: return
        only the objects of these region ids (interactive: `named_regions(context)`); None: all. owner: the
        annotator the regions belong to (`prompts.current_owner`): video and image-sequence objects are kept
        per owner in the task's session (tracking.Tracker)."""
        if not has_prompt_regions(regions, config):
            return prediction([], model_version=self.model_version)
        if config.kind == "video":
            results = self._video(task, config, regions, deadline, named, owner)
        else:
            key = task.get("id")
            regions, ids = self.answers.recognise(key, regions, config)
            objects: list = []
            answered: list[tuple[int, str, int, np.ndarray]] = []  # (position in the result, key, frame, mask)
            if config.kind == "image_sequence":
                answers = self._sequence(task, config, regions, deadline, named, objects, answered, owner)
            else:
                answers = self._image(task, config, regions, deadline, named, objects, answered)
            results = reuse_ids(answers, ids)
            self.answers.remember(key, objects, [(results[i], k, f, m) for i, k, f, m in answered])
        for region in results:
            region["origin"] = "prediction"
        return prediction(results, model_version=self.model_version)

    # -- video --------------------------------------------------------------------------------------

    @staticmethod
    def video_key(task: Mapping[str, Any], config: LabelConfig) -> tuple:
        """The session-store key of a video task's Tracker."""
        return ("video", task.get("id"), config.media(task["data"]))

    def video_session(self, task: Mapping[str, Any], config: LabelConfig):
        """`store.use` context of the video task's Tracker: media fetched now (cached on disk), opened on first use."""
        path = self.fetcher.fetch(config.media(task["data"]), task.get("id"), self.fetcher.validate_video, "video")

        def open_video() -> Tracker:
            return Tracker(self.video_predictor().open(path), budget_bytes=self.store.budget_bytes, drop_logits=True)

        return self.store.use(self.video_key(task, config), open_video, Tracker.nbytes)

    def _video(self, task, config: LabelConfig, regions, deadline: float, named: set[str] | None,
               owner: str) -> list[dict]:
        fps = config.fps(task["data"])
        with self.video_session(task, config) as entry:
            tracker: Tracker = entry.value
            height, width = tracker.session.frame_size
            frames = FrameMap.for_video(tracker.session.frames.timeline, fps, regions_frames_count(regions))
            objects = video_prompts(regions, config, (width, height), to_frame=frames.decoded)
            if not objects:
                return []
            tracker.set_prompts(objects, self.max_frames, owner=owner)
            if not tracker.run(deadline, owner=owner):
                logger.info("task %s: time budget reached, %d frames have results", task.get("id"),
                            len(tracker.frames(owner)))
            tracks = tracker.tracks(owner)  # boxes kept when tracked: no mask is decoded here
        out = []
        for o in _wanted(objects, named):  # editor frame f shows decoded frame frames.decoded_frames[f - 1]
            count = max([frames.length] + [int(k["frame"]) for k in o.user_keyframes])  # past the end: clamped
            track = tracks[o.key]
            seen = ~np.isnan(track.boxes[:, 0])  # frames where the object has a mask
            region = masklet_to_videorectangle(
                track.boxes[frames.decoded_frames].astype(np.float64), region_id=o.key,
                from_name=config.output.name, to_name=config.object_name, frame_size=(width, height), fps=fps,
                frames_count=count, labels=_labels(config, o),
                user_keyframes=o.user_keyframes, tolerance_px=self.box_tolerance_px,
                score=float(np.mean([_sigmoid(float(s)) for s in track.scores[seen]])) if seen.any() else None,
            )
            if region is not None:
                out.append(region)
        return out

    # -- image sequence -----------------------------------------------------------------------------

    def _sequence(self, task, config: LabelConfig, regions, deadline: float, named: set[str] | None,
                  objects: list, answered: list, owner: str) -> list[dict]:
        """Masks of the wanted objects on every frame; `objects` and `answered` are filled (see predict)."""
        refs = config.media(task["data"])
        paths = [self.fetcher.fetch(r, task.get("id"), validate_image, f"image {i}") for i, r in enumerate(refs)]

        def open_sequence() -> Tracker:
            frames = load_frames(paths)
            return Tracker(self.video_predictor().open(frames), extra_bytes=sum(f.nbytes for f in frames),
                           budget_bytes=self.store.budget_bytes, drop_logits=True)

        key = ("sequence", task.get("id"), tuple(refs))
        with self.store.use(key, open_sequence, Tracker.nbytes) as entry:
            tracker: Tracker = entry.value
            height, width = tracker.session.frame_size
            objects[:] = image_prompts(regions, config, [(width, height)] * tracker.frame_count)
            if not objects:
                return []
            tracker.set_prompts(objects, self.max_frames, owner=owner)
            tracker.run(deadline, owner=owner)
            given = {(o.key, fp.frame): _mask_only(fp) for o in objects for fp in o.frames}
            labels = {o.key: _labels(config, o) for o in _wanted(objects, named)}
            out = []
            for result in tracker.results(owner):
                for i, obj_id in enumerate(result.obj_ids):
                    if obj_id not in labels:
                        continue
                    mask = given.get((obj_id, result.frame_idx))
                    mask = result.masks[i] if mask is None else mask
                    if mask.any():
                        answered.append((len(out), obj_id, result.frame_idx, mask))
                        out.append(mask_to_region(
                            config, mask, region_id=f"{obj_id}_{result.frame_idx}", labels=labels[obj_id],
                            item_index=result.frame_idx, score=_sigmoid(float(result.object_scores[i])),
                            parent_id=obj_id))
        return out

    # -- single image -------------------------------------------------------------------------------

    def _image(self, task, config: LabelConfig, regions, deadline: float, named: set[str] | None,
               objects: list, answered: list) -> list[dict]:
        """One mask per wanted object; `objects` and `answered` are filled (see predict)."""
        ref = config.media(task["data"])
        path = self.fetcher.fetch(ref, task.get("id"), validate_image, "image")

        def embed() -> EmbeddedImage:
            rgb = load_image(path)
            predictor = self.image_predictor()
            predictor.set_image(rgb)
            return EmbeddedImage(predictor, rgb.shape[1], rgb.shape[0])

        with self.store.use(("image", ref), embed, EmbeddedImage.nbytes) as entry:
            predictor, width, height = entry.value.predictor, entry.value.width, entry.value.height
            objects[:] = image_prompts(regions, config, [(width, height)])
            out = []
            for o in _wanted(objects, named):
                fp = o.frames[0]
                mask, score = _mask_only(fp), None
                if mask is None:
                    mask, score = self._image_mask(predictor, fp)
                if mask.any():
                    answered.append((len(out), o.key, 0, mask))
                    out.append(mask_to_region(config, mask, region_id=f"{o.key}_mask", labels=_labels(config, o),
                                              score=score, parent_id=o.key))
        return out

    @staticmethod
    def _image_mask(predictor: ImagePredictor, fp: FramePrompt) -> tuple[np.ndarray, float]:
        """Best mask of one object's prompts (bool H×W) and its predicted IoU."""
        grid = 4 * predictor.model.config.image_embedding_size
        mask_input = None
        if fp.mask is not None:
            rows = np.arange(grid) * fp.mask.shape[0] // grid
            cols = np.arange(grid) * fp.mask.shape[1] // grid
            small = fp.mask[rows[:, None], cols[None, :]]
            mask_input = np.where(small, MASK_PROMPT_LOGIT, -MASK_PROMPT_LOGIT)[None].astype(np.float32)
        points = np.asarray(fp.points, dtype=np.float64).reshape(-1, 2) if fp.points else None
        labels = np.asarray(fp.point_labels) if fp.points else None
        box = np.asarray(fp.box, dtype=np.float64) if fp.box is not None else None
        multimask = box is None and mask_input is None and len(fp.points) == 1
        try:
            masks, ious, _ = predictor.predict(points, labels, box, mask_input, multimask_output=multimask)
        except ValueError as exc:
            raise PromptError(str(exc)) from exc
        best = int(np.argmax(ious))
        return masks[best], float(ious[best])
