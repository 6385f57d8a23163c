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
from PIL import Image

from oracle_cc import reference_extension
from sam2_model import custom_config, load_model
from sam2_model.video.predictor import VideoPredictor
from video_pair import Pair, build_pair_reference, smooth_frames

LOGIT_TOL = 1e-3
CFG = custom_config("video_parity", image_size=256, embed_dim=32, num_heads=1, stages=(1, 2, 2, 1),
                    global_att_blocks=(4,), window_spec=(8, 4, 4, 2))
NUM_FRAMES, H, W = 6, 120, 160


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(reference video predictor, our predictor, JPEG folder) on the same weights and frames."""
    tmp = tmp_path_factory.mktemp("video_parity")
    folder = tmp / "frames"
    folder.mkdir()
    for i, frame in enumerate(smooth_frames(NUM_FRAMES, seed=3, h=H, w=W)):
        Image.fromarray(frame).save(folder / f"{i:05d}.jpg", quality=95)
    ref, path = build_pair_reference(CFG, tmp)
    assert ref.fill_hole_area == 8
    ours = VideoPredictor(load_model(path, config=CFG), results_dtype=torch.float32)
    with reference_extension():
        yield ref, ours, str(folder)


def run(setup, script) -> float:
    ref, ours, folder = setup
    pair = Pair(ref, ours, folder, folder, atol=LOGIT_TOL)
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
