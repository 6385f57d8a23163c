"""`VideoPredictor`: opens video sessions on a loaded model."""
from __future__ import annotations

import torch

from ..sam2 import SAM2
from .frames import open_frames
from .session import VideoSession


class VideoPredictor:
    """Shares one model between sessions.

    dtype: torch.float32, or torch.bfloat16 to run the model under autocast (CPU with AMX-BF16, or CUDA);
    feature_cache_bytes: per-session budget for cached frame features (about 12 MiB per 1024² frame);
    results_dtype: precision of the stored low-res mask logits (float16 halves the results' memory);
    fill_hole_area: background regions of the low-res masks of at most this many pixels (8-connected) become
    foreground, in outputs and in the memory of prompted frames, as in the reference predictor (0: off).
    """

    def __init__(
        self,
        model: SAM2,
        *,
        dtype: torch.dtype = torch.float32,
        feature_cache_bytes: int = 512 << 20,
        frame_cache_frames: int = 8,
        results_dtype: torch.dtype = torch.float16,
        fill_hole_area: int = 8,
    ):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
        self.model = model.eval()
        self.dtype = dtype
        self.feature_cache_bytes = feature_cache_bytes
        self.frame_cache_frames = frame_cache_frames
        self.results_dtype = results_dtype
        if isinstance(fill_hole_area, bool) or not isinstance(fill_hole_area, (int, float)) \
                or not fill_hole_area >= 0:
            raise ValueError(f"fill_hole_area must be a number >= 0, got {fill_hole_area!r}")
        self.fill_hole_area = fill_hole_area

    def open(self, source, fps: float | None = None) -> VideoSession:
        """A session on a video file, a folder of frames, or a sequence of H×W×3 uint8 RGB arrays.
        Nothing is decoded or embedded until a frame is needed."""
        frames = open_frames(source, fps=fps, cache_frames=self.frame_cache_frames)
        return VideoSession(self.model, frames, dtype=self.dtype, feature_cache_bytes=self.feature_cache_bytes,
                            results_dtype=self.results_dtype, fill_hole_area=self.fill_hole_area)
