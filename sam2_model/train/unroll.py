"""SAM 2's tracking unrolled over a training clip, differentiably, with simulated prompts.

The unroll uses the video engine's own pieces: the per-object bookkeeping (`ObjectState`, `FrameOutput`), the
memory choice (`select_memories`, packed by `pack_memory`) and the model steps the session calls (`condition_on_memory`,
`assemble_memory`, `predict_masks`, `mask_as_output`, `encode_memory`). All objects of a batch share one
`ObjectState` whose tensors have B rows (objects are prompted on the same frames, so their memories line up).

Order of work, as in SAM 2's training: the initial prompted frames (frame 0, maybe one more) are decoded first
without memory and become conditioning frames; then every other frame is tracked from its memories. On a
correction frame the tracked prediction is followed by corrective clicks sampled from its error region, and the
frame then becomes a conditioning frame (as a correction does in the session). Clicks and boxes on a prompted
frame are also followed by corrective clicks. Every decoder output is supervised; a mask prompt taken as the
output has nothing to learn and is not.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..memory_attention import recorded_cross_attention
from ..sam2 import SAM2, FrameFeatures, MaskPrediction
from ..video.memory_bank import FrameOutput, ObjectState
from ..video.session import pack_memory, select_for
from .data import ClipBatch
from .losses import (LossWeights, coverage, identity_loss, mask_prediction_loss, memory_attention_loss,
                     memory_readout_loss, object_cell_labels)
from .prompts import noisy_box, random_error_click

PROMPT_KINDS = ("mask", "box", "click")
MASK_INPUT_CLAMP = 32.0  # the session clamps a previous output's logits to ±32 before feeding them back


@dataclass(frozen=True)
class PromptPlan:
    """Where and how a clip is prompted.

    kind: the initial prompt, "mask", "box" or "click" (one positive click inside the object);
    init_frames: frames prompted before tracking, without memory (frame 0 first);
    init_corrections: corrective clicks after an initial box or click;
    correction_frames: tracked frames that get `frame_corrections` (≥ 1) corrective clicks and then become
    conditioning frames.
    """

    kind: str
    init_frames: tuple[int, ...] = (0,)
    init_corrections: int = 0
    correction_frames: tuple[int, ...] = ()
    frame_corrections: int = 1


@dataclass
class UnrollResult:
    """loss: scalar to minimise (mean over supervised decoder outputs); terms: summed loss terms and counts as
    floats; per_frame_iou: T×B IoU of each frame's final binarized mask with the ground truth (float)."""

    loss: Tensor
    terms: dict[str, float] = field(default_factory=dict)
    per_frame_iou: np.ndarray | None = None


class ClipUnroll:
    """One forward pass of SAM 2 over a ClipBatch with a PromptPlan; `run()` returns the loss.

    readout: a training-only head (D -> 1 channel) that reads a coarse mask out of each tracked frame's
    memory-conditioned features, supervised with weight `weights.memory_readout`; None: no such term.
    loss_size: side of the grid the mask losses are computed on (the masks upscaled to it, the target's
    `coverage` of it); 0 or None: the model's input size."""

    def __init__(self, model: SAM2, batch: ClipBatch, plan: PromptPlan, rng: np.random.Generator,
                 weights: LossWeights = LossWeights(), readout: torch.nn.Module | None = None,
                 loss_size: int | None = None):
        self.model, self.batch, self.plan, self.rng, self.weights = model, batch, plan, rng, weights
        self.loss_size = loss_size or model.config.image_size
        self.readout = readout if weights.memory_readout else None
        self.readout_losses: list[Tensor] = []
        self.attention_losses: list[Tensor] = []
        self.attention_mass: list[float] = []
        self.cell_labels: Tensor | None = None  # T×B×P, `object_cell_labels`, for the memory attention term
        self.num_frames, self.num_objects = batch.masks.shape[:2]
        self.targets_np = (batch.masks > 0.5).cpu().numpy()  # T×B×S×S bool, for prompt sampling
        self.obj = ObjectState(obj_id=0)
        self.mem_pos: Tensor | None = None
        self.losses: list[Tensor] = []
        self.terms: dict[str, float] = {}
        self.final_iou = np.zeros((self.num_frames, self.num_objects))

    # ------------------------------------------------------------------ driver
    def run(self) -> UnrollResult:
        t_count, n = self.batch.images.shape[:2]
        images = self.batch.images.flatten(0, 1)  # frame-major: row t·N + clip
        feats = self.model.encode_image(images)
        rows = lambda t: t * n + self.batch.clip_index  # noqa: E731
        frame_feats = [feats.select(rows(t)) for t in range(t_count)]
        if self.weights.memory_attention:
            self.cell_labels = object_cell_labels(self.batch.masks, self.batch.clip_index, *feats.embedding.shape[-2:])
        for t in self.plan.init_frames:
            self._prompted_frame(t, frame_feats[t])
        for t in range(t_count):
            if t not in self.plan.init_frames:
                self._tracked_frame(t, frame_feats[t])
        loss = torch.stack(self.losses).mean()
        if self.weights.embedding:
            loss = loss + self.weights.embedding * feats.embedding.pow(2).mean()
        if self.weights.identity and t_count > 1:
            identity = identity_loss(feats.embedding, self.batch.masks, self.batch.clip_index)
            loss = loss + self.weights.identity * identity
            self.terms["identity"] = float(identity.detach())
        if self.readout_losses:
            readout = torch.stack(self.readout_losses).mean()
            loss = loss + self.weights.memory_readout * readout
            self.terms["readout"] = float(readout.detach())
        if self.attention_losses:
            attention = torch.stack(self.attention_losses).mean()
            loss = loss + self.weights.memory_attention * attention
            self.terms["attention"] = float(attention.detach())
            self.terms["attention_mass"] = float(np.mean(self.attention_mass))
        return UnrollResult(loss, dict(self.terms), self.final_iou)

    # ------------------------------------------------------------------ frames
    def _prompted_frame(self, t: int, feats: FrameFeatures) -> None:
        """An initial prompt on frame t, decoded without memory, refined by corrective clicks."""
        target = self.batch.masks[t][:, None]
        if self.plan.kind == "mask":
            pred = self.model.mask_as_output(feats.embedding, feats.high_res, target)
        else:
            pix = self.model.condition_on_memory(feats, None, None, 0)
            coords, labels = self._initial_points(t)
            pred = self.model.predict_masks(pix, feats.high_res, coords, labels, None, labels.shape[1] <= 1)
            self._supervise(pred, target)
            pred = self._correct(t, pix, feats, pred, coords, labels, self.plan.init_corrections)
        self._remember(t, feats, pred, cond=True)

    def _tracked_frame(self, t: int, feats: FrameFeatures) -> None:
        """Track frame t from memory; on a correction frame, refine by clicks and make it a conditioning frame."""
        target = self.batch.masks[t][:, None]
        selection = select_for(self.model, self.obj, t, False, self.num_frames)
        memory = pack_memory(self.model, selection, self.num_frames, self.mem_pos)
        if self.cell_labels is None:
            pix = self.model.condition_on_memory(feats, *memory)
        else:
            with recorded_cross_attention(self.model.memory_attention) as records:
                pix = self.model.condition_on_memory(feats, *memory)
            self._supervise_attention(t, selection.spatial_frames, [w for w, _ in records])
        if self.readout is not None:
            self.readout_losses.append(memory_readout_loss(self.readout(pix), target))
        pred = self.model.predict_masks(pix, feats.high_res, None, None, None, multimask_output=True)
        self._supervise(pred, target)
        corrected = t in self.plan.correction_frames
        if corrected:
            no_labels = torch.zeros(self.num_objects, 0, dtype=torch.int32, device=pix.device)
            pred = self._correct(t, pix, feats, pred, pix.new_zeros(self.num_objects, 0, 2), no_labels,
                                 self.plan.frame_corrections)
        self._remember(t, feats, pred, cond=corrected)

    # ------------------------------------------------------------------ helpers
    def _initial_points(self, t: int) -> tuple[Tensor, Tensor]:
        """B×N×2 coords (model-input pixels) and B×N labels of the initial box or click."""
        gts = self.targets_np[t]
        if self.plan.kind == "box":
            pts = [[noisy_box(gt, self.rng)] for gt in gts]
            coords = torch.tensor(pts, dtype=torch.float32).view(-1, 2, 2)
            labels = torch.tensor([[2, 3]] * len(gts), dtype=torch.int32)
        else:
            clicks = [random_error_click(np.zeros_like(gt), gt, self.rng) for gt in gts]
            coords = torch.tensor([[c[:2]] for c in clicks], dtype=torch.float32)
            labels = torch.tensor([[c[2]] for c in clicks], dtype=torch.int32)
        device = self.model.device
        return coords.to(device), labels.to(device)

    def _correct(self, t: int, pix: Tensor, feats: FrameFeatures, pred: MaskPrediction, coords: Tensor,
                 labels: Tensor, rounds: int) -> MaskPrediction:
        """`rounds` times: add one click per object from the error of the current mask, decode again
        with the current logits as mask input (as the session does), supervise each output."""
        target = self.batch.masks[t][:, None]
        gts = self.targets_np[t]
        for _ in range(rounds):
            current = (pred.high_res[:, 0] > 0).cpu().numpy()
            clicks = [random_error_click(p, g, self.rng) for p, g in zip(current, gts)]
            coords = torch.cat([coords, torch.tensor([[c[:2]] for c in clicks], dtype=torch.float32,
                                                     device=coords.device)], dim=1)
            labels = torch.cat([labels, torch.tensor([[c[2]] for c in clicks], dtype=torch.int32,
                                                     device=labels.device)], dim=1)
            mask_input = pred.low_res.clamp(-MASK_INPUT_CLAMP, MASK_INPUT_CLAMP)
            pred = self.model.predict_masks(pix, feats.high_res, coords, labels, mask_input, labels.shape[1] <= 1)
            self._supervise(pred, target)
        return pred

    def _supervise(self, pred: MaskPrediction, target: Tensor) -> None:
        logits = self.model.upscale(pred.multimasks, self.loss_size)
        out = mask_prediction_loss(logits, pred.ious, pred.object_score, coverage(target, logits.shape[-2:]),
                                   self.weights)
        self.losses.append(out["loss"])
        for key in ("loss", "focal", "dice", "iou", "presence"):
            self.terms[key] = self.terms.get(key, 0.0) + float(out[key].detach())
        self.terms["outputs"] = self.terms.get("outputs", 0.0) + 1

    def _supervise_attention(self, t: int, memory_frames: list[int], attention: list[Tensor]) -> None:
        """`memory_attention_loss` of tracking frame t from the spatial memories of `memory_frames` (in key order)."""
        memory_labels = torch.cat([self.cell_labels[f] for f in memory_frames], dim=1)
        loss, mass = memory_attention_loss(attention, self.cell_labels[t], memory_labels)
        self.attention_losses.append(loss)
        self.attention_mass.append(float(mass))

    def _remember(self, t: int, feats: FrameFeatures, pred: MaskPrediction, cond: bool) -> None:
        """Encode frame t's final prediction into a memory and file it as a conditioning or tracked frame
        (single-frame clips need no memory)."""
        high_res = self.model.upscale(pred.low_res)
        if self.num_frames > 1:
            memory, self.mem_pos = self.model.encode_memory(feats, high_res, pred.object_score, from_clicks=cond)
            out = FrameOutput(pred.low_res, pred.object_score, pred.obj_ptr, memory)
            (self.obj.cond if cond else self.obj.tracked)[t] = out
        target = self.batch.masks[t] > 0.5
        with torch.no_grad():
            inter = ((high_res[:, 0] > 0) & target).flatten(1).sum(1).float()
            union = ((high_res[:, 0] > 0) | target).flatten(1).sum(1).float()
            iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
        self.final_iou[t] = iou.cpu().numpy()


def sample_plan(rng: np.random.Generator, num_frames: int, *, p_kinds: tuple[float, float, float] = (0.4, 0.4, 0.2),
                p_second_init: float = 0.2, max_correction_frames: int = 2, max_corrections: int = 3,
                visible_frames: np.ndarray | None = None) -> PromptPlan:
    """A random PromptPlan: kind with probabilities p_kinds (mask, box, click); with p_second_init a second initial
    prompted frame (among `visible_frames`, T bool: every object visible); 0..max_corrections clicks after an
    initial box or click; 0..max_correction_frames tracked frames corrected with 1..max_corrections clicks."""
    kind = PROMPT_KINDS[int(rng.choice(len(PROMPT_KINDS), p=np.asarray(p_kinds) / sum(p_kinds)))]
    init = [0]
    candidates = [t for t in range(1, num_frames) if visible_frames is None or visible_frames[t]]
    if candidates and rng.random() < p_second_init:
        init.append(int(rng.choice(candidates)))
    rest = [t for t in range(1, num_frames) if t not in init]
    n_fix = int(rng.integers(0, min(max_correction_frames, len(rest)) + 1))
    fixes = tuple(sorted(int(t) for t in rng.choice(rest, n_fix, replace=False))) if n_fix else ()
    return PromptPlan(kind, tuple(init), int(rng.integers(0, max_corrections + 1)), fixes,
                      int(rng.integers(1, max_corrections + 1)))
