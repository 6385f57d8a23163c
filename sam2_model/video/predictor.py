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
    results_dtype: precision of the stored low-res mask logits (float16 halves the results' memory).
    """

    def __init__(
        self,
        model: SAM2,
        *,
        dtype: torch.dtype = torch.float32,
        feature_cache_bytes: int = 512 << 20,
        frame_cache_frames: int = 8,
        results_dtype: torch.dtype = torch.float16,
    ):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
        self.model = model.eval()
        self.dtype = dtype
        self.feature_cache_bytes = feature_cache_bytes
        self.frame_cache_frames = frame_cache_frames
        self.results_dtype = results_dtype

    def open(self, source, fps: float | None = None) -> VideoSession:
        """A session on a video file, a folder of frames, or a sequence of H×W×3 uint8 RGB arrays.
        Nothing is decoded or embedded until a frame is needed."""
        frames = open_frames(source, fps=fps, cache_frames=self.frame_cache_frames)
        return VideoSession(self.model, frames, dtype=self.dtype, feature_cache_bytes=self.feature_cache_bytes,
                            results_dtype=self.results_dtype)
