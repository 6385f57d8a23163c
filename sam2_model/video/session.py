"""A video segmentation session: prompts on any frame, immediate masks there, propagation into masklets.

Semantics follow the reference SAM 2 video predictor (configured so that every prompted frame, also a
correction on an already tracked frame, becomes a conditioning frame; holes of up to `fill_hole_area` pixels
in the low-res masks are filled as the reference's default does), with serving-grade resources: frames
are decoded on demand, image features live in a byte-bounded LRU, spatial memories are kept only while the
memory bank can still use them, results are stored as half-precision low-res logits, and all objects that
need tracking on a frame go through memory attention, decoder and memory encoder in one batch.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import threading
from typing import Hashable, Iterator, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..gate import forward
from ..postprocess import fill_holes
from ..prompts import check_boxes, check_points
from ..sam2 import NO_OBJECT_LOGIT, SAM2, FrameFeatures, MaskPrediction
from .feature_cache import FeatureCache
from .frames import FrameSource, preprocess_frame
from .memory_bank import (
    FrameOutput, MemorySelection, ObjectState, PointPrompt, prune_memories, select_memories, stack,
)


class SessionError(ValueError):
    """Base class of the errors a session raises for bad requests; the session stays usable after one."""


class PromptError(SessionError):
    """Empty, contradictory or out-of-frame prompts."""


class FrameIndexError(SessionError, IndexError):
    """A frame index outside the video."""


class UnknownObjectError(SessionError, LookupError):
    """An object id the session does not know."""


class FrameResult(NamedTuple):
    """Masks of every object on one frame: masks N×H×W bool, object_scores N presence logits (> 0: present)."""

    frame_idx: int
    obj_ids: list
    masks: np.ndarray
    object_scores: np.ndarray


TRIM_EVERY = 64
"""Propagated frames between two returns of freed heap memory to the OS (see `release_freed_memory`)."""


def _load_malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _load_malloc_trim()


def release_freed_memory() -> None:
    """Give freed heap pages back to the OS (glibc's malloc_trim; a no-op elsewhere). Long propagations
    interleave large temporaries with small long-lived results, and glibc would otherwise keep the freed gaps:
    measured, RSS grew about 8× faster than the stored results without it."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def select_for(model: SAM2, obj: ObjectState, frame: int, reverse: bool, num_frames: int) -> MemorySelection:
    """`select_memories` with the model's memory settings."""
    cfg = model.config
    return select_memories(obj, frame, reverse, num_frames, cfg.num_maskmem, cfg.max_obj_ptrs_in_encoder,
                           cfg.use_signed_tpos_enc_to_obj_ptrs)


def pack_memory(model: SAM2, sel: MemorySelection, num_frames: int, mem_pos: Tensor) -> tuple[Tensor, Tensor, int]:
    """A memory selection as attention tokens: (memory B×M×Dm, memory_pos B×M×Dm, pointer tokens at the end).
    mem_pos: 1×Dm×h×w position encoding of spatial memories, broadcast to the memories' batch."""
    spatial = [(slot, out.memory, mem_pos.expand(out.memory.shape[0], -1, -1, -1)) for slot, out in sel.spatial]
    max_distance = min(num_frames, model.config.max_obj_ptrs_in_encoder) - 1
    return model.assemble_memory(spatial, sel.pointers, max_distance)


class VideoSession:
    """Created by `VideoPredictor.open`. Thread-safe: every public call (and each propagated frame) holds the
    session's lock."""

    def __init__(
        self,
        model: SAM2,
        frames: FrameSource,
        *,
        dtype: torch.dtype = torch.float32,
        feature_cache_bytes: int = 512 << 20,
        results_dtype: torch.dtype = torch.float16,
        fill_hole_area: int = 8,
    ):
        self.model = model
        self.frames = frames
        self.dtype = dtype
        self.results_dtype = results_dtype
        self.fill_hole_area = fill_hole_area
        self.features = FeatureCache(feature_cache_bytes)
        self.objects: dict[Hashable, ObjectState] = {}
        self._lock = threading.RLock()
        self._closed = False
        self._mem_pos: Tensor | None = None  # 1×Dm×h×w position encoding of spatial memories

    # ------------------------------------------------------------------ properties
    @property
    def frame_count(self) -> int:
        return self.frames.frame_count

    @property
    def fps(self) -> float:
        return self.frames.fps

    @property
    def frame_size(self) -> tuple[int, int]:
        """(height, width) of the video."""
        return self.frames.frame_size

    @property
    def obj_ids(self) -> list:
        return list(self.objects)

    # ------------------------------------------------------------------ prompts
    def add_prompt(
        self,
        frame_idx: int,
        obj_id: Hashable,
        points=None,
        labels=None,
        box=None,
        mask=None,
        clear_old: bool = True,
    ) -> FrameResult:
        """Prompt `obj_id` on `frame_idx` (a new id creates an object) and return that frame's masks.

        points N×2 (x, y) video pixels with labels N (1 positive, 0 negative); box (x1, y1, x2, y2) pixels;
        mask H×W (bool / 0-1) at video resolution. A mask excludes points and box. clear_old=False adds the
        clicks to the frame's earlier clicks (not allowed with a box, which must come first).
        """
        with self._lock, self._forward():
            self._check_open()
            self._check_frame(frame_idx)
            prompt = self._make_prompt(points, labels, box, mask)
            obj = self.objects.get(obj_id, ObjectState(obj_id))
            old = obj.prompts.get(frame_idx)
            if not clear_old and isinstance(prompt, PointPrompt):
                if box is not None:
                    raise PromptError("a box must be the first prompt on a frame: use clear_old=True")
                if isinstance(old, PointPrompt):
                    prompt = PointPrompt(torch.cat([old.coords, prompt.coords], 1),
                                         torch.cat([old.labels, prompt.labels], 1))
            output = self._decode_prompted(obj, frame_idx, prompt)  # may fail: nothing changed yet
            self.objects.setdefault(obj_id, obj)
            obj.prompts[frame_idx] = prompt
            obj.pending[frame_idx] = output
            return self._result(frame_idx)

    def embed(self, frame_idx: int) -> bool:
        """Compute and cache `frame_idx`'s image features ahead of prompts; False when already cached."""
        with self._lock, self._forward():
            self._check_open()
            self._check_frame(frame_idx)
            if frame_idx in self.features:
                return False
            self._features(frame_idx)
            return True

    def frame_features(self, frame_idx: int) -> FrameFeatures:
        """`frame_idx`'s image features (batch 1), computed once and cached like every frame's."""
        with self._lock, self._forward():
            self._check_open()
            self._check_frame(frame_idx)
            return self._features(frame_idx)

    def discover(self, generator, frame_idx: int, ids, max_overlap: float = 0.5, max_objects: int = 50) -> list:
        """Add as new objects the automatic masks on `frame_idx` that present objects do not cover
        (`sam2_model.video.discovery.discover`)."""
        from .discovery import discover

        return discover(self, generator, frame_idx, ids, max_overlap, max_objects)

    def clear_prompts(self, frame_idx: int, obj_id: Hashable) -> FrameResult:
        """Remove `obj_id`'s prompts on `frame_idx`; its output there becomes an ordinary tracked one."""
        with self._lock:
            self._check_open()
            self._check_frame(frame_idx)
            self._object(obj_id).clear(frame_idx)
            return self._result(frame_idx)

    def forget(self, frame_idx: int, obj_id: Hashable) -> None:
        """Forget `obj_id`'s prompt and output on `frame_idx`: a prompt added there next is decoded as on a first
        visit (no previous mask, no memory), and propagation tracks the frame anew."""
        with self._lock:
            self._check_open()
            self._check_frame(frame_idx)
            self._object(obj_id).forget(frame_idx)

    def remove_object(self, obj_id: Hashable) -> None:
        with self._lock:
            self._check_open()
            self._object(obj_id)
            del self.objects[obj_id]

    def reset(self) -> None:
        """Forget all objects, prompts and results (cached frame features are kept)."""
        with self._lock:
            self.objects.clear()

    def close(self) -> None:
        with self._lock:
            self.objects.clear()
            self.features.clear()
            self.frames.close()
            self._closed = True

    # ------------------------------------------------------------------ propagation
    def propagate(
        self, direction: str = "forward", start_frame: int | None = None, max_frames: int | None = None,
        obj_ids: list | None = None,
    ) -> Iterator[FrameResult]:
        """Track every object from `start_frame` (default: the earliest prompted frame) and yield each frame's
        masks as soon as it is computed. "both" runs forward, then backward from the same start frame (which is
        yielded by both passes). max_frames: frames to track beyond the start frame in each direction.
        obj_ids: track (and yield) only these objects; the others keep their outputs untouched."""
        if direction not in ("forward", "backward", "both"):
            raise SessionError(f"direction must be 'forward', 'backward' or 'both', got {direction!r}")
        if max_frames is not None and max_frames < 0:
            raise SessionError(f"max_frames must be ≥ 0, got {max_frames}")
        with self._lock:
            self._check_open()
            if start_frame is not None:
                self._check_frame(start_frame)
            objects = None if obj_ids is None else [self._object(i) for i in obj_ids]
            with self._forward():
                self._commit_prompts()
            if start_frame is None:
                start_frame = min(t for obj in self.objects.values() for t in obj.cond)
        n = self.frame_count
        span = n if max_frames is None else max_frames
        passes = []
        if direction in ("forward", "both"):
            passes.append((range(start_frame, min(start_frame + span, n - 1) + 1), False))
        if direction in ("backward", "both") and start_frame > 0:
            passes.append((range(start_frame, max(start_frame - span, 0) - 1, -1), True))
        return self._run_passes(passes, objects)

    def _run_passes(self, passes, objects: list[ObjectState] | None) -> Iterator[FrameResult]:
        done = 0
        for frames, reverse in passes:
            for frame in frames:
                with self._lock, self._forward():
                    self._check_open()
                    self._track_frame(frame, reverse, objects)
                    result = self._result(frame, objects)
                done += 1
                if done % TRIM_EVERY == 0:
                    release_freed_memory()
                yield result

    # ------------------------------------------------------------------ results
    def result(self, frame_idx: int) -> FrameResult:
        """The latest masks of every object on `frame_idx` (empty where an object has no output yet)."""
        with self._lock:
            self._check_frame(frame_idx)
            return self._result(frame_idx)

    def frame_logits(self, frame_idx: int) -> tuple[list, Tensor]:
        """(obj_ids, N×H×W float32 mask logits at video resolution) on `frame_idx`."""
        with self._lock:
            self._check_frame(frame_idx)
            return self.obj_ids, self._video_logits(frame_idx)

    def drop_logits(self, frame_idx: int) -> None:
        """Opt-in, for callers that keep results themselves: forget the low-res logits of every object's
        tracked (not prompted) output on `frame_idx`. Memories, pointers and scores stay, so tracking is
        unchanged; `result(frame_idx)` afterwards gives those objects empty masks (scores kept), and a later click there is
        decoded from the click alone (no previous mask as mask input)."""
        with self._lock:
            for obj in self.objects.values():
                out = obj.tracked.get(frame_idx)
                if out is not None and frame_idx not in obj.cond and frame_idx not in obj.pending:
                    out.low_res = None

    def memory_stats(self) -> dict[str, int]:
        """Bytes held by the session: cached frame features, spatial memories (the memory bank's large part),
        and stored results (low-res logits, pointers and scores of every object on every visited frame)."""
        nbytes = lambda t: 0 if t is None else t.numel() * t.element_size()  # noqa: E731
        memories = results = 0
        with self._lock:
            for obj in self.objects.values():
                for out in (*obj.cond.values(), *obj.pending.values(), *obj.tracked.values()):
                    memories += nbytes(out.memory)
                    results += nbytes(out.low_res) + nbytes(out.obj_ptr) + nbytes(out.object_score)
            return {"features": self.features.nbytes, "memories": memories, "results": results}

    def _result(self, frame: int, objects: list[ObjectState] | None = None) -> FrameResult:
        """The masks of `objects` (default: all) on `frame`."""
        objects = list(self.objects.values()) if objects is None else objects
        logits = self._video_logits(frame, objects)
        scores = [
            float(out.object_score.reshape(-1)[0]) if (out := obj.output(frame)) is not None else NO_OBJECT_LOGIT
            for obj in objects
        ]
        return FrameResult(frame, [obj.obj_id for obj in objects], (logits > 0).numpy(),
                           np.asarray(scores, dtype=np.float32))

    def _video_logits(self, frame: int, objects: list[ObjectState] | None = None) -> Tensor:
        h, w = self.frame_size
        grid = 4 * self.model.config.image_embedding_size
        low = []
        for obj in self.objects.values() if objects is None else objects:
            out = obj.output(frame)
            kept = out is not None and out.low_res is not None
            low.append(out.low_res.float().cpu() if kept else torch.full((1, 1, grid, grid), NO_OBJECT_LOGIT))
        if not low:
            return torch.zeros(0, h, w)
        return F.interpolate(torch.cat(low), size=(h, w), mode="bilinear", align_corners=False)[:, 0]

    # ------------------------------------------------------------------ model steps
    def _features(self, frame: int) -> FrameFeatures:
        def compute(idx: int) -> FrameFeatures:
            image = preprocess_frame(self.frames.get(idx), self.model.config.image_size)
            return self.model.encode_image(image[None].to(self.model.device))

        return self.features.get_or_compute(frame, compute)

    def _select(self, obj: ObjectState, frame: int, reverse: bool) -> MemorySelection:
        return select_for(self.model, obj, frame, reverse, self.frame_count)

    def _memory_conditioned(self, selections: list[MemorySelection], feats: FrameFeatures) -> Tensor:
        """B×D×h×w features of a frame fused with each object's memories (selections of equal signature).

        On the CPU objects go through memory attention one at a time: its kernels run a batch of 3 about 11%
        slower than 3 single runs (the decoder and memory encoder stay batched)."""
        if len(selections) > 1 and feats.embedding.device.type == "cpu":
            return torch.cat([self._memory_conditioned([sel], feats) for sel in selections])
        packed = [pack_memory(self.model, sel, self.frame_count, self._mem_pos) for sel in selections]
        memory = stack([m for m, _, _ in packed])
        memory_pos = stack([p for _, p, _ in packed])
        return self.model.condition_on_memory(feats.expand(len(selections)), memory, memory_pos, packed[0][2])

    def _decode_prompted(self, obj: ObjectState, frame: int, prompt) -> FrameOutput:
        """Masks of one object on a prompted frame (memory not yet encoded)."""
        feats = self._features(frame)
        if isinstance(prompt, Tensor):  # a mask prompt is the output
            pred = self.model.mask_as_output(feats.embedding, feats.high_res, prompt)
        else:
            first_visit = frame not in obj.reverse
            if first_visit:
                pix = self.model.condition_on_memory(feats, None, None, 0)
            else:
                pix = self._memory_conditioned([self._select(obj, frame, obj.reverse[frame])], feats)
            prev = obj.output(frame)
            has_mask = prev is not None and prev.low_res is not None
            mask_input = prev.low_res.float().clamp(-32.0, 32.0) if has_mask else None
            multimask = prompt.labels.shape[1] <= 1
            pred = self.model.predict_masks(pix, feats.high_res, prompt.coords, prompt.labels, mask_input, multimask)
        # holes are filled in the output, which is also what the memory is encoded from (`_commit_prompts`)
        low_res = fill_holes(pred.low_res.float(), self.fill_hole_area)
        return FrameOutput(low_res, pred.object_score.float(), pred.obj_ptr.float())

    def _commit_prompts(self) -> None:
        """Encode the memories of freshly prompted frames; they become conditioning frames."""
        if not self.objects:
            raise SessionError("no prompts: add a prompt before propagating")
        for obj in self.objects.values():
            for frame, out in obj.pending.items():
                feats = self._features(frame)
                high_res = self.model.upscale(out.low_res)
                memory, pos = self.model.encode_memory(feats, high_res, out.object_score, from_clicks=True)
                out.memory = memory.to(torch.bfloat16)
                self._mem_pos = pos[:1]  # the same for every frame and object
                obj.cond[frame] = out
                obj.tracked.pop(frame, None)
            obj.pending.clear()

    def _track_frame(self, frame: int, reverse: bool, objects: list[ObjectState] | None = None) -> None:
        """Track `objects` (default: all) on `frame` from their memories (prompted frames keep their output)."""
        objects = list(self.objects.values()) if objects is None else objects
        todo = [obj for obj in objects if frame not in obj.cond]
        if todo:
            feats = self._features(frame)
            groups: dict[tuple[int, int], list[tuple[ObjectState, MemorySelection]]] = {}
            for obj in todo:
                sel = self._select(obj, frame, reverse)
                groups.setdefault(sel.signature, []).append((obj, sel))
            for group in groups.values():
                self._track_group(group, frame, feats)
        for obj in objects:
            obj.reverse[frame] = reverse
            prune_memories(obj, frame, reverse, self.model.config.num_maskmem)

    def _track_group(self, group: list[tuple[ObjectState, MemorySelection]], frame: int, feats: FrameFeatures) -> None:
        """Memory attention, decoder and memory encoder in one batch for objects of equal memory signature."""
        objs = [obj for obj, _ in group]
        pix = self._memory_conditioned([sel for _, sel in group], feats)
        pred: MaskPrediction = self.model.predict_masks(pix, feats.high_res, None, None, None, multimask_output=True)
        memory, pos = self.model.encode_memory(feats.expand(len(objs)), pred.high_res, pred.object_score,
                                               from_clicks=False)
        memory = memory.to(torch.bfloat16)
        self._mem_pos = pos[:1]
        low_res = fill_holes(pred.low_res, self.fill_hole_area)  # after the memory: it is encoded unfilled
        for i, obj in enumerate(objs):
            obj.tracked[frame] = FrameOutput(
                low_res=low_res[i:i + 1].to(self.results_dtype),
                object_score=pred.object_score[i:i + 1].float(),
                obj_ptr=pred.obj_ptr[i:i + 1].float(),
                memory=memory[i:i + 1].clone(),
            )

    # ------------------------------------------------------------------ validation
    def _forward(self):
        """One forward pass: the device's gate (sam2_model.gate), inference mode, autocast to the session dtype."""
        return forward(self.model.device, self.dtype)

    def _check_open(self) -> None:
        if self._closed:
            raise SessionError("the session is closed")

    def _check_frame(self, frame_idx) -> None:
        if isinstance(frame_idx, bool) or not isinstance(frame_idx, (int, np.integer)):
            raise FrameIndexError(f"frame index must be an integer, got {frame_idx!r}")
        if not 0 <= frame_idx < self.frame_count:
            raise FrameIndexError(f"frame {frame_idx} is outside the video (frames 0..{self.frame_count - 1})")

    def _object(self, obj_id: Hashable) -> ObjectState:
        if obj_id not in self.objects:
            raise UnknownObjectError(f"unknown object id {obj_id!r}; known ids: {self.obj_ids}")
        return self.objects[obj_id]

    def _make_prompt(self, points, labels, box, mask) -> PointPrompt | Tensor:
        """Validate a prompt in video pixels and convert it to model input space."""
        h, w = self.frame_size
        size = self.model.config.image_size
        if mask is not None:
            if points is not None or labels is not None or box is not None:
                raise PromptError("a mask prompt cannot be combined with points or a box")
            m = np.asarray(mask)
            if m.shape != (h, w):
                raise PromptError(f"mask must have the video's frame shape {(h, w)}, got {m.shape}")
            t = torch.from_numpy(m.astype(np.float32) > 0.5 if m.dtype != bool else m).float()[None, None]
            if (h, w) != (size, size):
                t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
                t = (t >= 0.5).float()
            return t.to(self.model.device)
        if labels is not None and points is None:
            raise PromptError("labels were given without points")
        if points is not None and labels is None:
            raise PromptError("points were given without labels")
        if points is None and box is None:
            raise PromptError("empty prompt: give points with labels, a box, or a mask")
        coords, lab = torch.zeros(1, 0, 2), torch.zeros(1, 0, dtype=torch.int32)
        if box is not None:
            b = check_boxes(box, (h, w), PromptError)
            if len(b) != 1:
                raise PromptError(f"one box per object and frame, got {len(b)}")
            coords = self.model.input_coords(torch.from_numpy(b).float().view(1, 2, 2), (h, w))
            lab = torch.tensor([[2, 3]], dtype=torch.int32)
        if points is not None:
            p, lbl = check_points(points, labels, (h, w), PromptError)
            coords = torch.cat([coords, self.model.input_coords(torch.from_numpy(p).float()[None], (h, w))], 1)
            lab = torch.cat([lab, torch.from_numpy(lbl)[None]], 1)
        return PointPrompt(coords.to(self.model.device), lab.to(self.model.device))
