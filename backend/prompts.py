"""Label Studio regions -> model prompts (pixel points, pixel boxes, bool masks; 0-based frames).

Where prompts come from
-----------------------
Interactive requests carry only the region just drawn in `context.result`; the other regions live
in the task's drafts and annotations. `current_regions` rebuilds what the user sees: the newest
draft's result, else the newest non-cancelled annotation's, with `context.result` laid over it by
region id (context wins, new ids are appended). One snapshot is used rather than the union of all
drafts/annotations, so regions the user deleted, or other annotators' regions, do not come back.

Video (`video_prompts`)
-----------------------
Each videorectangle region is one object (key = region id, label = value.labels[0]). Each of its
keyframes with enabled true that is the user's own is a box prompt on the decoded frame the editor
shows at `frame` (backend/frametime.py; frame - 1 for a constant-rate file at the config's rate) (also one
whose enabled this backend set to false to end a span, see `results.CLOSED_KEY`); a keyframe the
user disabled is not a prompt.
Keyframes this backend computed earlier carry a fingerprint (`results.AUTO_KEY`) and are not
prompts while unchanged: feeding the model its own lossy output back would drown the user's
corrections. A keyframe the user moved (fingerprint no longer matches) is a prompt again.

Image sequences and single images (`image_prompts`)
---------------------------------------------------
Objects are formed the way a user draws them:
- each rectangle is its own object;
- each brush/bitmask the user painted (origin not "prediction") is its own object, a mask prompt;
- a region with `parentID` belongs to the object of that key instead (our output masks carry the
  object key in `parentID`, so the user's edits of them become mask prompts of that object);
- a keypoint joins an object of the same label: first the most recent one whose box or mask
  (prompt, or our earlier output) on the same frame contains the point, else the most recent one
  drawn before it (results order), else it starts a new object keyed by its own id. Several
  instances of one label are therefore made by drawing a rectangle (or brush) per instance; plain
  clicks of one label refine one object.
Objects without a box, a mask or a positive point are dropped (negative clicks alone say nothing).
Positive/negative: `is_positive` on the item (interactive context) or `positive`/`is_positive` in
the value; default positive.

Coordinates: Label Studio stores percent of the frame; they become pixels with the frame's real
width and height. Points up to 1 px outside the frame are clamped, further out raise PromptError.
Boxes are clipped to the frame; a box of zero area (before or after clipping) raises PromptError.
"""
from __future__ import annotations

import base64
import io
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from label_studio_sdk.converter.brush import decode_rle
from PIL import Image

from .labelconfig import LabelConfig
from .results import is_computed_keyframe, is_user_enabled

POINT_SLACK_PX = 1.0
MAX_BRUSH_SCALE = 16  # a brush's original_width x original_height: at most this many times the frame's pixels


class PromptError(ValueError):
    """A region cannot be turned into a prompt (outside the frame, zero area, bad frame, ...)."""


Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels, pixel edges


@dataclass
class FramePrompt:
    """Prompts for one object on one frame (0-based). mask: bool (H, W)."""

    frame: int
    points: list[tuple[float, float]] = field(default_factory=list)
    point_labels: list[int] = field(default_factory=list)  # 1 positive, 0 negative
    box: Box | None = None
    mask: np.ndarray | None = None


@dataclass
class ObjectPrompts:
    """All prompts of one object.

    key: Label Studio region id (video: the videorectangle id; images: see module doc).
    frames: one FramePrompt per prompted frame, sorted by frame.
    region: the Label Studio region the object came from (video: the merged videorectangle,
        whose value has framesCount, duration, labels, sequence).
    user_keyframes: video only, the user's own sequence items verbatim (enabled or not), to be
        passed back to `results.masklet_to_videorectangle`.
    sources: the regions (copies) whose prompts the object holds: an interactive answer returns the objects of
        context.result's regions only (predict._wanted), and answers.py remembers the keypoints and rectangles
        (the editor deletes them on Accept).
    """

    key: str
    label: str | None
    frames: list[FramePrompt] = field(default_factory=list)
    region: dict | None = None
    user_keyframes: list[dict] = field(default_factory=list)
    sources: list[dict] = field(default_factory=list)

    def at(self, frame: int) -> FramePrompt:
        """The FramePrompt of `frame`, created (in sorted place) if missing."""
        for i, fp in enumerate(self.frames):
            if fp.frame == frame:
                return fp
            if fp.frame > frame:
                self.frames.insert(i, FramePrompt(frame))
                return self.frames[i]
        self.frames.append(FramePrompt(frame))
        return self.frames[-1]

    @property
    def is_prompted(self) -> bool:
        """True when a box, a mask or a positive point exists on some frame."""
        return any(fp.box is not None or fp.mask is not None or 1 in fp.point_labels for fp in self.frames)


# ---------------------------------------------------------------- which regions the user sees


def _newest(items: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    items = list(items)
    if not items:
        return None
    return max(items, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id") or 0))


def _snapshot(task: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]] | None:
    """("draft" | "annotation", the one whose regions the user sees): the newest draft, else the newest
    non-cancelled annotation."""
    draft = _newest(task.get("drafts") or [])
    if draft is not None:
        return "draft", draft
    annotation = _newest(a for a in task.get("annotations") or [] if not a.get("was_cancelled"))
    return None if annotation is None else ("annotation", annotation)


def current_owner(task: Mapping[str, Any]) -> str:
    """Who the regions of `current_regions` belong to: "user:<id>", or "" when the task does not say.

    A draft names its user in `created_username` ("First Last email, <id>"; Label Studio sends an interactive
    request's drafts of the requesting user only), else in `user` (the email); an annotation in `completed_by`
    (an id, or an object with one)."""
    found = _snapshot(task)
    if found is None:
        return ""
    kind, item = found
    if kind == "draft":
        match = re.search(r",\s*(\d+)\s*$", str(item.get("created_username") or ""))
        user = match.group(1) if match else item.get("user")
    else:
        user = item.get("completed_by")
        user = user.get("id") if isinstance(user, Mapping) else user
    return f"user:{user}" if isinstance(user, (str, int)) and not isinstance(user, bool) and str(user) else ""


def current_regions(task: Mapping[str, Any], context: Mapping[str, Any] | None = None) -> list[dict]:
    """The regions the user sees: newest draft, else newest annotation, overlaid by context.result."""
    found = _snapshot(task)
    base = found[1] if found else None
    regions = [dict(r) for r in (base.get("result") or [] if base else [])]
    index = {r["id"]: i for i, r in enumerate(regions) if r.get("id") is not None}
    for r in (context or {}).get("result") or []:
        rid = r.get("id")
        if rid is not None and rid in index:
            regions[index[rid]] = dict(r)
            continue
        if rid is not None:
            index[rid] = len(regions)
        regions.append(dict(r))
    return regions


# ---------------------------------------------------------------- geometry


def _finite(*values: Any) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def rect_to_box(value: Mapping[str, Any], width: int, height: int, what: str = "box") -> Box:
    """Percent x/y/width/height(/rotation, degrees about the top-left corner) -> clipped pixel box."""
    x, y, w, h = (value.get(k) for k in ("x", "y", "width", "height"))
    rot = value.get("rotation") or 0.0
    if not _finite(x, y, w, h, rot):
        raise PromptError(f"{what}: x, y, width, height must be numbers, got {x}, {y}, {w}, {h}")
    if w <= 0 or h <= 0:
        raise PromptError(f"{what}: zero-area box (width {w}%, height {h}%)")
    px, py, pw, ph = x * width / 100, y * height / 100, w * width / 100, h * height / 100
    if rot:
        c, s = math.cos(math.radians(rot)), math.sin(math.radians(rot))
        xs = [px, px + pw * c, px - ph * s, px + pw * c - ph * s]
        ys = [py, py + pw * s, py + ph * c, py + pw * s + ph * c]
    else:
        xs, ys = [px, px + pw], [py, py + ph]
    x1, x2 = max(min(xs), 0.0), min(max(xs), float(width))
    y1, y2 = max(min(ys), 0.0), min(max(ys), float(height))
    if x2 <= x1 or y2 <= y1:
        raise PromptError(f"{what}: box ({x}%, {y}%, {w}%, {h}%) has zero area inside the {width}x{height} frame")
    return (x1, y1, x2, y2)


def point_to_px(value: Mapping[str, Any], width: int, height: int, what: str = "point") -> tuple[float, float]:
    """Percent x/y -> pixels; clamped into the frame if at most 1 px outside, else PromptError."""
    x, y = value.get("x"), value.get("y")
    if not _finite(x, y):
        raise PromptError(f"{what}: x and y must be numbers, got {x}, {y}")
    px, py = x * width / 100, y * height / 100
    if not (-POINT_SLACK_PX <= px <= width + POINT_SLACK_PX and -POINT_SLACK_PX <= py <= height + POINT_SLACK_PX):
        raise PromptError(f"{what}: point ({x}%, {y}%) lies outside the {width}x{height} frame")
    return (min(max(px, 0.0), float(width)), min(max(py, 0.0), float(height)))


def _resize_nearest(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    if mask.shape == (height, width):
        return mask
    rows = (np.arange(height) * mask.shape[0] // height).clip(0, mask.shape[0] - 1)
    cols = (np.arange(width) * mask.shape[1] // width).clip(0, mask.shape[1] - 1)
    return mask[rows[:, None], cols[None, :]]


def decode_brush(region: Mapping[str, Any], width: int, height: int) -> np.ndarray:
    """brushlabels RLE region -> bool (height, width) mask (decoded at original_width/height)."""
    value = region.get("value") or {}
    if value.get("format") != "rle" or not isinstance(value.get("rle"), list):
        raise PromptError(f"brush region {region.get('id')}: only format 'rle' is supported")
    ow, oh = region.get("original_width") or width, region.get("original_height") or height
    rle = value["rle"]
    if ow * oh > MAX_BRUSH_SCALE * width * height:
        raise PromptError(f"brush region {region.get('id')}: original size {ow}x{oh} is far larger than the "
                          f"{width}x{height} frame")
    size = int.from_bytes(bytes(rle[:4]), "big") if len(rle) >= 4 else 0  # the RLE header: number of values
    if size != ow * oh * 4:
        raise PromptError(
            f"brush region {region.get('id')}: RLE holds {size} values, expected {ow}x{oh}x4 = {ow * oh * 4}"
        )
    try:
        flat = decode_rle(rle)
    except (ValueError, IndexError, OverflowError) as exc:  # truncated or corrupt RLE
        raise PromptError(f"brush region {region.get('id')}: cannot decode the RLE ({exc})") from None
    return _resize_nearest(flat.reshape(oh, ow, 4)[:, :, 3] >= 128, width, height)


def decode_bitmask(region: Mapping[str, Any], width: int, height: int) -> np.ndarray:
    """bitmasklabels region (PNG data URL, opaque pixels = mask) -> bool (height, width) mask."""
    url = (region.get("value") or {}).get("imageDataURL") or ""
    head, _, data = url.partition(",")
    if not head.startswith("data:image/png;base64"):
        raise PromptError(f"bitmask region {region.get('id')}: imageDataURL is not a PNG data URL")
    try:
        image = Image.open(io.BytesIO(base64.b64decode(data))).convert("RGBA")
    except Exception as exc:
        raise PromptError(f"bitmask region {region.get('id')}: cannot decode the PNG ({exc})") from exc
    return _resize_nearest(np.asarray(image)[:, :, 3] >= 128, width, height)


# ---------------------------------------------------------------- video


def video_prompts(
    regions: Iterable[Mapping[str, Any]],
    config: LabelConfig,
    frame_size: tuple[int, int],
    frames_count: int | None = None,
    to_frame: Callable[[int, str], int] | None = None,
) -> list[ObjectPrompts]:
    """videorectangle regions -> one ObjectPrompts per region with at least one user box prompt.

    frame_size: (width, height) of the decoded video. frames_count: number of frames, to reject
    keyframes past the end (None: not checked). to_frame(editor frame, what): the 0-based decoded frame an
    editor frame shows (frametime.FrameMap.decoded; it judges frames past the end); default frame - 1. When
    several keyframes of a region show one decoded frame, the first is its prompt. Raises PromptError.
    """
    width, height = frame_size
    names = config.control_names("VideoRectangle")
    objects = []
    for region in regions:
        if region.get("type") != "videorectangle" or region.get("to_name") != config.object_name:
            continue
        if region.get("from_name") not in names:
            continue
        value = region.get("value") or {}
        labels = value.get("labels") or []
        obj = ObjectPrompts(str(region.get("id")), labels[0] if labels else None, region=dict(region),
                            sources=[dict(region)])
        for item in value.get("sequence") or []:
            if is_computed_keyframe(item):
                continue
            frame = item.get("frame")
            what = f"region {obj.key} keyframe {frame}"
            if isinstance(frame, float) and frame.is_integer():
                frame = int(frame)
            checked = frames_count if to_frame is None else None
            if not isinstance(frame, int) or frame < 1 or (checked is not None and frame > checked):
                raise PromptError(f"{what}: frame must be in 1..{checked or 'framesCount'} (1-based)")
            enabled = is_user_enabled(item)
            if enabled and any(k.get("frame") == frame and is_user_enabled(k) for k in obj.user_keyframes):
                raise PromptError(f"{what}: two keyframes on one frame")
            obj.user_keyframes.append(dict(item))
            if enabled:
                box = rect_to_box(item, width, height, what)
                fp = obj.at(frame - 1 if to_frame is None else to_frame(frame, what))
                if fp.box is None:
                    fp.box = box
        if obj.is_prompted:
            objects.append(obj)
    return objects


# ---------------------------------------------------------------- image sequences and images


def _first_label(region: Mapping[str, Any]) -> str | None:
    labels = (region.get("value") or {}).get(region.get("type")) or []
    return labels[0] if labels else None


def _is_positive(region: Mapping[str, Any]) -> bool:
    value = region.get("value") or {}
    for flag in (region.get("is_positive"), value.get("is_positive"), value.get("positive")):
        if flag is not None:
            return bool(flag)
    return True


def _frame_of(region: Mapping[str, Any], config: LabelConfig, n_frames: int) -> int:
    index = region.get("item_index")
    if config.kind == "image":
        index = 0 if index is None else index
    elif index is None:
        raise PromptError(f"region {region.get('id')}: image sequence region without item_index")
    if not isinstance(index, int) or not 0 <= index < n_frames:
        raise PromptError(f"region {region.get('id')}: item_index {index} outside 0..{n_frames - 1}")
    return index


@dataclass
class _Area:
    """A box or mask that keypoints of the same label can attach to."""

    key: str
    label: str | None
    frame: int
    box: Box | None = None
    mask: np.ndarray | None = None

    def contains(self, x: float, y: float) -> bool:
        if self.box is not None:
            return self.box[0] <= x <= self.box[2] and self.box[1] <= y <= self.box[3]
        h, w = self.mask.shape
        return bool(self.mask[min(int(y), h - 1), min(int(x), w - 1)])


def image_prompts(
    regions: Iterable[Mapping[str, Any]],
    config: LabelConfig,
    sizes: Sequence[tuple[int, int]],
) -> list[ObjectPrompts]:
    """Keypoint/rectangle/brush/bitmask regions -> ObjectPrompts (grouping: see module doc).

    sizes: (width, height) of each frame, indexed by item_index; [(w, h)] for a single image.
    Raises PromptError.
    """
    kinds = {
        "keypointlabels": config.control_names("KeyPointLabels"),
        "rectanglelabels": config.control_names("RectangleLabels"),
        "brushlabels": config.control_names("BrushLabels"),
        "bitmasklabels": config.control_names("BitmaskLabels"),
    }
    objects: dict[str, ObjectPrompts] = {}
    introduced: dict[str, tuple[int, str | None]] = {}  # key -> (results position, label)
    areas: list[_Area] = []
    keypoints = []

    def introduce(key: str, label: str | None, pos: int, region: Mapping[str, Any] | None) -> ObjectPrompts | None:
        introduced.setdefault(key, (pos, label))
        if region is None:
            return None
        if key not in objects:
            objects[key] = ObjectPrompts(key, label, region=dict(region))
        objects[key].sources.append(dict(region))
        return objects[key]

    for pos, region in enumerate(regions):
        typ = region.get("type")
        if typ not in kinds or region.get("to_name") != config.object_name or region.get("from_name") not in kinds[typ]:
            continue
        frame = _frame_of(region, config, len(sizes))
        width, height = sizes[frame]
        key = str(region.get("parentID") or region.get("id"))
        label = _first_label(region)
        what = f"{typ} region {region.get('id')}"
        if typ == "keypointlabels":
            point = point_to_px(region.get("value") or {}, width, height, what)
            keypoints.append((pos, region, frame, point, label))
        elif typ == "rectanglelabels":
            box = rect_to_box(region.get("value") or {}, width, height, what)
            obj = introduce(key, label, pos, region)
            fp = obj.at(frame)
            if fp.box is not None:
                raise PromptError(f"{what}: object {key} already has a box on frame {frame}")
            fp.box = box
            areas.append(_Area(key, label, frame, box=box))
        else:
            decode = decode_brush if typ == "brushlabels" else decode_bitmask
            mask = decode(region, width, height)
            if not mask.any():
                continue
            areas.append(_Area(key, label, frame, mask=mask))
            if region.get("origin") == "prediction":  # our own unedited output: not a prompt
                introduce(key, label, pos, None)
                continue
            fp = introduce(key, label, pos, region).at(frame)
            fp.mask = mask if fp.mask is None else (fp.mask | mask)

    for pos, region, frame, (x, y), label in keypoints:
        key = region.get("parentID") or None  # Label Studio's default parentID is ""
        if key is None:
            inside = [a.key for a in areas if a.label == label and a.frame == frame and a.contains(x, y)]
            earlier = sorted((p, k) for k, (p, lab) in introduced.items() if lab == label and p < pos)
            key = inside[-1] if inside else earlier[-1][1] if earlier else region.get("id")
        obj = introduce(str(key), label, pos, region)
        fp = obj.at(frame)
        fp.points.append((x, y))
        fp.point_labels.append(1 if _is_positive(region) else 0)

    ordered = sorted(objects.values(), key=lambda o: introduced[o.key][0])
    return [o for o in ordered if o.is_prompted]
