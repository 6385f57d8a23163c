"""Model output (per-frame pixel boxes or bool masks) -> Label Studio results.

Videorectangle semantics (Label Studio editor, VideoRectangleRegion/isInLifespan, all releases):
- positions are linearly interpolated between consecutive keyframes (x, y, width, height);
- a region is visible on frame f when the last keyframe at or before f is enabled, or is on f
  itself: an `enabled: false` keyframe is still drawn on its own frame and hides the region
  after it until the next keyframe. So a visible span [a, e] is written as an enabled keyframe
  on a and a disabled keyframe on e (the last frame where the object is seen); a span that
  runs to the last frame of the video ends with an enabled keyframe;
- frames are 1-based; time = (frame - 1) / fps, and Label Studio maps a time back with
  frame = round(time * fps) + 1 (JavaScript rounding, half up).

Keyframes: on each visible span, between the span's first and last frames, the user's keyframes
and every multiple of keyframes.BLOCK frames (all kept), the fewest keyframes such that the linear
interpolation between them is within `tolerance_px` of the tracked box on every frame, on each of
x1, y1, x2, y2 (an exact shortest-path search, `keyframes.select_keyframes`, remembered per block so
that a long track is not scanned again on every request). Interpolating x, y, width, height as the
editor does is the same as interpolating x1, y1, x2, y2.

Computed keyframes carry AUTO_KEY = [frame, x, y, width, height, enabled] (their own values).
While the values still match, the keyframe is ours; once the user moves or toggles it, it no
longer matches and counts as the user's (see prompts.video_prompts).
"""
from __future__ import annotations

import base64
import bisect
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from label_studio_sdk.converter.brush import mask2rle
from PIL import Image

from .keyframes import keyframes_between
from .labelconfig import LabelConfig

AUTO_KEY = "sam2_auto"  # fingerprint of a keyframe computed by this backend
CLOSED_KEY = "sam2_closed"  # on a user keyframe whose `enabled` this backend set to false
_FINGERPRINT_ATOL = 1e-6  # percent

Box = tuple[float, float, float, float]


# ---------------------------------------------------------------- frames and time


def frame_to_time(frame: int, fps: float) -> float:
    """1-based Label Studio frame -> time in seconds."""
    return (frame - 1) / fps


def time_to_frame(time: float, fps: float) -> int:
    """Time in seconds -> 1-based frame, as Label Studio computes it (Math.round, half up)."""
    return math.floor(time * fps + 0.5) + 1


# ---------------------------------------------------------------- keyframe fingerprints


def _fingerprint(item: Mapping[str, Any]) -> list:
    geometry = [item.get(k) for k in ("frame", "x", "y", "width", "height")]
    return geometry + [bool(item.get("enabled", True))]


def is_computed_keyframe(item: Mapping[str, Any]) -> bool:
    """True for a keyframe written by this backend and not changed since."""
    mark = item.get(AUTO_KEY)
    if not isinstance(mark, list) or len(mark) != 6:
        return False
    now = _fingerprint(item)
    if mark[0] != now[0] or bool(mark[5]) != now[5]:
        return False
    try:
        return all(abs(float(a) - float(b)) <= _FINGERPRINT_ATOL for a, b in zip(mark[1:5], now[1:5]))
    except (TypeError, ValueError):
        return False


def is_user_enabled(item: Mapping[str, Any]) -> bool:
    """A user keyframe's own enabled state (a false set by this backend reads as true)."""
    return bool(item.get("enabled", True)) or bool(item.get(CLOSED_KEY))


# ---------------------------------------------------------------- masks and boxes


def mask_to_box(mask: np.ndarray) -> Box | None:
    """bool (H, W) mask -> pixel-edge box (x1, y1, x2, y2), x2 = last column + 1; None if empty."""
    cols = np.flatnonzero(mask.any(axis=0))
    if cols.size == 0:
        return None
    rows = np.flatnonzero(mask.any(axis=1))
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


def masks_to_boxes(masks: np.ndarray | Mapping[int, np.ndarray], frames_count: int | None = None) -> np.ndarray:
    """Masks -> (T, 4) float boxes, NaN rows where the mask is empty or missing.

    masks: bool (T, H, W), or {0-based frame: bool (H, W)} with frames_count = T.
    """
    if isinstance(masks, Mapping):
        if frames_count is None:
            raise ValueError("frames_count is required when masks is a mapping")
        items = masks.items()
    else:
        frames_count = len(masks) if frames_count is None else frames_count
        items = enumerate(masks)
    boxes = np.full((frames_count, 4), np.nan)
    for frame, mask in items:
        box = mask_to_box(np.asarray(mask))
        if box is not None:
            boxes[frame] = box
    return boxes


# ---------------------------------------------------------------- videorectangle


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive (start, end) of each run of True."""
    padded = np.concatenate([[False], flags, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2])]


def masklet_to_videorectangle(
    boxes: np.ndarray,
    *,
    region_id: str,
    from_name: str,
    to_name: str,
    frame_size: tuple[int, int],
    fps: float,
    frames_count: int | None = None,
    duration: float | None = None,
    labels: Sequence[str] | None = None,
    user_keyframes: Sequence[Mapping[str, Any]] = (),
    tolerance_px: float = 1.0,
    score: float | None = None,
    origin: str | None = None,
) -> dict | None:
    """One object's per-frame boxes -> one videorectangle region; None if never visible.

    boxes: (T, 4) pixel boxes x1, y1, x2, y2 for 0-based frames 0..T-1, NaN rows where the
        object is absent (or not tracked). Boxes are clipped to the frame; T <= frames_count,
        frames from T on count as absent.
    frame_size: (width, height) in pixels. frames_count: Label Studio's framesCount (default T).
    duration: seconds (default frames_count / fps).
    user_keyframes: the user's own sequence items (ObjectPrompts.user_keyframes). They are kept
        verbatim on their frames and are forced keyframes of the compression; the object counts
        as present on their frames, and absent after a user keyframe with enabled false until
        the user's next keyframe. Only where a user's enabled keyframe ends a visible span before
        the end of the video is its `enabled` set to false (and CLOSED_KEY set), else Label
        Studio would draw the box over frames where the object is absent.
    tolerance_px: max deviation, in pixels, of Label Studio's interpolated box from `boxes`.
    """
    width, height = frame_size
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (T, 4), got {boxes.shape}")
    frames_count = len(boxes) if frames_count is None else frames_count
    if len(boxes) > frames_count:
        raise ValueError(f"{len(boxes)} boxes for {frames_count} frames")
    full = np.full((frames_count, 4), np.nan)
    full[: len(boxes)] = np.clip(boxes, 0, [width, height, width, height])
    present = ~np.isnan(full).any(axis=1) & (full[:, 2] > full[:, 0]) & (full[:, 3] > full[:, 1])

    user: dict[int, dict] = {}
    for item in user_keyframes:
        frame = int(item["frame"]) - 1
        if not 0 <= frame < frames_count:
            raise ValueError(f"user keyframe on frame {frame + 1} outside 1..{frames_count}")
        user[frame] = dict(item)
        x, y, w, h = (float(item[k]) for k in ("x", "y", "width", "height"))
        full[frame] = (x * width / 100, y * height / 100, (x + w) * width / 100, (y + h) * height / 100)
        present[frame] = True
    user_frames = sorted(user)
    ends = set()  # frames that must close a span
    for i, frame in enumerate(user_frames):
        if not is_user_enabled(user[frame]):
            stop = user_frames[i + 1] if i + 1 < len(user_frames) else frames_count
            present[frame + 1 : stop] = False
            ends.add(frame)

    sequence = []
    spans = []
    for a, e in _runs(present):  # split runs at the user's explicit ends
        cuts = [f for f in sorted(ends) if a <= f < e]
        for start, stop in zip([a] + [c + 1 for c in cuts], cuts + [e]):
            spans.append((start, stop))
    for a, e in spans:
        keep = keyframes_between(full, [a] + [f for f in user_frames if a < f < e] + [e], tolerance_px)
        for f in sorted(keep):
            enabled = not (f == e and e < frames_count - 1)
            if f in user:
                item = user[f]
                if is_user_enabled(item):
                    item.pop(CLOSED_KEY, None)
                    item["enabled"] = enabled
                    if not enabled:
                        item[CLOSED_KEY] = True
            else:
                x1, y1, x2, y2 = full[f]
                item = {
                    "frame": f + 1,
                    "time": frame_to_time(f + 1, fps),
                    "x": x1 * 100 / width,
                    "y": y1 * 100 / height,
                    "width": (x2 - x1) * 100 / width,
                    "height": (y2 - y1) * 100 / height,
                    "rotation": 0,
                    "enabled": enabled,
                }
                item[AUTO_KEY] = _fingerprint(item)
            sequence.append(item)
    if not sequence:
        return None
    value: dict[str, Any] = {
        "framesCount": frames_count,
        "duration": frames_count / fps if duration is None else duration,
        "sequence": sequence,
    }
    if labels:
        value["labels"] = list(labels)
    region: dict[str, Any] = {
        "id": region_id, "type": "videorectangle", "from_name": from_name, "to_name": to_name, "value": value
    }
    if origin is not None:
        region["origin"] = origin
    if score is not None:
        region["score"] = float(score)
    return region


def sequence_to_boxes(
    sequence: Sequence[Mapping[str, Any]], frames_count: int, frame_size: tuple[int, int]
) -> np.ndarray:
    """What Label Studio draws: (frames_count, 4) pixel boxes per 0-based frame, NaN where hidden."""
    width, height = frame_size
    keys = sorted(sequence, key=lambda k: k["frame"])
    scale = np.array([width, height, width, height]) / 100

    def corners(k: Mapping[str, Any]) -> np.ndarray:
        return np.array([k["x"], k["y"], k["x"] + k["width"], k["y"] + k["height"]], dtype=np.float64) * scale

    frames = [k["frame"] for k in keys]
    out = np.full((frames_count, 4), np.nan)
    for f in range(1, frames_count + 1):
        i = bisect.bisect_right(frames, f)  # keys[:i] are at or before f
        if i == 0:
            continue
        prev = keys[i - 1]
        if not (prev.get("enabled", True) or prev["frame"] == f):
            continue
        if prev["frame"] == f or i == len(keys):
            out[f - 1] = corners(prev)
        else:
            nxt = keys[i]
            r = (f - prev["frame"]) / (nxt["frame"] - prev["frame"])
            out[f - 1] = corners(prev) + (corners(nxt) - corners(prev)) * r
    return out


# ---------------------------------------------------------------- masks on images


def _image_region(type_: str, value: dict, mask: np.ndarray, *, region_id: str, from_name: str, to_name: str,
                  labels: Sequence[str] | None = None, item_index: int | None = None,
                  score: float | None = None, parent_id: str | None = None) -> dict:
    """A brushlabels/bitmasklabels result around `value`; optional keys only when given."""
    if labels:
        value[type_] = list(labels)
    region: dict[str, Any] = {
        "id": region_id,
        "type": type_,
        "from_name": from_name,
        "to_name": to_name,
        "value": value,
        "original_width": int(mask.shape[1]),
        "original_height": int(mask.shape[0]),
        "image_rotation": 0,
    }
    if item_index is not None:
        region["item_index"] = int(item_index)
    if score is not None:
        region["score"] = float(score)
    if parent_id is not None:
        region["parentID"] = parent_id
    return region


def mask_to_brush(
    mask: np.ndarray,
    *,
    region_id: str,
    from_name: str,
    to_name: str,
    labels: Sequence[str] | None = None,
    item_index: int | None = None,
    score: float | None = None,
    parent_id: str | None = None,
) -> dict:
    """bool (H, W) mask -> brushlabels result (Label Studio RLE via the SDK's mask2rle).

    item_index: frame of an image sequence (None for a single image). parent_id: the object key,
    so that prompts.image_prompts attaches the mask, and the user's edits of it, to its object.
    """
    rle = mask2rle(np.asarray(mask, dtype=bool).astype(np.uint8) * 255)
    return _image_region(
        "brushlabels", {"format": "rle", "rle": [int(v) for v in rle]}, mask, region_id=region_id,
        from_name=from_name, to_name=to_name, labels=labels, item_index=item_index, score=score, parent_id=parent_id,
    )


def mask_to_png_data_url(mask: np.ndarray, grayscale: bool = False) -> str:
    """bool (H, W) mask -> PNG data URL, opaque black where the mask is set, transparent elsewhere
    (bitmasklabels); grayscale=True: an 8-bit gray PNG, 255 where set, 0 elsewhere (the event protocol)."""
    if grayscale:
        image = Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255, "L")
    else:
        rgba = np.zeros((*mask.shape, 4), dtype=np.uint8)
        rgba[..., 3] = np.asarray(mask, dtype=bool) * 255
        image = Image.fromarray(rgba, "RGBA")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def mask_to_bitmask(
    mask: np.ndarray,
    *,
    region_id: str,
    from_name: str,
    to_name: str,
    labels: Sequence[str] | None = None,
    item_index: int | None = None,
    score: float | None = None,
    parent_id: str | None = None,
) -> dict:
    """bool (H, W) mask -> bitmasklabels result (value.imageDataURL); arguments as mask_to_brush."""
    return _image_region(
        "bitmasklabels", {"imageDataURL": mask_to_png_data_url(mask)}, mask, region_id=region_id,
        from_name=from_name, to_name=to_name, labels=labels, item_index=item_index, score=score, parent_id=parent_id,
    )


def mask_to_region(config: LabelConfig, mask: np.ndarray, *, region_id: str, labels: Sequence[str] | None = None,
                   item_index: int | None = None, score: float | None = None, parent_id: str | None = None) -> dict:
    """mask_to_brush or mask_to_bitmask, whichever the config's output control is."""
    convert = {"BrushLabels": mask_to_brush, "BitmaskLabels": mask_to_bitmask}.get(config.output.type)
    if convert is None:
        raise ValueError(f"the config's output {config.output.type} does not take masks")
    return convert(mask, region_id=region_id, from_name=config.output.name, to_name=config.object_name,
                   labels=labels, item_index=item_index, score=score, parent_id=parent_id)


def prediction(results: Sequence[dict], *, score: float | None = None, model_version: str | None = None) -> dict:
    """One /predict answer item. score defaults to the mean of the regions' scores, if any."""
    out: dict[str, Any] = {"result": list(results)}
    if score is None:
        scores = [r["score"] for r in results if r.get("score") is not None]
        score = sum(scores) / len(scores) if scores else None
    if score is not None:
        out["score"] = float(score)
    if model_version is not None:
        out["model_version"] = model_version
    return out
