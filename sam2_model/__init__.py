"""Our SAM 2 (Segment Anything in Images and Videos) in PyTorch, weight-compatible with Meta's SAM 2.0 and
2.1 checkpoints.

    from sam2_model import load_model, ImagePredictor, VideoPredictor
    model = load_model("sam2.1_hiera_tiny.pt")
"""
from .checkpoint import CheckpointError, build_model, load_model, save_checkpoint
from .configs import CONFIGS, SAM2Config, custom_config, get_config
from .image_predictor import ImagePredictor
from .sam2 import SAM2

__all__ = [
    "CONFIGS",
    "CheckpointError",
    "ImagePredictor",
    "SAM2",
    "SAM2Config",
    "build_model",
    "custom_config",
    "get_config",
    "load_model",
    "save_checkpoint",
]
