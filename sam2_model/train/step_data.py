"""A training step's data (clips, prompt plan, random generators), drawn in this process or ahead in another.

Drawing the data (rendering synthetic videos, resizing frames and masks) takes about a seventh of a step on one
core. `DataPrefetcher` draws step s + 1 in a second process while step s trains, so a run with two cores spends
its main core on the model alone (the `micro` recipe, alone on this 2-core CPU: 0.33 s per step against 0.39).
Either way a step's data is the same function of (recipe, seed, step).
"""
from __future__ import annotations

import multiprocessing
from dataclasses import dataclass
from multiprocessing.pool import AsyncResult
from typing import TYPE_CHECKING

import numpy as np
import torch

from .data import ClipBatch, sample_batch, sample_frames
from .unroll import PromptPlan, sample_plan

if TYPE_CHECKING:
    from .trainer import Recipe


@dataclass
class StepData:
    """What a step draws before the model runs: its clips, its prompt plan, the generator that the unroll goes on
    drawing clicks from, and the seed of torch's generator (dropout)."""

    batch: ClipBatch
    plan: PromptPlan
    rng: np.random.Generator
    torch_seed: int


def draw_step(recipe: Recipe, seed: int, step: int, progress: float) -> StepData:
    """The data of step `step` of a run: a pure function of (recipe, seed, step) and, through the image warmup,
    of progress ∈ [0, 1]."""
    r = recipe
    rng = np.random.default_rng([seed, step])
    torch_seed = int(rng.integers(1 << 62))
    p_image = 1.0 if progress < r.image_warmup else r.p_image
    if rng.random() < p_image:
        batch = sample_frames(rng, r.model.image_size, r.data, r.data.num_frames * r.batch_clips)
        plan = sample_plan(rng, 1, p_kinds=(0.0, *r.p_kinds[1:]), max_corrections=r.max_corrections)
    else:
        batch = sample_batch(rng, r.model.image_size, r.data, r.batch_clips)
        min_pixels = r.data.min_area * r.model.image_size**2
        visible = (batch.masks.flatten(2).sum(-1) >= min_pixels).all(dim=1).numpy()
        plan = sample_plan(rng, batch.masks.shape[0], p_kinds=r.p_kinds, p_second_init=r.p_second_init,
                           max_correction_frames=r.max_correction_frames, max_corrections=r.max_corrections,
                           visible_frames=visible)
    return StepData(batch, plan, rng, torch_seed)


def _init_worker() -> None:
    torch.set_num_threads(1)


class DataPrefetcher:
    """Draws the next step's data in one forked worker process (as torch's DataLoader workers: "spawn" would
    re-run a calling script that lacks an `if __name__ == "__main__":` guard).

    `get(step, progress, next_progress)` returns step `step`'s data and starts drawing step + 1's at
    `next_progress`, the progress the next step will run at. Progress only matters during an image warmup; with a
    time budget the next step's progress is not known yet and the caller passes the current one, so the warmup's
    last image step may come one step later than without prefetching. Use as a context manager.
    """

    def __init__(self, recipe: Recipe, seed: int):
        self.recipe, self.seed = recipe, seed
        self._pool = multiprocessing.get_context("fork").Pool(1, initializer=_init_worker)
        self._pending: tuple[int, AsyncResult] | None = None

    def get(self, step: int, progress: float, next_progress: float) -> StepData:
        pending = self._pending
        ahead = self._pool.apply_async(draw_step, (self.recipe, self.seed, step + 1, next_progress))
        self._pending = (step + 1, ahead)
        if pending is not None and pending[0] == step:
            return pending[1].get()
        return draw_step(self.recipe, self.seed, step, progress)  # nothing drawn ahead for this step

    def close(self) -> None:
        self._pool.terminate()
        self._pool.join()

    def __enter__(self) -> "DataPrefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
