"""Promptable segmentation of a single image: embed once with `set_image`, then `predict` per prompt.

Same names and meaning as the reference SAM2ImagePredictor: coordinates are pixels of the original image,
`mask_input` is a previous call's low-res logits, outputs are numpy arrays.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .gate import forward
from .postprocess import clean_masks
from .prompts import check_boxes, check_points
from .sam2 import SAM2, FrameFeatures

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_rgb(rgb: np.ndarray) -> torch.Tensor:
    """H×W×3 uint8 -> 3×H×W float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0)


def preprocess_image(rgb: np.ndarray, image_size: int) -> torch.Tensor:
    """H×W×3 uint8 -> 1×3×S×S: bilinear antialiased squash-resize, ImageNet normalisation
    (the reference image predictor's transform)."""
    x = F.interpolate(normalize_rgb(rgb)[None], size=(image_size, image_size), mode="bilinear",
                      align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def validate_rgb(image: object) -> np.ndarray:
    """Return `image` if it is an H×W×3 uint8 array, else raise ValueError saying what is wrong."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array (H×W×3 uint8 RGB), got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must have shape H×W×3 (RGB), got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (0..255), got dtype {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty: shape {image.shape}")
    return image


class ImagePredictor:
    """SAM 2 image mode. The embedding is computed once per image and reused by every `predict` call.

    max_hole_area / max_sprinkle_area: before the masks are upscaled, background regions (holes) and
    foreground regions (sprinkles) of the low-res masks of at most that many pixels (8-connected) are flipped,
    as in the reference predictor; 0 (the default, as there) turns a step off. low_res_logits stay raw.
    """

    def __init__(self, model: SAM2, mask_threshold: float = 0.0, max_hole_area: float = 0.0,
                 max_sprinkle_area: float = 0.0):
        for name, value in (("max_hole_area", max_hole_area), ("max_sprinkle_area", max_sprinkle_area)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        self.model = model
        self.mask_threshold = mask_threshold
        self.max_hole_area = max_hole_area
        self.max_sprinkle_area = max_sprinkle_area
        self._features: FrameFeatures | None = None
        self._orig_hw: tuple[int, int] | None = None

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    @torch.inference_mode()
    def set_image(self, image: np.ndarray) -> None:
        """Embed an H×W×3 uint8 RGB image."""
        image = validate_rgb(image)
        with forward(self.model.device):
            x = preprocess_image(image, self.image_size).to(self.model.device)
            features = self.model.encode_image(x)
        self.set_features(features, image.shape[:2])

    def set_features(self, features: FrameFeatures, image_hw: tuple[int, int]) -> None:
        """Use an embedding computed elsewhere (`SAM2.encode_image` of one H×W image, e.g. a cached video
        frame) instead of embedding the image again."""
        # the model saw "no memory" frames this way during training
        embedding = features.embedding + self.model.no_mem_embed.view(1, -1, 1, 1)
        self._features = FrameFeatures(embedding, features.pos, features.high_res)
        self._orig_hw = (int(image_hw[0]), int(image_hw[1]))

    def reset(self) -> None:
        self._features, self._orig_hw = None, None

    def get_image_embedding(self) -> torch.Tensor:
        """1×D×h×w embedding of the current image."""
        return self._require_image().embedding

    @torch.inference_mode()
    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for the current image.

        point_coords N×2 (x, y) pixels with point_labels N (1 foreground, 0 background); box (x1, y1, x2, y2)
        pixels, or B×4 for B objects at once; mask_input 1×256×256 low-res logits from a previous call.
        -> masks C×H×W (bool, or float logits with return_logits), iou_scores C, low_res_logits C×256×256;
        with B boxes each gets a leading B dimension. C = 3 with multimask_output, else 1.
        """
        self._require_image()
        coords, labels = self._prompt_points(point_coords, point_labels, box)
        mask = self._mask_input(mask_input, batch=1 if coords is None else coords.shape[0])
        multimasks, ious = self.predict_torch(coords, labels, mask, multimask_output)
        cleaned = clean_masks(multimasks, self.mask_threshold, self.max_hole_area, self.max_sprinkle_area)
        masks = self.upscale(cleaned)
        low_res = multimasks.clamp(-32.0, 32.0)
        if not return_logits:
            masks = masks > self.mask_threshold
        squeeze = lambda t: t.squeeze(0).cpu().numpy() if t.shape[0] == 1 else t.cpu().numpy()  # noqa: E731
        return squeeze(masks), squeeze(ious.float()), squeeze(low_res)

    @torch.inference_mode()
    def predict_torch(
        self,
        coords: torch.Tensor | None,
        labels: torch.Tensor | None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Batched, unchecked prompts on the current image (B prompts through the decoder only).

        coords B×N×2 in model-input pixels (see `input_coords`), labels B×N, mask_input B×1×4h×4w logits.
        -> (low-res logits B×C×4h×4w float32, unclamped; ious B×C float32).
        """
        features = self._require_image()
        device = self.model.device
        to = lambda t: None if t is None else t.to(device)  # noqa: E731
        with forward(device):
            multimasks, ious, _, _ = self.model.decode(features.embedding, features.high_res, to(coords),
                                                       to(labels), to(mask_input), multimask_output)
        return multimasks.float(), ious.float()

    def input_coords(self, xy: torch.Tensor) -> torch.Tensor:
        """Pixel coordinates (...×2, x then y) of the current image -> model-input pixels."""
        self._require_image()
        return self.model.input_coords(xy, self._orig_hw)

    def upscale(self, low_res: torch.Tensor) -> torch.Tensor:
        """B×C×4h×4w low-res logits -> B×C×H×W logits at the current image's size (bilinear)."""
        self._require_image()
        return F.interpolate(low_res.float(), size=self._orig_hw, mode="bilinear", align_corners=False)

    # ------------------------------------------------------------------ validation
    def _require_image(self) -> FrameFeatures:
        if self._features is None:
            raise ValueError("no image set: call set_image(image) before predict()")
        return self._features

    def _prompt_points(self, point_coords, point_labels, box) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Validate prompts and return model-input coords B×N×2 and labels B×N (box corners first)."""
        h, w = self._orig_hw
        coords = labels = None
        if (point_coords is None) != (point_labels is None):
            raise ValueError("point_coords and point_labels must be given together")
        if point_coords is not None:
            pts, lab = check_points(point_coords, point_labels, (h, w))
            coords = self.model.input_coords(torch.from_numpy(pts).float()[None], (h, w))
            labels = torch.from_numpy(lab)[None]
        if box is not None:
            boxes = check_boxes(box, (h, w), allow_degenerate=True)
            box_coords = self.model.input_coords(torch.from_numpy(boxes).float().view(-1, 2, 2), (h, w))
            box_labels = torch.tensor([[2, 3]], dtype=torch.int32).repeat(len(boxes), 1)
            if coords is not None:
                if len(boxes) > 1:
                    raise ValueError("points can be combined with a single box only")
                box_coords = torch.cat([box_coords, coords], dim=1)
                box_labels = torch.cat([box_labels, labels], dim=1)
            coords, labels = box_coords, box_labels
        return coords, labels

    def _mask_input(self, mask_input, batch: int) -> torch.Tensor | None:
        if mask_input is None:
            return None
        grid = 4 * self.model.config.image_embedding_size
        m = torch.as_tensor(np.asarray(mask_input, dtype=np.float32))
        if m.ndim == 2:
            m = m[None]
        if m.ndim == 3:
            m = m[None]
        if m.ndim != 4 or m.shape[1] != 1 or tuple(m.shape[-2:]) != (grid, grid) or m.shape[0] not in (1, batch):
            raise ValueError(f"mask_input must be 1×{grid}×{grid} low-res logits (a previous low_res_logits), "
                             f"got shape {tuple(np.asarray(mask_input).shape)}")
        return m
