"""Training clips: short windows of synthetic videos, preprocessed exactly as the video engine preprocesses frames.

A training sample is drawn from a `numpy.random.Generator`: a synthetic video of random size (aspect ratios
around the model's square input), object count, occlusion and leave-and-return events is rendered, and an
8-frame window (frame stride 1 or more) is cut from it. Frames go through `preprocess_frame` (the inference
path); ground-truth masks are resized to the model's S×S grid the way the session resizes a mask prompt.

Training seeds of the generator are ≥ 2**32 (`TRAIN_SEED_BASE`); held-out evaluation clips use seeds below it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..video.frames import preprocess_frame
from .synthetic import generate_clip

TRAIN_SEED_BASE = 1 << 32
"""Every training clip's generator seed is at least this; held-out clips use smaller seeds."""


@dataclass(frozen=True)
class DataConfig:
    """How training windows are drawn.

    num_frames: window length T; max_stride: frames are taken every 1..max_stride source frames;
    source_frames: length of the rendered video the window is cut from (≥ 12 for leave-and-return events);
    side_range: video height and width, each drawn in [lo, hi] × image_size; min_objects..max_objects objects
    per video (two or more: a tracked object always has a neighbour to confuse it with); p_occlusion / p_leave:
    chance of overlapping objects / an object leaving and re-entering;
    min_area: fraction of the frame an object must cover on the window's first frame to be tracked;
    image_videos: how many videos an image step draws its frames from (more: more varied objects per step).
    """

    num_frames: int = 8
    max_stride: int = 2
    source_frames: int = 24
    side_range: tuple[float, float] = (0.75, 1.75)
    min_objects: int = 1
    max_objects: int = 3
    p_occlusion: float = 0.7
    p_leave: float = 0.5
    min_area: float = 0.004
    image_videos: int = 1


@dataclass
class ClipBatch:
    """N training clips on the model grid. images: T×N×3×S×S normalized; masks: T×B×S×S float {0, 1} for the
    B tracked objects of all clips; clip_index: B (long), the clip each object belongs to."""

    images: Tensor
    masks: Tensor
    clip_index: Tensor

    def to(self, device: torch.device | str) -> "ClipBatch":
        return ClipBatch(self.images.to(device), self.masks.to(device), self.clip_index.to(device))


def resize_masks(masks: np.ndarray, image_size: int) -> Tensor:
    """...×H×W bool masks -> ...×S×S float {0, 1}: bilinear with antialiasing, then ≥ 0.5 (as the session
    converts a mask prompt)."""
    t = torch.from_numpy(masks).float()
    lead = t.shape[:-2]
    t = t.reshape(-1, 1, *t.shape[-2:])
    if tuple(t.shape[-2:]) != (image_size, image_size):
        t = F.interpolate(t, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
        t = (t >= 0.5).float()
    return t.reshape(*lead, image_size, image_size)


def _draw_video(rng: np.random.Generator, image_size: int, cfg: DataConfig, length: int) -> dict:
    """A synthetic video of random size, object count and events, as training draws them: `generate_clip`'s
    arguments (render any of its frames with `generate_clip(**video, frame_indices=...)`)."""
    lo, hi = cfg.side_range
    h, w = (int(round(image_size * rng.uniform(lo, hi) / 2)) * 2 for _ in range(2))
    k = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    return dict(seed=TRAIN_SEED_BASE + int(rng.integers(1 << 62)), num_frames=length, size=(h, w), num_objects=k,
                occlusion=bool(rng.random() < cfg.p_occlusion),
                leave_and_return=bool(length >= 12 and rng.random() < cfg.p_leave))


def sample_window(rng: np.random.Generator, image_size: int, cfg: DataConfig) -> tuple[Tensor, Tensor]:
    """One training clip: (images T×3×S×S, masks T×K×S×S) with K ≥ 1 objects visible on the first frame."""
    stride = int(rng.integers(1, cfg.max_stride + 1))
    span = (cfg.num_frames - 1) * stride + 1
    length = max(cfg.source_frames, span)
    video = _draw_video(rng, image_size, cfg, length)
    start = int(rng.integers(length - span + 1))
    clip = generate_clip(**video, frame_indices=range(start, start + span, stride))  # only the window's frames
    area = clip.masks[0].mean(axis=(1, 2))
    keep = np.flatnonzero(area >= cfg.min_area)
    if len(keep) == 0:  # every object is hidden or outside on that frame; frame 0 always shows them all
        clip = generate_clip(**video, frame_indices=range(0, span, stride))
        keep = np.arange(video["num_objects"])
    images = torch.stack([preprocess_frame(frame, image_size) for frame in clip.frames])
    masks = resize_masks(clip.masks[:, keep], image_size)
    return images, masks


def sample_frames(rng: np.random.Generator, image_size: int, cfg: DataConfig, num_images: int) -> ClipBatch:
    """Single-frame "clips" for image steps: `num_images` frames spread over `cfg.image_videos` synthetic videos,
    each with its visible objects (T = 1, 1 ≤ N ≤ num_images: frames without a visible object are dropped; a
    video's frame 0, where every object shows, stands in when none of its frames is left)."""
    videos = max(1, min(cfg.image_videos, num_images))
    images, masks, clip_index = [], [], []
    for v in range(videos):
        count = num_images // videos + (v < num_images % videos)
        length = max(cfg.source_frames // videos, 12, count)  # shorter videos when there are several
        video = _draw_video(rng, image_size, cfg, length)
        clip = generate_clip(**video, frame_indices=np.sort(rng.choice(length, count, replace=False)))
        first = len(images)
        for frame, visible in zip(clip.frames, clip.masks):
            keep = np.flatnonzero(visible.mean(axis=(1, 2)) >= cfg.min_area)
            if len(keep) == 0:
                continue
            clip_index += [len(images)] * len(keep)
            images.append(preprocess_frame(frame, image_size))
            masks.append(resize_masks(visible[keep], image_size))
        if len(images) == first:  # no drawn frame of this video shows an object: frame 0 shows them all
            clip = generate_clip(**video, frame_indices=[0])
            clip_index += [len(images)] * video["num_objects"]
            images.append(preprocess_frame(clip.frames[0], image_size))
            masks.append(resize_masks(clip.masks[0], image_size))
    return ClipBatch(torch.stack(images)[None], torch.cat(masks)[None], torch.tensor(clip_index, dtype=torch.long))


def sample_batch(rng: np.random.Generator, image_size: int, cfg: DataConfig, num_clips: int) -> ClipBatch:
    """`num_clips` windows stacked into one ClipBatch."""
    windows = [sample_window(rng, image_size, cfg) for _ in range(num_clips)]
    images = torch.stack([im for im, _ in windows], dim=1)
    masks = torch.cat([m for _, m in windows], dim=1)
    clip_index = torch.cat([torch.full((m.shape[1],), i, dtype=torch.long) for i, (_, m) in enumerate(windows)])
    return ClipBatch(images, masks, clip_index)
