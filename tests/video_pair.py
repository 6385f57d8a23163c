"""Test harness of the video parity tests: the reference SAM2VideoPredictor and our session, driven by the same
calls on the same random weights and frames, compared on every returned frame.

The reference's float32 crash on prompts "from the future" is patched by up-casting memories to float32, which
is what its own concatenation does whenever a float32 object pointer is present.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from oracle import build_reference, randomize_, save_official_checkpoint
from sam2_model.postprocess import VIDEO_HOLE_FILL_LOGIT, component_areas

FP16_RTOL = 2.0**-11
"""Round-to-nearest float16 moves a value by at most this fraction of it (11-bit significand)."""


def smooth_frames(n: int, seed: int, h: int = 120, w: int = 160) -> list[np.ndarray]:
    """n H×W×3 uint8 frames of a drifting multi-scale pattern (frames differ but stay related)."""
    g = torch.Generator().manual_seed(seed)
    base = sum(F.interpolate(torch.rand(1, 3, s, s, generator=g), (h, w), mode="bilinear") for s in (3, 9, 27)) / 3
    frames = []
    for t in range(n):
        shifted = torch.roll(base, shifts=(2 * t, 3 * t), dims=(2, 3))
        frames.append((shifted[0].permute(1, 2, 0) * 255).clamp(0, 255).byte().numpy())
    return frames


def patch_reference_memory_dtype(ref) -> None:
    forward = ref.memory_attention.forward

    def upcast(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens=0):
        return forward(curr=curr, memory=memory.float(), curr_pos=curr_pos, memory_pos=memory_pos.float(),
                       num_obj_ptr_tokens=num_obj_ptr_tokens)

    ref.memory_attention.forward = upcast


def build_pair_reference(cfg, tmp, **model_kwargs):
    """(reference video predictor with random weights, objects mostly present; its official-layout checkpoint).

    add_all_frames_to_correct_as_cond=True (our semantics) unless given; fill_hole_area stays the reference's
    default 8 unless given."""
    torch.manual_seed(0)
    ref = build_reference(cfg, video=True, **{"add_all_frames_to_correct_as_cond": True, **model_kwargs})
    randomize_(ref, seed=7)
    ref.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.data.fill_(1.0)  # objects mostly present
    ref.eval()
    patch_reference_memory_dtype(ref)
    path = tmp / f"{cfg.name}.pt"
    save_official_checkpoint(ref.state_dict(), path)
    return ref, path


def reference_low_res(ref, state, frame: int) -> torch.Tensor:
    """N×1×4h×4w: the reference's latest stored low-res logits of every object on `frame` (as it consolidates
    them; -1024 where an object has none)."""
    side = ref.image_size // 4
    out = torch.full((len(state["obj_ids"]), 1, side, side), -1024.0)
    for idx in range(len(state["obj_ids"])):
        temp, stored = state["temp_output_dict_per_obj"][idx], state["output_dict_per_obj"][idx]
        for d, key in ((temp, "cond_frame_outputs"), (temp, "non_cond_frame_outputs"),
                       (stored, "cond_frame_outputs"), (stored, "non_cond_frame_outputs")):
            if frame in d[key]:
                out[idx] = d[key][frame]["pred_masks"][0].float()
                break
    return out


def hole_flips(ours: torch.Tensor, ref: torch.Tensor, bad: torch.Tensor, atol: float, max_area: int) -> torch.Tensor:
    """The pixels of `bad` (N×1×h×w bool: low-res logits that disagree) that are one hole filled on one side
    only, because a pixel next to it is within `atol` of 0 and so may fall on either side of the threshold in
    float arithmetic (the hole then has max_area pixels on one side and more on the other). Hole filling is
    discontinuous there; everything else must agree.

    A pixel qualifies when one side holds the fill logit and the other a background logit (<= atol), its
    8-connected region of disagreement has at most max_area pixels, and that region or a pixel around it has a
    logit within atol of 0 on either side."""
    fills = (VIDEO_HOLE_FILL_LOGIT, float(torch.tensor(VIDEO_HOLE_FILL_LOGIT).half()))  # ours are stored in float16
    is_fill = lambda x: ((x - fills[0]).abs() <= 1e-6) | ((x - fills[1]).abs() <= 1e-6)  # noqa: E731
    # filled on one side; on the other background, or foreground by a hair (its raw logit was within atol of
    # 0 and fell on the other side of the threshold: not a hole there)
    one_sided = (is_fill(ref) & (ours <= atol)) | (is_fill(ours) & (ref <= atol))
    candidates = bad & one_sided
    candidates &= component_areas(candidates) <= max_area
    marginal = ((ref.abs() <= atol) & ~is_fill(ref)) | ((ours.abs() <= atol) & ~is_fill(ours))
    grown = candidates & (F.max_pool2d(marginal.float(), 3, stride=1, padding=1) > 0)
    while True:  # spread "next to a marginal pixel" over each 8-connected region of candidates
        wider = (F.max_pool2d(grown.float(), 3, stride=1, padding=1) > 0) & candidates
        if torch.equal(wider, grown):
            return grown
        grown = wider


class Pair:
    """Runs the same calls on the reference and our session and compares every returned frame.

    Low-res logits (what both store) must agree within atol + rtol·|reference| everywhere (rtol: the rounding of
    our stored results, FP16_RTOL for float16), except for holes filled on one side only next to a logit
    within atol of 0 (`hole_flips`, counted in `flipped`); masks at video resolution must be equal wherever the
    reference's logit is farther from 0 than that bound and no such hole reaches. `worst` is the largest
    |ours - reference| - rtol·|reference| outside those holes.
    """

    def __init__(self, ref, predictor, ref_folder: str, our_source, atol: float = 1e-3, rtol: float = 0.0):
        self.ref, self.atol, self.rtol = ref, atol, rtol
        self.state = ref.init_state(ref_folder)
        self.session = predictor.open(our_source)
        self.ref_frames: dict[int, tuple[torch.Tensor, list]] = {}
        self.worst = 0.0
        self.worst_by_frame: dict[int, float] = {}
        self.flipped = 0
        self.worst_abs = 0.0  # largest |ours - reference| outside flipped holes, rounding included
        self.fill_hole_area = int(ref.fill_hole_area)

    def compare(self, frame: int, ref_video: torch.Tensor, ref_ids) -> None:
        ids, _ = self.session.frame_logits(frame)
        assert list(ids) == list(ref_ids)
        ref_low = reference_low_res(self.ref, self.state, frame)
        ours_low = torch.stack([
            out.low_res[0].float() if (out := self.session.objects[i].output(frame)) is not None
            else torch.full_like(ref_low[0], -1024.0) for i in ids])
        excess = (ours_low - ref_low).abs() - self.rtol * ref_low.abs()
        flips = torch.zeros_like(excess, dtype=torch.bool)
        if self.fill_hole_area > 0 and bool((excess > self.atol).any()):
            flips = hole_flips(ours_low, ref_low, excess > self.atol, self.atol, self.fill_hole_area)
            self.flipped += int(flips.sum())
        worst = float(excess.masked_fill(flips, 0.0).max())
        self.worst_abs = max(self.worst_abs, float((ours_low - ref_low).abs().masked_fill(flips, 0.0).max()))
        self.worst = max(self.worst, worst)
        self.worst_by_frame[frame] = max(self.worst_by_frame.get(frame, 0.0), worst)
        assert worst <= self.atol, f"frame {frame}: low-res logits differ by {worst:.2e} beyond rounding"
        masks = self.session.result(frame).masks
        ref_video = ref_video[:, 0].float()
        reached = F.interpolate(flips.float(), size=ref_video.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        for k in range(len(ids)):
            bound = self.atol + self.rtol * float(ref_low[k].abs().max())
            decided = (ref_video[k].abs() > bound) & (reached[k] == 0)
            assert np.array_equal(masks[k][decided.numpy()], (ref_video[k] > 0)[decided].numpy()), \
                f"frame {frame}, object {ids[k]}: masks differ"

    def prompt(self, frame, obj_id, points=None, labels=None, box=None, mask=None, clear_old=True):
        with torch.inference_mode():
            if mask is not None:
                _, ids, logits = self.ref.add_new_mask(self.state, frame, obj_id, mask)
            else:
                _, ids, logits = self.ref.add_new_points_or_box(self.state, frame, obj_id, points=points,
                                                                labels=labels, box=box,
                                                                clear_old_points=clear_old)
        result = self.session.add_prompt(frame, obj_id, points=points, labels=labels, box=box, mask=mask,
                                         clear_old=clear_old)
        self.compare(frame, logits, ids)
        assert np.array_equal(result.masks, self.session.result(frame).masks)

    def propagate(self, direction="forward", start=None):
        passes = {"forward": [False], "backward": [True], "both": [False, True]}[direction]
        with torch.inference_mode():
            for reverse in passes:
                for frame, ids, logits in self.ref.propagate_in_video(self.state, start_frame_idx=start,
                                                                      reverse=reverse):
                    self.ref_frames[frame] = (logits.clone(), list(ids))
        ours = [r.frame_idx for r in self.session.propagate(direction, start_frame=start)]
        assert sorted(set(ours)) == sorted(self.ref_frames)
        for frame, (logits, ids) in self.ref_frames.items():
            self.compare(frame, logits, ids)
        self.ref_frames.clear()

    def non_trivial(self) -> bool:
        """At least one object is present with a non-empty mask somewhere (else parity proves little)."""
        return any(self.session.result(t).masks.any() for t in range(self.session.frame_count))
