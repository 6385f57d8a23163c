"""Video parity with the reference SAM2VideoPredictor on the same random-weight checkpoint (float32).

The reference is configured with add_all_frames_to_correct_as_cond=True (a correction click on a tracked frame
becomes a prompted frame, as in our engine; tests/test_video_corrections.py shows Meta's default) and keeps its
default fill_hole_area=8, its CUDA-only connected components supplied by the kernel's stand-in (oracle_cc).
Its float32 crash on prompts "from the future" is patched by up-casting memories to float32, which is what its
own concatenation does whenever a float32 object pointer is present. Results are compared as float32 here;
tests/test_video_parity_long.py runs the shipped float16 results on a longer H.264 clip.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from oracle import build_reference, randomize_, save_official_checkpoint
from oracle_cc import reference_extension
from sam2_model import custom_config, load_model
from sam2_model.video.predictor import VideoPredictor

LOGIT_TOL = 1e-3
CFG = custom_config("video_parity", image_size=256, embed_dim=32, num_heads=1, stages=(1, 2, 2, 1),
                    global_att_blocks=(4,), window_spec=(8, 4, 4, 2))
NUM_FRAMES, H, W = 6, 120, 160


def smooth_frames(n: int, seed: int) -> list[np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    base = sum(F.interpolate(torch.rand(1, 3, s, s, generator=g), (H, W), mode="bilinear") for s in (3, 9, 27)) / 3
    frames = []
    for t in range(n):  # a drifting pattern, so that frames differ but stay related
        shifted = torch.roll(base, shifts=(2 * t, 3 * t), dims=(2, 3))
        frames.append((shifted[0].permute(1, 2, 0) * 255).clamp(0, 255).byte().numpy())
    return frames


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(reference video predictor, our predictor, JPEG folder) on the same weights and frames."""
    tmp = tmp_path_factory.mktemp("video_parity")
    folder = tmp / "frames"
    folder.mkdir()
    for i, frame in enumerate(smooth_frames(NUM_FRAMES, seed=3)):
        Image.fromarray(frame).save(folder / f"{i:05d}.jpg", quality=95)
    ref, path = build_pair_reference(CFG, tmp)
    ours = VideoPredictor(load_model(path, config=CFG), results_dtype=torch.float32)
    with reference_extension():
        yield ref, ours, str(folder)


def build_pair_reference(cfg, tmp, **model_kwargs):
    """The reference video predictor with random weights (objects mostly present), and its checkpoint."""
    torch.manual_seed(0)
    ref = build_reference(cfg, video=True, **{"add_all_frames_to_correct_as_cond": True, **model_kwargs})
    assert ref.fill_hole_area == 8
    randomize_(ref, seed=7)
    ref.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.data.fill_(1.0)  # objects mostly present
    ref.eval()
    patch_reference_memory_dtype(ref)
    path = tmp / f"{cfg.name}.pt"
    save_official_checkpoint(ref.state_dict(), path)
    return ref, path


def patch_reference_memory_dtype(ref) -> None:
    forward = ref.memory_attention.forward

    def upcast(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens=0):
        return forward(curr=curr, memory=memory.float(), curr_pos=curr_pos, memory_pos=memory_pos.float(),
                       num_obj_ptr_tokens=num_obj_ptr_tokens)

    ref.memory_attention.forward = upcast


class Pair:
    """Runs the same calls on both predictors and compares every returned frame."""

    def __init__(self, setup):
        self.ref, predictor, folder = setup
        self.state = self.ref.init_state(folder)
        self.session = predictor.open(folder)
        self.ref_frames: dict[int, torch.Tensor] = {}
        self.worst = 0.0

    def compare(self, frame: int, ref_logits: torch.Tensor, ref_ids) -> None:
        ids, logits = self.session.frame_logits(frame)
        assert list(ids) == list(ref_ids)
        ref_logits = ref_logits[:, 0].float()
        diff = float((ref_logits - logits).abs().max())
        self.worst = max(self.worst, diff)
        assert diff <= LOGIT_TOL, f"frame {frame}: logits differ by {diff:.2e}"
        decided = ref_logits.abs() > LOGIT_TOL
        assert torch.equal((logits > 0)[decided], (ref_logits > 0)[decided]), f"frame {frame}: masks differ"

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
        return any(self.session.result(t).masks.any() for t in range(NUM_FRAMES))


def run(setup, script) -> float:
    pair = Pair(setup)
    script(pair)
    assert pair.non_trivial()
    print(f"max abs logit diff: {pair.worst:.2e}")
    return pair.worst


def test_point_on_first_frame_forward(setup):
    run(setup, lambda p: (p.prompt(0, 1, points=[[60, 50]], labels=[1]), p.propagate("forward")))


def test_box_on_middle_frame_both_directions(setup):
    run(setup, lambda p: (p.prompt(3, 1, box=[30, 20, 110, 90]), p.propagate("both")))


def test_mask_prompt(setup):
    mask = np.zeros((H, W), bool)
    mask[30:80, 40:120] = True
    run(setup, lambda p: (p.prompt(1, 5, mask=mask), p.propagate("both")))


def test_two_objects_prompted_on_different_frames(setup):
    """Object 2's only prompt is on a later frame than the start: a prompt from the future."""
    def script(p):
        p.prompt(0, 1, points=[[60, 50], [100, 80]], labels=[1, 0])
        p.prompt(2, 2, box=[80, 30, 150, 110])
        p.propagate("forward")
        p.propagate("backward", start=4)
    run(setup, script)


def test_refinement_click_after_propagation(setup):
    def script(p):
        p.prompt(0, 1, points=[[60, 50]], labels=[1])
        p.propagate("forward")
        p.prompt(3, 1, points=[[90, 70]], labels=[0], clear_old=False)  # correction on a tracked frame
        p.propagate("forward")
    run(setup, script)


def test_object_added_after_propagation(setup):
    def script(p):
        p.prompt(0, 1, points=[[60, 50]], labels=[1])
        p.propagate("forward")
        p.prompt(4, 2, points=[[120, 90]], labels=[1])
        p.propagate("both")
    run(setup, script)


def test_object_removed(setup):
    def script(p):
        p.prompt(0, 1, points=[[60, 50]], labels=[1])
        p.prompt(0, 2, box=[80, 30, 150, 110])
        p.propagate("forward")
        with torch.inference_mode():
            p.ref.remove_object(p.state, 1)
        p.session.remove_object(1)
        p.prompt(2, 2, points=[[100, 60]], labels=[1], clear_old=False)
        p.propagate("forward")
    run(setup, script)
