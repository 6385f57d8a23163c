"""Deterministic synthetic videos with ground-truth masklets, for tests, benchmarks and training.

A clip is a static textured background with K textured shapes (ellipse, rectangle, star polygon, smooth blob) moving
along smooth trajectories (position, scale and rotation keyframes joined by cubic Hermite splines), composited in a
fixed depth order. The ground truth of an object is its visible part: what lies inside the frame and is not hidden by
an object in front. Everything is drawn from one `numpy.random.Generator` seeded by `seed`.

Guarantees, by construction:
- frame 0: every object lies fully inside the frame and overlaps no other object (so it can be prompted);
- `occlusion=True` (needs K >= 2): two objects meet, heavily overlapping, once per ~150 frames;
  `occlusion=False`: each object keeps to its own band of the frame, so objects never overlap;
- `leave_and_return=True`: once per ~150 frames one object leaves the frame entirely, stays out for a few frames
  and comes back before the end.

`size` is (height, width) throughout, like the arrays (a 1280×720 video is size=(720, 1280)).
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from sam2_model.video.frames import PathLike, write_h264

_SCALE_RANGE = (0.7, 1.25)  # object scale over time, relative to its base radius
_SHAPES = ("ellipse", "rectangle", "polygon", "blob")
_TEXTURES = ("solid", "stripes", "noise", "gradient", "checker")
_EVENT_PERIOD = 150  # frames per occlusion / leave-and-return cycle in long videos


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight boxes of boolean masks (..., H, W) -> (..., 4) float (x1, y1, x2, y2), NaN for empty masks.

    Inclusive pixel indices, as SAM 2's `mask_to_box`: x2 is the column of the right-most mask pixel.
    """
    rows, cols = masks.any(axis=-1), masks.any(axis=-2)  # (..., H), (..., W)
    present = rows.any(axis=-1)
    y1 = rows.argmax(axis=-1)
    y2 = rows.shape[-1] - 1 - rows[..., ::-1].argmax(axis=-1)
    x1 = cols.argmax(axis=-1)
    x2 = cols.shape[-1] - 1 - cols[..., ::-1].argmax(axis=-1)
    boxes = np.stack([x1, y1, x2, y2], axis=-1).astype(np.float64)
    boxes[~present] = np.nan
    return boxes


@dataclass
class SyntheticClip:
    """A rendered clip with per-object ground truth.

    frames: T×H×W×3 uint8 RGB. masks: T×K×H×W bool, visible part of each object (empty when absent or hidden).
    amodal_masks: T×K×H×W bool, each object's whole silhouette inside the frame, ignoring occluders.
    """

    frames: np.ndarray
    masks: np.ndarray
    fps: float
    amodal_masks: np.ndarray

    def boxes(self) -> np.ndarray:
        """T×K×4 float (x1, y1, x2, y2) boxes of the visible masks (inclusive pixels), NaN where absent."""
        return masks_to_boxes(self.masks)

    def visible(self) -> np.ndarray:
        """T×K bool: the object has at least one visible pixel."""
        return self.masks.any(axis=(2, 3))


@dataclass
class _Object:
    """One object: a sprite (texture + mask drawn at maximum scale) and its per-frame pose."""

    texture: np.ndarray  # S×S×3 uint8
    mask: np.ndarray  # S×S uint8, 0 or 255
    radius: float  # sprite bounding radius in px (at maximum scale)
    centres: np.ndarray  # T×2 (x, y) px
    factors: np.ndarray  # T, sprite scale factor in (0, 1]
    angles: np.ndarray  # T, radians


@dataclass
class _Scene:
    background: np.ndarray  # H×W×3 uint8
    objects: list[_Object]
    front_to_back: list[int]  # object indices, nearest first

    def render(self, t: int, frame: np.ndarray, visible: np.ndarray, amodal: np.ndarray) -> None:
        """Draw frame t into frame (H×W×3 uint8) and its masks into visible, amodal (K×H×W bool, all False)."""
        h, w = self.background.shape[:2]
        np.copyto(frame, self.background)
        covered = np.zeros((h, w), dtype=bool)
        for k in self.front_to_back:
            warped = _warp_sprite(self.objects[k], t, h, w)
            if warped is None:
                continue
            (y0, y1, x0, x1), silhouette, texture = warped
            vis = silhouette & ~covered[y0:y1, x0:x1]
            covered[y0:y1, x0:x1] |= silhouette
            amodal[k, y0:y1, x0:x1] = silhouette
            visible[k, y0:y1, x0:x1] = vis
            np.copyto(frame[y0:y1, x0:x1], texture, where=vis[..., None])


def _warp_sprite(obj: _Object, t: int, h: int, w: int):
    """Place the sprite at its frame-t pose; returns ((y0, y1, x0, x1), silhouette, texture) crops or None."""
    f, angle = float(obj.factors[t]), float(obj.angles[t])
    cx, cy = obj.centres[t]
    reach = obj.radius * f + 2.0
    x0, x1 = max(int(math.floor(cx - reach)), 0), min(int(math.ceil(cx + reach)) + 1, w)
    y0, y1 = max(int(math.floor(cy - reach)), 0), min(int(math.ceil(cy + reach)) + 1, h)
    if x0 >= x1 or y0 >= y1:
        return None
    c = (obj.mask.shape[0] - 1) / 2.0
    a, b = f * math.cos(angle), f * math.sin(angle)
    # sprite (u, v) -> crop (x, y): rotate and scale about the sprite centre, then move it to the object centre
    m = np.array([[a, -b, cx - x0 - a * c + b * c], [b, a, cy - y0 - b * c - a * c]])
    dsize = (x1 - x0, y1 - y0)
    silhouette = cv2.warpAffine(obj.mask, m, dsize, flags=cv2.INTER_LINEAR, borderValue=0) >= 128
    if not silhouette.any():
        return None
    texture = cv2.warpAffine(obj.texture, m, dsize, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return (y0, y1, x0, x1), silhouette, texture


# ----------------------------------------------------------------------------------------------------- textures


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float, channels: int) -> np.ndarray:
    """H×W×C float32 noise in about [0, 1], smooth over `cell` pixels (bicubic upsampling of a coarse grid)."""
    gh, gw = max(int(h / cell), 1) + 2, max(int(w / cell), 1) + 2
    coarse = rng.random((gh, gw, channels), dtype=np.float32)
    out = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    return out.reshape(h, w, channels)


def _colour(rng: np.random.Generator) -> np.ndarray:
    """A random RGB colour in [0, 1], float32 (3,)."""
    return rng.random(3, dtype=np.float32)


def _axis_coordinate(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """H×W float32 coordinate in px along a random direction."""
    theta = rng.uniform(0, np.pi)
    ys, xs = np.ogrid[:h, :w]
    return (xs * np.float32(math.cos(theta)) + ys * np.float32(math.sin(theta))).astype(np.float32)


def _pattern(rng: np.random.Generator, kind: str, h: int, w: int, period: float) -> np.ndarray:
    """H×W float32 weight in [0, 1] of the second colour for a texture kind."""
    if kind == "solid":
        return np.zeros((h, w), np.float32)
    if kind == "stripes":
        return (np.sin(_axis_coordinate(rng, h, w) * np.float32(2 * np.pi / period)) > 0).astype(np.float32)
    if kind == "noise":
        return np.clip(_smooth_noise(rng, h, w, period / 2, 1)[..., 0] * 1.6 - 0.3, 0, 1)
    if kind == "gradient":
        u = _axis_coordinate(rng, h, w)
        return (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
    if kind == "checker":
        ys, xs = np.ogrid[:h, :w]
        return (((xs // int(period)) + (ys // int(period))) % 2).astype(np.float32)
    raise ValueError(kind)


def _texture(rng: np.random.Generator, kind: str, h: int, w: int, period: float, grain: float) -> np.ndarray:
    """H×W×3 float32 texture: two random colours mixed by a pattern, plus fine grain."""
    c1, c2 = _colour(rng), _colour(rng)
    weight = _pattern(rng, kind, h, w, period)[..., None]
    tex = c1 * (1 - weight) + c2 * weight
    tex += (_smooth_noise(rng, h, w, 2.0, 3) - 0.5) * np.float32(grain)
    return tex


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """H×W×3 uint8: a gradient, large colour blobs and a faint random pattern."""
    side = min(h, w)
    bg = _texture(rng, "gradient", h, w, side, grain=0.08)
    bg += (_smooth_noise(rng, h, w, side / 4, 3) - 0.5) * np.float32(0.5)
    kind = _TEXTURES[rng.integers(1, len(_TEXTURES))]
    bg += (_pattern(rng, kind, h, w, side * rng.uniform(0.04, 0.12))[..., None] - 0.5) * np.float32(0.15)
    return _to_uint8(bg)


def _silhouette(rng: np.random.Generator, size: int, radius: float) -> np.ndarray:
    """size×size uint8 (0/255) random shape centred in the square, inside a circle of `radius` px."""
    kind = _SHAPES[rng.integers(len(_SHAPES))]
    if kind == "ellipse":
        theta = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        pts = np.stack([np.cos(theta), rng.uniform(0.45, 0.95) * np.sin(theta)], axis=1)
    elif kind == "rectangle":
        phi = rng.uniform(0.35, np.pi / 2 - 0.35)
        a, b = math.cos(phi), math.sin(phi)
        pts = np.array([[-a, -b], [a, -b], [a, b], [-a, b]])
    elif kind == "polygon":
        n = int(rng.integers(3, 9))
        theta = (np.arange(n) + rng.uniform(-0.3, 0.3, n)) * (2 * np.pi / n)
        rho = rng.uniform(0.55, 1.0, n)
        pts = np.stack([rho * np.cos(theta), rho * np.sin(theta)], axis=1)
    else:  # smooth blob: radius modulated by a few low harmonics
        theta = np.linspace(0, 2 * np.pi, 128, endpoint=False)
        harmonics = np.arange(2, 6)[:, None]
        amp = rng.uniform(0, 0.3, (4, 1)) / harmonics
        rho = 1 + (amp * np.cos(harmonics * theta + rng.uniform(0, 2 * np.pi, (4, 1)))).sum(0)
        rho /= rho.max()
        pts = np.stack([rho * np.cos(theta), rho * np.sin(theta)], axis=1)
    rot = rng.uniform(0, 2 * np.pi)
    rmat = np.array([[math.cos(rot), -math.sin(rot)], [math.sin(rot), math.cos(rot)]])
    c = (size - 1) / 2.0
    xy = (pts @ rmat.T) * radius + c
    out = np.zeros((size, size), np.uint8)
    cv2.fillPoly(out, [np.round(xy * 16).astype(np.int32)], 255, lineType=cv2.LINE_8, shift=4)
    return out


# ------------------------------------------------------------------------------------------------- trajectories


def _hermite(times: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Cubic Hermite spline through keyframes (n times, n×D values) with finite-difference tangents -> Q×D."""
    if len(times) == 1:
        return np.repeat(values, len(query), axis=0)
    tangents = np.empty_like(values)
    tangents[1:-1] = (values[2:] - values[:-2]) / (times[2:] - times[:-2])[:, None]
    tangents[0] = (values[1] - values[0]) / (times[1] - times[0])
    tangents[-1] = (values[-1] - values[-2]) / (times[-1] - times[-2])
    i = np.clip(np.searchsorted(times, query, side="right") - 1, 0, len(times) - 2)
    dt = (times[i + 1] - times[i])[:, None]
    u = (query[:, None] - times[i][:, None]) / dt
    h00, h10 = 2 * u**3 - 3 * u**2 + 1, u**3 - 2 * u**2 + u
    h01, h11 = -2 * u**3 + 3 * u**2, u**3 - u**2
    return h00 * values[i] + h10 * dt * tangents[i] + h01 * values[i + 1] + h11 * dt * tangents[i + 1]


@dataclass
class _Anchor:
    """A forced keyframe. `fill_before=False` forbids free keyframes between the previous anchor and this one."""

    time: float
    pos: np.ndarray
    fill_before: bool = True


@dataclass
class _Layout:
    """Where objects may go: per object the box of allowed centres (x_lo, x_hi, y_lo, y_hi) and band axis."""

    regions: np.ndarray  # K×4
    starts: np.ndarray  # K×2
    reaches: np.ndarray  # K, bounding radius at maximum scale, px
    band_axis: int | None  # 0: bands split x, 1: bands split y, None: shared frame


def _layout(rng: np.random.Generator, h: int, w: int, k: int, occlusion: bool) -> _Layout:
    """Object sizes, start positions (pairwise disjoint cells) and movement regions."""
    side = min(h, w)
    if occlusion:  # start cells on a grid; afterwards objects roam the whole frame
        cols = math.ceil(math.sqrt(k * w / h))
        rows = math.ceil(k / cols)
        band_axis = None
    else:  # one band per object along the longer side
        band_axis = 0 if w >= h else 1
        cols, rows = (k, 1) if band_axis == 0 else (1, k)
    cw, ch = w / cols, h / rows
    cells = rng.permutation(rows * cols)[:k]
    base = side * rng.uniform(0.10, 0.17, k) * min(1.0, math.sqrt(2 / k)) * _SCALE_RANGE[1]
    reaches = np.minimum(base, 0.42 * min(cw, ch))
    starts = np.empty((k, 2))
    regions = np.empty((k, 4))
    for i, cell in enumerate(cells):
        r, c = divmod(int(cell), cols)
        centre = np.array([(c + 0.5) * cw, (r + 0.5) * ch])
        slack = np.maximum(np.array([cw, ch]) / 2 - reaches[i] - 2, 0)
        starts[i] = centre + rng.uniform(-1, 1, 2) * slack
        if occlusion:
            regions[i] = [reaches[i], w - reaches[i], reaches[i], h - reaches[i]]
        else:
            x_lo, y_lo = c * cw, r * ch
            regions[i] = [x_lo + reaches[i], x_lo + cw - reaches[i], y_lo + reaches[i], y_lo + ch - reaches[i]]
    return _Layout(regions, starts, reaches, band_axis)


def _reflect(p: np.ndarray, region: np.ndarray) -> np.ndarray:
    lo, hi = region[[0, 2]], region[[1, 3]]
    p = np.where(p < lo, 2 * lo - p, p)
    p = np.where(p > hi, 2 * hi - p, p)
    return np.clip(p, lo, hi)


def _events(
    rng: np.random.Generator, t_count: int, h: int, w: int, lay: _Layout, occlusion: bool, leave: bool
) -> list[list[_Anchor]]:
    """Forced keyframes per object: meetings (heavy overlap) and exits beyond a frame edge followed by re-entry."""
    k = len(lay.reaches)
    anchors: list[list[_Anchor]] = [[] for _ in range(k)]
    cycles = max(1, round(t_count / _EVENT_PERIOD))
    period = t_count / cycles
    for cycle in range(cycles):
        c0 = cycle * period
        if occlusion and k >= 2:
            a, b = rng.choice(k, 2, replace=False)
            reach = lay.reaches[[a, b]].max()
            meet = np.array([rng.uniform(reach, w - reach), rng.uniform(reach, h - reach)])
            angle = rng.uniform(0, 2 * np.pi)
            offset = np.array([math.cos(angle), math.sin(angle)]) * rng.uniform(0.0, 0.15) * lay.reaches[[a, b]].min()
            t_meet = max(1, round(c0 + period * rng.uniform(0.25, 0.4)))  # on a frame, so the overlap is rendered
            anchors[a].append(_Anchor(t_meet, meet + offset))
            anchors[b].append(_Anchor(t_meet, meet - offset))
        if leave:
            i = int(rng.integers(k))
            axis = int(rng.integers(2)) if lay.band_axis is None else 1 - lay.band_axis  # 0: leave through x
            far_side = bool(rng.integers(2))
            extent = (w, h)[axis]
            out = extent + 1.2 * lay.reaches[i] + 2 if far_side else -1.2 * lay.reaches[i] - 2
            inside = lay.regions[i][2 * axis + 1] if far_side else lay.regions[i][2 * axis]
            lo, hi = lay.regions[i][2 * (1 - axis)], lay.regions[i][2 * (1 - axis) + 1]
            exit_pos, return_pos, enter_pos = np.empty(2), np.empty(2), np.empty(2)
            exit_pos[axis] = return_pos[axis] = out
            enter_pos[axis] = inside
            exit_pos[1 - axis] = rng.uniform(lo, hi)
            return_pos[1 - axis] = enter_pos[1 - axis] = rng.uniform(lo, hi)
            anchors[i] += [
                _Anchor(c0 + period * rng.uniform(0.5, 0.58), exit_pos),
                _Anchor(c0 + period * rng.uniform(0.72, 0.78), return_pos, fill_before=False),  # stays out meanwhile
                _Anchor(c0 + period * 0.88, enter_pos, fill_before=False),  # fully back inside
            ]
    for lst in anchors:
        lst.sort(key=lambda a: a.time)
    return anchors


def _path(
    rng: np.random.Generator, t_count: int, start: np.ndarray, region: np.ndarray, anchors: list[_Anchor],
    spacing: float, vmax: float,
) -> np.ndarray:
    """T×2 centres: a random walk of keyframes (speed varies per segment) through the anchors, splined."""
    times, points = [0.0], [start]
    gap = 0.5 * spacing

    def step_to(t: float) -> None:
        angle = rng.uniform(0, 2 * np.pi)
        step = np.array([math.cos(angle), math.sin(angle)]) * rng.uniform(0.2, 1.0) * vmax * (t - times[-1])
        points.append(_reflect(points[-1] + step, region))
        times.append(t)

    def walk_until(limit: float) -> None:
        t = times[-1] + spacing * rng.uniform(0.6, 1.4)
        while t < limit:
            step_to(t)
            t += spacing * rng.uniform(0.6, 1.4)

    for anchor in anchors:
        if anchor.fill_before:
            walk_until(anchor.time - gap)
        times.append(anchor.time)
        points.append(anchor.pos)
    walk_until(t_count - 1)
    step_to(max(t_count - 1.0, times[-1] + gap))  # the last keyframe covers the last frame
    return _hermite(np.array(times), np.array(points), np.arange(t_count, dtype=np.float64))


def _scales(rng: np.random.Generator, t_count: int, spacing: float) -> np.ndarray:
    """T scale factors in (0, 1] relative to the maximum scale: a log-uniform keyframe spline."""
    lo, hi = (math.log(s / _SCALE_RANGE[1]) for s in _SCALE_RANGE)
    times = [0.0]
    while times[-1] < t_count - 1:
        times.append(times[-1] + spacing * rng.uniform(0.8, 1.6))
    values = rng.uniform(lo, hi, (len(times), 1))
    logs = _hermite(np.array(times), values, np.arange(t_count, dtype=np.float64))[:, 0]
    return np.exp(np.clip(logs, lo, hi))


def _angles(rng: np.random.Generator, t_count: int) -> np.ndarray:
    """T rotation angles: slow spin plus a wobble."""
    t = np.arange(t_count, dtype=np.float64)
    wobble = rng.uniform(0, 0.4) * np.sin(2 * np.pi * t / rng.uniform(20, 60) + rng.uniform(0, 2 * np.pi))
    return rng.uniform(0, 2 * np.pi) + rng.uniform(-0.03, 0.03) * t + wobble


def _build_scene(
    seed: int, t_count: int, size: tuple[int, int], k: int, occlusion: bool, leave: bool
) -> _Scene:
    if k < 1 or t_count < 1:
        raise ValueError("need at least one object and one frame")
    if leave and t_count < 12:
        raise ValueError("leave_and_return needs at least 12 frames")
    h, w = size
    rng = np.random.default_rng(seed)
    background = _background(rng, h, w)
    lay = _layout(rng, h, w, k, occlusion)
    anchors = _events(rng, t_count, h, w, lay, occlusion, leave)
    spacing = float(np.clip(t_count / 5, 3, 40))
    vmax = 0.03 * min(h, w)
    objects = []
    for i in range(k):
        radius = float(lay.reaches[i])
        sprite = 2 * math.ceil(radius) + 3
        kind = _TEXTURES[rng.integers(len(_TEXTURES))]
        texture = _to_uint8(_texture(rng, kind, sprite, sprite, sprite * rng.uniform(0.12, 0.35), grain=0.1))
        mask = _silhouette(rng, sprite, radius)
        centres = _path(rng, t_count, lay.starts[i], lay.regions[i], anchors[i], spacing, vmax)
        factors = _scales(rng, t_count, spacing)
        if lay.band_axis is not None:  # keep the whole silhouette inside its band at every scale
            ax = lay.band_axis
            band_lo = lay.regions[i][2 * ax] - radius
            band_hi = lay.regions[i][2 * ax + 1] + radius
            margin = radius * factors + 2.0
            centres[:, ax] = np.clip(centres[:, ax], band_lo + margin, band_hi - margin)
        objects.append(_Object(texture, mask, radius, centres, factors, _angles(rng, t_count)))
    return _Scene(background, objects, [int(i) for i in rng.permutation(k)])


# ------------------------------------------------------------------------------------------------------ public


def generate_clip(
    seed: int,
    num_frames: int = 24,
    size: tuple[int, int] = (256, 256),
    num_objects: int = 2,
    *,
    occlusion: bool = True,
    leave_and_return: bool = False,
    fps: float = 24.0,
    frame_indices: Sequence[int] | None = None,
) -> SyntheticClip:
    """Render a clip in memory. size: (height, width). Same arguments -> identical arrays.

    leave_and_return needs num_frames >= 12; with one object there is nothing to occlude.
    frame_indices: render only these frames of the num_frames-frame video, in this order (the clip's arrays then
    hold len(frame_indices) frames; each is identical to that frame of the whole clip).
    """
    indices = range(num_frames) if frame_indices is None else [int(t) for t in frame_indices]
    if any(not 0 <= t < num_frames for t in indices):
        raise ValueError(f"frame indices must lie in [0, {num_frames}), got {list(indices)}")
    scene = _build_scene(seed, num_frames, size, num_objects, occlusion, leave_and_return)
    h, w = size
    frames = np.zeros((len(indices), h, w, 3), np.uint8)  # zeros: calloc'd pages fill much faster than empty
    masks = np.zeros((len(indices), num_objects, h, w), bool)
    amodal = np.zeros_like(masks)
    for i, t in enumerate(indices):
        scene.render(t, frames[i], masks[i], amodal[i])
    return SyntheticClip(frames, masks, float(fps), amodal)


def iter_frames(
    seed: int,
    num_frames: int = 24,
    size: tuple[int, int] = (256, 256),
    num_objects: int = 2,
    *,
    occlusion: bool = True,
    leave_and_return: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream the frames of `generate_clip` as (frame H×W×3 uint8, visible masks K×H×W bool) pairs.

    The two buffers are reused from frame to frame: copy them to keep them.
    """
    scene = _build_scene(seed, num_frames, size, num_objects, occlusion, leave_and_return)
    h, w = size
    frame = np.empty((h, w, 3), np.uint8)
    visible = np.empty((num_objects, h, w), bool)
    amodal = np.empty_like(visible)
    for t in range(num_frames):
        visible[:] = False
        amodal[:] = False
        scene.render(t, frame, visible, amodal)
        yield frame, visible


def generate_long_video(
    path: PathLike,
    num_frames: int = 300,
    size: tuple[int, int] = (720, 1280),
    fps: float = 24.0,
    seed: int = 0,
    *,
    num_objects: int = 3,
    occlusion: bool = True,
    leave_and_return: bool = True,
    crf: int = 18,
    preset: str = "medium",
) -> np.ndarray:
    """Stream a synthetic video to an H.264 file at `path` (frames are never all in memory).

    size: (height, width); crf, preset: libx264 quality and speed ("ultrafast" for quick benchmark videos).
    Returns the ground truth as T×K×4 float boxes (x1, y1, x2, y2, inclusive pixels) of the visible masks, NaN
    where an object is absent; `generate_clip` with the same arguments renders the same frames.
    """
    boxes = np.full((num_frames, num_objects, 4), np.nan)

    def frames() -> Iterator[np.ndarray]:
        stream = iter_frames(
            seed, num_frames, size, num_objects, occlusion=occlusion, leave_and_return=leave_and_return
        )
        for t, (frame, visible) in enumerate(stream):
            boxes[t] = masks_to_boxes(visible)
            yield frame

    write_h264(path, frames(), fps, crf=crf, preset=preset)
    return boxes
