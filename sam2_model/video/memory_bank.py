"""Per-object tracking state and the choice of memories a frame attends to.

Pure bookkeeping (no model calls). For object o tracked at frame f, the memory is:
- the spatial memory of every prompted (conditioning) frame of o, temporal slot 0;
- the spatial memories of the num_maskmem-1 frames just before f in tracking order (slots 1..num_maskmem-1,
  the previous frame last);
- up to `max_ptrs` object pointers: those of prompted frames not in the future (signed distance), then those
  of the frames just before f.
Only what that rule can still reach is kept: a tracked frame's spatial memory is dropped once the tracking
front has moved more than num_maskmem-1 frames past it, unless it lies that close to a prompted frame.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class FrameOutput:
    """One object's result on one frame.

    low_res: 1×1×4h×4w mask logits (float16 when stored as a tracked result; None once dropped by
    `VideoSession.drop_logits`); object_score: 1×1;
    obj_ptr: 1×D; memory: 1×Dm×h×w bfloat16 spatial memory (None until encoded).
    """

    low_res: Tensor | None
    object_score: Tensor
    obj_ptr: Tensor
    memory: Tensor | None = None


@dataclass
class PointPrompt:
    """Clicks / box corners in model-input pixels: coords 1×N×2, labels 1×N (2, 3 = box corners)."""

    coords: Tensor
    labels: Tensor


@dataclass
class ObjectState:
    """Everything the session knows about one object."""

    obj_id: int
    prompts: dict[int, PointPrompt | Tensor] = field(default_factory=dict)  # frame -> points, or 1×1×S×S mask
    cond: dict[int, FrameOutput] = field(default_factory=dict)  # prompted frames with encoded memories
    pending: dict[int, FrameOutput] = field(default_factory=dict)  # prompted, memory not yet encoded
    tracked: dict[int, FrameOutput] = field(default_factory=dict)  # frames reached by propagation
    reverse: dict[int, bool] = field(default_factory=dict)  # direction each frame was last visited in

    def output(self, frame: int) -> FrameOutput | None:
        """The freshest output of this object on `frame`, if any."""
        return self.pending.get(frame) or self.cond.get(frame) or self.tracked.get(frame)

    def forget(self, frame: int) -> None:
        """Forget the prompt and every output on `frame`, as if it had never been visited."""
        for frames in (self.prompts, self.pending, self.cond, self.tracked, self.reverse):
            frames.pop(frame, None)

    def clear(self, frame: int) -> None:
        """Forget the prompt on `frame`; a prompted output becomes an ordinary tracked one."""
        self.prompts.pop(frame, None)
        self.pending.pop(frame, None)
        out = self.cond.pop(frame, None)
        if out is not None:
            self.tracked[frame] = out
            self.reverse.pop(frame, None)


@dataclass
class MemorySelection:
    """What one object attends to on one frame.

    spatial: (temporal slot, FrameOutput) pairs; pointers: (signed frame distance, 1×D pointer) pairs;
    spatial_frames: the frame index of each spatial memory, in the same order.
    """

    spatial: list[tuple[int, FrameOutput]]
    pointers: list[tuple[int, Tensor]]
    spatial_frames: list[int]

    @property
    def signature(self) -> tuple[int, int]:
        """Objects with equal signatures can share one batched memory-attention pass."""
        return len(self.spatial), len(self.pointers)


def select_memories(
    obj: ObjectState,
    frame: int,
    reverse: bool,
    num_frames: int,
    num_maskmem: int,
    max_ptrs: int,
    signed_distances: bool,
) -> MemorySelection:
    """Memories of `obj` used to track `frame` (forward, or backward when `reverse`)."""
    step = -1 if reverse else 1
    spatial: list[tuple[int, FrameOutput]] = [(0, out) for out in obj.cond.values()]
    spatial_frames = list(obj.cond)
    for slot in range(1, num_maskmem):
        t = frame - step * (num_maskmem - slot)
        out = obj.tracked.get(t)
        if out is not None and out.memory is not None:  # pruned memories are simply absent
            spatial.append((slot, out))
            spatial_frames.append(t)

    max_ptrs = min(num_frames, max_ptrs)
    pointers = []
    for t, out in obj.cond.items():
        if (t >= frame) if reverse else (t <= frame):
            distance = (frame - t) * step if signed_distances else abs(frame - t)
            pointers.append((distance, out.obj_ptr))
    for t_diff in range(1, max_ptrs):
        t = frame - step * t_diff
        if t < 0 or t >= num_frames:
            break
        out = obj.tracked.get(t)
        if out is not None:
            pointers.append((t_diff, out.obj_ptr))
    return MemorySelection(spatial, pointers, spatial_frames)


def prune_memories(obj: ObjectState, front: int, reverse: bool, num_maskmem: int) -> None:
    """Drop the spatial memory (the large part of the state) of the frame that tracking towards `front` has
    just left out of reach, unless a prompted frame still reaches it. Pointers and logits stay."""
    reach = num_maskmem - 1
    t = front + num_maskmem if reverse else front - num_maskmem
    out = obj.tracked.get(t)
    if out is not None and out.memory is not None and all(abs(t - c) > reach for c in obj.cond):
        out.memory = None


def stack(tensors: list[Tensor]) -> Tensor:
    """Concatenate per-object 1×... tensors into a B×... batch."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=0)
