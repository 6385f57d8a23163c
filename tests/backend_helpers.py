"""Shared pieces of the backend tests: a small random-weight SAM 2, synthetic media, captured bodies."""
from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from config.settings import Settings
from sam2_model import build_model, custom_config, save_checkpoint
from sam2_model.video.frames import write_h264
from tests.fake_label_studio import LEGACY_TOKEN

CAPTURED = json.loads((Path(__file__).resolve().parent / "data" / "label-studio-1.23.2-requests.json").read_text())
VIDEO_PATH = CAPTURED["predict_batch"]["tasks"][0]["data"]["video"]  # /data/upload/1/97ceda74-clip.mp4
W, H, N_FRAMES, FPS = 64, 48, 20, 25.0  # the captured clip had 20 frames at 25 fps

SEQ_XML = """<View>
  <Image name="frames" valueList="$frames"/>
  <KeyPointLabels name="kp" toName="frames" smart="true"><Label value="Car"/></KeyPointLabels>
  <RectangleLabels name="rect" toName="frames" smart="true"><Label value="Car"/></RectangleLabels>
  <BrushLabels name="brush" toName="frames"><Label value="Car"/></BrushLabels>
</View>"""
# Random weights whose masks on clip_frames() are neither empty nor full: with seed 0 every mask is empty, and
# checks that compare masks or look for computed keyframes would hold with nothing tracked.
TRACKING_SEED = 3

# A small model of the SAM 2.1 architecture: a frame costs milliseconds on a CPU.
SMALL = custom_config("backend_test", image_size=128, embed_dim=16, d_model=32, memory_dim=16, decoder_mlp_dim=64,
                      memory_attention_ff_dim=64, memory_attention_layers=1)


def captured(name: str) -> dict:
    """A fresh deep copy of one captured body."""
    return copy.deepcopy(CAPTURED[name])


def small_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(SMALL)


def write_checkpoint(path: Path, seed: int = 0) -> Path:
    save_checkpoint(small_model(seed), path)
    return path


def backend_settings(tmp: Path, ls_url: str, seed: int = TRACKING_SEED, **changes) -> Settings:
    """Settings of a test backend: a checkpoint of `seed` in `tmp`, CPU, media from the fake Label Studio."""
    return Settings(**{"sam2_checkpoint": str(write_checkpoint(tmp / "backend_test.pt", seed=seed)),
                       "device": "cpu", "label_studio_url": ls_url, "label_studio_api_key": LEGACY_TOKEN,
                       "media_cache_dir": str(tmp / "cache"), "answer_memory_db": str(tmp / "answers.sqlite"),
                       "log_level": "WARNING", **changes})


def clip_frames(n: int = N_FRAMES, w: int = W, h: int = H) -> list[np.ndarray]:
    """A bright square moving right over a dark gradient."""
    frames = []
    for t in range(n):
        f = np.zeros((h, w, 3), np.uint8)
        f[..., 2] = np.linspace(0, 80, w, dtype=np.uint8)[None, :]
        x = 10 + t
        f[16:34, x:x + 18] = (230, 200, 40)
        frames.append(f)
    return frames


def h264_bytes(tmp: Path, n: int = N_FRAMES, fps: float = FPS) -> bytes:
    path = tmp / "clip.mp4"
    write_h264(path, clip_frames(n), fps=fps)
    return path.read_bytes()


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()
