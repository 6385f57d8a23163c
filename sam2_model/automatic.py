"""Automatic mask generation: segment everything in an image without prompts (SAM's "everything" mode).

A grid of single foreground clicks is decoded over the image (and, optionally, over overlapping crops of it);
masks are kept when the decoder's predicted IoU and their stability are high enough, masks cut by a crop edge
are dropped, and duplicates are removed by box NMS, first within a crop (best predicted IoU wins), then
across crops (the smaller crop wins). Options, defaults and output records are those of the reference
`SAM2AutomaticMaskGenerator`; each crop is embedded once and the clicks go through the decoder in batches.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .automatic_filters import (
    box_near_crop_edge, decode_rle, encode_rle, fill_small_regions, masks_to_boxes, nms, rle_area, stability_score,
    uncrop_boxes,
    uncrop_mask, uncrop_points,
)
from .automatic_grid import crop_boxes, layer_point_grids
from .image_predictor import ImagePredictor, validate_rgb
from .sam2 import SAM2, FrameFeatures

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
EDGE_TOLERANCE_PX = 20.0
"""A mask whose box comes this close to a crop edge inside the image is taken as cut by the crop."""


@dataclass
class Proposals:
    """Masks kept so far, N of them: rles (crop-local uncompressed RLE), boxes N×4 int64 (x0, y0, x1, y1,
    inclusive), ious N, points N×2 (x, y) float32, stability N, crops N×4 int64 (x0, y0, x1, y1).
    Boxes and points are in crop pixels until `uncrop` is called, then in image pixels."""

    rles: list
    boxes: Tensor
    ious: Tensor
    points: Tensor
    stability: Tensor
    crops: Tensor

    def __len__(self) -> int:
        return len(self.rles)

    def take(self, index: Tensor) -> "Proposals":
        """Rows `index` (int64 indices, in that order, or a bool mask)."""
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        rows = index.tolist()
        return Proposals([self.rles[i] for i in rows], self.boxes[index], self.ious[index], self.points[index],
                         self.stability[index], self.crops[index])

    @staticmethod
    def concat(parts: list["Proposals"]) -> "Proposals":
        if not parts:
            return Proposals([], torch.zeros(0, 4, dtype=torch.int64), torch.zeros(0), torch.zeros(0, 2),
                             torch.zeros(0), torch.zeros(0, 4, dtype=torch.int64))
        return Proposals(sum((p.rles for p in parts), []), *(
            torch.cat([getattr(p, name) for p in parts]) for name in ("boxes", "ious", "points", "stability", "crops")
        ))

    def uncrop(self, crop_box: list[int]) -> "Proposals":
        return Proposals(self.rles, uncrop_boxes(self.boxes, crop_box), self.ious, uncrop_points(self.points, crop_box),
                         self.stability, self.crops)


def _number(name: str, value, low: float = -math.inf, high: float = math.inf, *, integer: bool = False,
            low_open: bool = False, high_open: bool = False):
    """`value` if it is a (finite, or integer) number in the range, else ValueError naming the option."""
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        raise ValueError(f"{name} must be {'an integer' if integer else 'a finite number'}, got {value!r}")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        lo, hi = ("(" if low_open else "[") + f"{low:g}", f"{high:g}" + (")" if high_open else "]")
        raise ValueError(f"{name} must lie in {lo}, {hi}, got {value!r}")
    return value


class MaskGenerator:
    """Masks for everything in an image; see the module docstring and the reference generator for the options.

    generate(image H×W×3 uint8) -> list of records, one per mask, in the reference's order:
    segmentation (H×W bool, or an RLE dict), area (pixels), bbox [x, y, w, h] (w, h from the last pixel),
    predicted_iou, point_coords [[x, y]] (the click), stability_score, crop_box [x, y, w, h].
    min_mask_region_area > 0 fills holes and removes sprinkles of at most that many low-res (4h×4w) pixels
    binarized at 0, before masks are scored, as the reference does on GPU (on CPU the reference skips it: no
    CUDA kernel).
    """

    def __init__(
        self,
        model: SAM2,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.8,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        mask_threshold: float = 0.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        use_m2m: bool = False,
        multimask_output: bool = True,
    ):
        self.points_per_batch = _number("points_per_batch", points_per_batch, 1, integer=True)
        self.pred_iou_thresh = _number("pred_iou_thresh", pred_iou_thresh, 0, 1)
        self.stability_score_thresh = _number("stability_score_thresh", stability_score_thresh, 0, 1)
        self.stability_score_offset = _number("stability_score_offset", stability_score_offset, 0)
        self.mask_threshold = _number("mask_threshold", mask_threshold)
        self.box_nms_thresh = _number("box_nms_thresh", box_nms_thresh, 0, 1)
        self.crop_n_layers = _number("crop_n_layers", crop_n_layers, 0, integer=True)
        self.crop_nms_thresh = _number("crop_nms_thresh", crop_nms_thresh, 0, 1)
        self.crop_overlap_ratio = _number("crop_overlap_ratio", crop_overlap_ratio, 0, 1, high_open=True)
        self.crop_n_points_downscale_factor = _number(
            "crop_n_points_downscale_factor", crop_n_points_downscale_factor, 1, integer=True)
        self.min_mask_region_area = _number("min_mask_region_area", min_mask_region_area, 0)
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {', '.join(OUTPUT_MODES)}, got {output_mode!r}")
        if output_mode == "coco_rle":
            try:
                from pycocotools import mask as _  # noqa: F401
            except ImportError:
                raise ValueError("output_mode='coco_rle' needs pycocotools, which is not installed; "
                                 "use 'uncompressed_rle' or 'binary_mask'") from None
        for name, flag in (("use_m2m", use_m2m), ("multimask_output", multimask_output)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be True or False, got {flag!r}")
        self.output_mode, self.use_m2m, self.multimask_output = output_mode, use_m2m, multimask_output
        self.point_grids = self._grids(points_per_side, point_grids)
        self.predictor = ImagePredictor(model)

    def _grids(self, points_per_side, point_grids) -> list[np.ndarray]:
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("give exactly one of points_per_side and point_grids")
        if points_per_side is not None:
            _number("points_per_side", points_per_side, 1, integer=True)
            grids = layer_point_grids(points_per_side, self.crop_n_layers, self.crop_n_points_downscale_factor)
        else:
            grids = [np.asarray(g, dtype=np.float64) for g in point_grids]
            if len(grids) < self.crop_n_layers + 1:
                raise ValueError(f"point_grids needs one grid per layer ({self.crop_n_layers + 1}), got {len(grids)}")
            for g in grids:
                if g.ndim != 2 or g.shape[1] != 2 or not np.isfinite(g).all() or (g < 0).any() or (g > 1).any():
                    raise ValueError(f"each point grid must be N×2 (x, y) in [0, 1], got shape {g.shape}")
        for layer, g in enumerate(grids[: self.crop_n_layers + 1]):
            if len(g) == 0:
                raise ValueError(f"crop layer {layer} has no points: lower crop_n_points_downscale_factor "
                                 f"or crop_n_layers, or raise points_per_side")
        return grids

    # ------------------------------------------------------------------ generation
    @torch.inference_mode()
    def generate(self, image: np.ndarray, features: FrameFeatures | None = None) -> list[dict]:
        """Records of every mask found in an H×W×3 uint8 RGB image (an empty list when none survives).

        features: the whole image's `SAM2.encode_image` output (batch 1), if already computed (a video
        frame); it is used for the whole-image layer instead of embedding the image again."""
        return self.records(self.proposals(image, features), validate_rgb(image).shape[:2])

    @torch.inference_mode()
    def proposals(self, image: np.ndarray, features: FrameFeatures | None = None) -> Proposals:
        """The kept masks as `Proposals` (image pixels), before they are formatted as records."""
        image = validate_rgb(image)
        h, w = image.shape[:2]
        boxes, layers = crop_boxes((h, w), self.crop_n_layers, self.crop_overlap_ratio)
        found = []
        for box, layer in zip(boxes, layers):
            if box[2] > box[0] and box[3] > box[1]:  # tiny images can have empty crops
                found.append(self._crop(image, box, layer, features if layer == 0 else None))
        data = Proposals.concat(found)
        if len(boxes) > 1 and len(data):
            crop_area = (data.crops[:, 2] - data.crops[:, 0]) * (data.crops[:, 3] - data.crops[:, 1])
            data = data.take(nms(data.boxes.float(), 1 / crop_area, self.crop_nms_thresh))
        return data

    def _crop(self, image: np.ndarray, crop_box: list[int], layer: int, features: FrameFeatures | None) -> Proposals:
        """Masks of one crop: embed it once, decode its grid in batches, keep the good ones, NMS."""
        x0, y0, x1, y1 = crop_box
        crop = image[y0:y1, x0:x1]
        if features is not None:
            self.predictor.set_features(features, crop.shape[:2])
        else:
            self.predictor.set_image(crop)
        points = torch.as_tensor(self.point_grids[layer] * np.array([[x1 - x0, y1 - y0]]), dtype=torch.float32)
        batches = [self._batch(points[i: i + self.points_per_batch], crop_box, image.shape[:2])
                   for i in range(0, len(points), self.points_per_batch)]
        self.predictor.reset()
        data = Proposals.concat(batches)
        data = data.take(nms(data.boxes.float(), data.ious, self.box_nms_thresh))
        data.crops = torch.tensor([crop_box], dtype=torch.int64).expand(len(data), 4)
        return data.uncrop(crop_box)

    def _batch(self, points: Tensor, crop_box: list[int], image_hw: tuple[int, int]) -> Proposals:
        """Decode one batch of B clicks (crop pixels) -> the masks that pass the filters (crop pixels)."""
        predictor = self.predictor
        coords = predictor.input_coords(points)[:, None, :]
        labels = torch.ones(len(points), 1, dtype=torch.int32)
        low_res, ious = predictor.predict_torch(coords, labels, None, self.multimask_output)
        per_point = low_res.shape[1]
        low_res, ious = low_res.flatten(0, 1), ious.flatten(0, 1).cpu()
        points = points.repeat_interleave(per_point, dim=0)
        if self.use_m2m:
            low_res, ious = self._refine(points, low_res.clamp(-32.0, 32.0))
        keep = ious > self.pred_iou_thresh if self.pred_iou_thresh > 0 else torch.ones(len(ious), dtype=torch.bool)
        low_res, ious, points = low_res[keep.to(low_res.device)], ious[keep], points[keep]
        if self.min_mask_region_area > 0:
            # at the image predictor's threshold (0), not mask_threshold, as the reference does
            low_res = fill_small_regions(low_res, self.predictor.mask_threshold, self.min_mask_region_area)
        logits = predictor.upscale(low_res[:, None])[:, 0]  # masks at the crop's size, for the kept ones only
        stability = stability_score(logits, self.mask_threshold, self.stability_score_offset).cpu()
        keep = (stability >= self.stability_score_thresh if self.stability_score_thresh > 0
                else torch.ones(len(stability), dtype=torch.bool))
        masks = (logits[keep.to(logits.device)] > self.mask_threshold).cpu()
        ious, points, stability = ious[keep], points[keep], stability[keep]
        boxes = masks_to_boxes(masks)
        h, w = image_hw
        keep = ~box_near_crop_edge(boxes, crop_box, [0, 0, w, h], EDGE_TOLERANCE_PX)
        masks = masks[keep]
        return Proposals(encode_rle(masks), boxes[keep], ious[keep], points[keep], stability[keep],
                         torch.zeros(len(masks), 4, dtype=torch.int64))

    def _refine(self, points: Tensor, low_res: Tensor) -> tuple[Tensor, Tensor]:
        """Mask-to-mask refinement: decode each click again with its own low-res mask as mask prompt, one
        mask per click. points N×2 crop pixels, low_res N×4h×4w clamped logits -> (N×4h×4w logits, N ious)."""
        predictor, step = self.predictor, self.points_per_batch
        masks, ious = [], []
        for i in range(0, len(points), step):
            coords = predictor.input_coords(points[i: i + step])[:, None, :]
            labels = torch.ones(len(coords), 1, dtype=torch.int32)
            m, iou = predictor.predict_torch(coords, labels, low_res[i: i + step, None], multimask_output=False)
            masks.append(m[:, 0])
            ious.append(iou[:, 0].cpu())
        return torch.cat(masks), torch.cat(ious)

    # ------------------------------------------------------------------ output
    def records(self, data: Proposals, image_hw: tuple[int, int]) -> list[dict]:
        """`Proposals` (image pixels) -> the reference's records in this generator's output mode."""
        out = []
        for i in range(len(data)):
            crop = data.crops[i].tolist()
            box = data.boxes[i].float().tolist()
            out.append({
                "segmentation": self._segmentation(data.rles[i], crop, image_hw),
                "area": rle_area(data.rles[i]),
                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                "predicted_iou": data.ious[i].item(),
                "point_coords": [data.points[i].tolist()],
                "stability_score": data.stability[i].item(),
                "crop_box": [float(crop[0]), float(crop[1]), float(crop[2] - crop[0]), float(crop[3] - crop[1])],
            })
        return out

    def _segmentation(self, crop_rle: dict, crop_box: list[int], image_hw: tuple[int, int]):
        whole = list(image_hw) == crop_rle["size"]
        if self.output_mode == "binary_mask":
            return np.ascontiguousarray(uncrop_mask(decode_rle(crop_rle), crop_box, image_hw))
        rle = crop_rle if whole else encode_rle(uncrop_mask(decode_rle(crop_rle), crop_box, image_hw)[None])[0]
        if self.output_mode == "uncompressed_rle":
            return rle
        from pycocotools import mask as coco_mask  # checked in __init__

        coco = coco_mask.frPyObjects(rle, *image_hw)
        coco["counts"] = coco["counts"].decode("utf-8")
        return coco
