"""The training loop: SAM 2's video objective on synthetic clips, time- or step-bounded, resumable.

Every step is a pure function of (seed, step, model and optimizer state): the clip, the prompt plan, the clicks and
the dropout masks are drawn from generators seeded by (seed, step). The resumable state file therefore holds the
model, the optimizer, the step, the training time spent and the seed, and a resumed run takes exactly the steps
the uninterrupted run would have taken. The state file is also a loadable model checkpoint (`load_model`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..checkpoint import atomic_save, cpu_state_dict, save_checkpoint
from ..configs import SAM2Config
from ..sam2 import SAM2
from .data import DataConfig
from .losses import LossWeights
from .step_data import DataPrefetcher, StepData, draw_step
from .unroll import ClipUnroll

LOG_TERMS = ("loss", "focal", "dice", "iou", "presence")


@dataclass(frozen=True)
class Recipe:
    """Everything that defines a training run besides its seed and length.

    lr: peak AdamW learning rate, reached after `warmup_steps` and decayed by a cosine to lr · min_lr_ratio over
    the run; weight_decay applies to weight matrices and kernels only; grad_clip: max global gradient norm.
    Prompts: p_kinds (mask, box, click) for the first frame, p_second_init for a second prompted frame,
    up to max_correction_frames corrected frames and max_corrections clicks per correction round.
    p_image: chance that a step is an image step instead (data.num_frames single frames prompted by a box or
    a click, with corrections: SAM 2 also trains on images), which teaches prompted segmentation cheaply.
    image_warmup: the first fraction of the run (by progress) takes only image steps: segmentation first, then
    tracking (a curriculum; 0: none).
    memory_attention_bias, mask_memory_gain: initialisation of the memory path (`init_memory_path`); 0 and 1
    leave the default initialisation. Experiments towards a micro model that uses its memory (README, "Training").
    prompt_attention_gain: initialisation of the decoder's cross-attentions (`init_prompt_attention`; 0: default).
    ema_decay: the written model is an exponential moving average of the trained weights with this decay per step
    (0: the trained weights themselves); averaging smooths the noise of one-clip steps.
    loss_size: side of the grid the mask losses are computed on (0: the model's input size, as in SAM 2; see
    `losses.coverage`).
    """

    model: SAM2Config
    data: DataConfig = field(default_factory=DataConfig)
    batch_clips: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    p_kinds: tuple[float, float, float] = (0.4, 0.4, 0.2)
    p_second_init: float = 0.2
    max_correction_frames: int = 2
    max_corrections: int = 3
    p_image: float = 0.0
    image_warmup: float = 0.0
    loss: LossWeights = field(default_factory=LossWeights)
    freeze_image_encoder: bool = False
    memory_attention_bias: float = 0.0
    mask_memory_gain: float = 1.0
    prompt_attention_gain: float = 0.0
    ema_decay: float = 0.0
    loss_size: int = 0

    def replace(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **changes)


def init_memory_path(model: SAM2, attention_bias: float = 0.0, mask_gain: float = 1.0) -> None:
    """Initialise the memory path so that a prompted mask reaches the next frame's features.

    attention_bias: query and key biases of memory cross-attention. Equal constant biases make the RoPE logits
    peak where a memory token sits at the query's own position, so attention passes each position's mask on
    instead of averaging it over the frame (at default initialisation it is nearly uniform).
    mask_gain: scales the memory encoder's last mask-downsampling conv, so that the mask is not drowned by the
    image embedding that it is added to.
    """
    with torch.no_grad():
        if attention_bias:
            for layer in model.memory_attention.layers:
                layer.cross_attn_image.q_proj.bias.fill_(attention_bias)
                layer.cross_attn_image.k_proj.bias.fill_(attention_bias)
        last = model.memory_encoder.mask_downsampler.encoder[-1]
        last.weight.mul_(mask_gain)
        last.bias.mul_(mask_gain)


def init_prompt_attention(model: SAM2, gain: float) -> None:
    """Initialise the mask decoder's cross-attentions (tokens <-> image) so that a prompt token attends where it is.

    Queries and keys both carry the same random Fourier position encoding. With independent random projections
    their product has no positional peak, and a from-scratch decoder long ignores where a box or click is (it
    segments every object alike). Here each key projection starts as a copy of its query projection, both scaled
    by `gain`: the logits then contain the encoding's own kernel, which peaks where the positions agree.
    """
    transformer = model.sam_mask_decoder.transformer
    attentions = [transformer.final_attn_token_to_image]
    for layer in transformer.layers:
        attentions += [layer.cross_attn_token_to_image, layer.cross_attn_image_to_token]
    with torch.no_grad():
        for attn in attentions:
            attn.q_proj.weight.mul_(gain)
            attn.k_proj.weight.copy_(attn.q_proj.weight)
            attn.k_proj.bias.copy_(attn.q_proj.bias)


class Trainer:
    """Owns the model (in training mode), the optimizer and the step counter."""

    def __init__(self, recipe: Recipe, seed: int = 0, device: str | torch.device = "cpu"):
        self.recipe, self.seed, self.device = recipe, seed, torch.device(device)
        torch.manual_seed(seed)
        self.model = SAM2(recipe.model).to(self.device).train()
        init_memory_path(self.model, recipe.memory_attention_bias, recipe.mask_memory_gain)
        if recipe.prompt_attention_gain:
            init_prompt_attention(self.model, recipe.prompt_attention_gain)
        # training-only probe of the memory-conditioned features (LossWeights.memory_readout); not in the model
        self.readout = torch.nn.Conv2d(recipe.model.d_model, 1, kernel_size=1).to(self.device)
        if recipe.freeze_image_encoder:
            self.model.image_encoder.requires_grad_(False)
        decay, no_decay = [], []
        for p in [*self.model.parameters(), *self.readout.parameters()]:
            if p.requires_grad:
                (decay if p.ndim >= 2 else no_decay).append(p)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=recipe.lr, foreach=True,  # one kernel per step over all tensors: 16 ms instead of 27 (micro, CPU)
        )
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(recipe.ema_decay),
                                 use_buffers=True) if recipe.ema_decay else None
        self.step = 0
        self.elapsed = 0.0  # training seconds spent, over all resumed runs

    # ------------------------------------------------------------------ one step
    def lr_at(self, progress: float) -> float:
        """Linear warmup over the first steps, then cosine decay with progress ∈ [0, 1] of the run."""
        r = self.recipe
        if self.step < r.warmup_steps:
            return r.lr * (self.step + 1) / r.warmup_steps
        cosine = 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
        return r.lr * (r.min_lr_ratio + (1 - r.min_lr_ratio) * cosine)

    def train_step(self, progress: float = 0.0, data: StepData | None = None) -> dict[str, float | str]:
        """Draw this step's data (unless `data` was drawn ahead, see `DataPrefetcher`), unroll, back-propagate,
        update. -> logged numbers."""
        r = self.recipe
        if data is None:
            data = draw_step(r, self.seed, self.step, progress)
        torch.manual_seed(data.torch_seed)  # dropout
        batch, plan, rng = data.batch, data.plan, data.rng
        batch = batch.to(self.device)
        result = ClipUnroll(self.model, batch, plan, rng, r.loss, self.readout, r.loss_size).run()
        lr = self.lr_at(progress)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, r.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.step += 1
        outputs = result.terms.pop("outputs")
        stats: dict[str, float | str] = {k: result.terms[k] / outputs for k in LOG_TERMS}
        for term in ("readout", "identity", "attention", "attention_mass"):
            if term in result.terms:
                stats[term] = result.terms[term]
        stats.update(step=self.step, lr=lr, grad_norm=float(grad_norm))
        if batch.masks.shape[0] == 1:  # image step: IoU of the prompted masks
            stats.update(prompt="image", image_iou=float(result.per_frame_iou.mean()))
        else:  # IoU of the masks on frames 1..T-1
            stats.update(prompt=plan.kind, track_iou=float(result.per_frame_iou[1:].mean()))
        return stats

    # ------------------------------------------------------------------ state
    def save(self, path: str) -> None:
        """Write the resumable state atomically (also a valid model checkpoint)."""
        atomic_save({
            "model": cpu_state_dict(self.model),
            "readout": cpu_state_dict(self.readout),
            "ema": None if self.ema is None else cpu_state_dict(self.ema),
            "config": dataclasses.asdict(self.model.config),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "elapsed": self.elapsed,
            "seed": self.seed,
            "recipe": dataclasses.asdict(self.recipe),
        }, path)

    @classmethod
    def load(cls, path: str, recipe: Recipe, device: str | torch.device = "cpu") -> "Trainer":
        """Resume from a state file written by `save`; `recipe` must be the one it was trained with."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("recipe") != dataclasses.asdict(recipe):
            raise ValueError(f"{path} was trained with a different recipe: {state.get('recipe')}")
        trainer = cls(recipe, seed=state["seed"], device=device)
        trainer.model.load_state_dict(state["model"])
        trainer.readout.load_state_dict(state["readout"])
        if trainer.ema is not None:
            trainer.ema.load_state_dict(state["ema"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.step, trainer.elapsed = state["step"], state["elapsed"]
        return trainer

    # ------------------------------------------------------------------ loop
    def fit(
        self,
        out: str,
        *,
        minutes: float | None = None,
        steps: int | None = None,
        state_path: str | None = None,
        log_path: str | None = None,
        log_every: int = 10,
        checkpoint_minutes: float = 5.0,
        progress: bool = True,
        prefetch: bool = False,
    ) -> None:
        """Train until `steps` steps or `minutes` of training time (counted over resumed runs), whichever comes
        first. The learning-rate schedule follows steps when given, else training time. Every
        `checkpoint_minutes` and at the end: the state goes to `state_path` and the model (config included) to
        `out`. Every `log_every` steps the averaged numbers are appended to `log_path` as a JSON line.
        prefetch: draw each next step's data in a second process (`DataPrefetcher`; worth it with a free core)."""
        if minutes is None and steps is None:
            raise ValueError("give minutes, steps, or both")
        budget = minutes * 60 if minutes is not None else math.inf
        for path in (out, state_path, log_path):
            if path:
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        from tqdm import tqdm

        bar = tqdm(total=steps, initial=self.step, disable=not progress, unit="step", dynamic_ncols=True)
        started, spent_before = time.monotonic(), self.elapsed
        last_checkpoint = started
        window: list[dict] = []
        with DataPrefetcher(self.recipe, self.seed) if prefetch else contextlib.nullcontext() as prefetcher:
            while (steps is None or self.step < steps) and self.elapsed < budget:
                frac = self.step / steps if steps is not None else self.elapsed / budget
                data = None
                if prefetcher is not None:
                    next_frac = (self.step + 1) / steps if steps is not None else frac
                    data = prefetcher.get(self.step, frac, next_frac)
                stats = self.train_step(frac, data)
                self.elapsed = spent_before + time.monotonic() - started
                window.append(stats)
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.3f}", lr=f"{stats['lr']:.1e}", min=f"{self.elapsed / 60:.1f}")
                if len(window) >= log_every:
                    self._log(log_path, window)
                    window = []
                if time.monotonic() - last_checkpoint >= checkpoint_minutes * 60:
                    self._checkpoint(out, state_path)
                    last_checkpoint = time.monotonic()
        if window:
            self._log(log_path, window)
        self._checkpoint(out, state_path)
        bar.close()

    def _checkpoint(self, out: str, state_path: str | None) -> None:
        if state_path:
            self.save(state_path)
        save_checkpoint(self.model if self.ema is None else self.ema.module, out)

    def _log(self, path: str | None, window: list[dict]) -> None:
        if not path:
            return
        numbers = sorted({k for w in window for k, v in w.items() if isinstance(v, float) and k != "lr"})
        line = {"step": self.step, "minutes": round(self.elapsed / 60, 3), "lr": window[-1]["lr"]}
        line.update({k: round(float(np.mean([w[k] for w in window if k in w])), 5) for k in numbers})
        kinds = [w["prompt"] for w in window]
        line["prompts"] = {k: kinds.count(k) for k in sorted(set(kinds))}
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")
