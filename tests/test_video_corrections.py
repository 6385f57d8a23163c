"""A correction click on an already tracked frame: ours keeps it, Meta's default drops it on the next propagation.

In our engine (and in the reference with add_all_frames_to_correct_as_cond=True, the paper's interactive
setting) the corrected frame becomes a conditioning frame: the click's mask is kept on that frame and conditions
every frame tracked after it. With Meta's default (add_all_frames_to_correct_as_cond=False) the click answers at
once, but the frame stays a non-conditioning frame and the next propagation recomputes it from memory alone: the
mask the user just fixed comes back as it was before the click. A labeling tool cannot drop its user's click,
hence our choice (README, "Corrections").
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from oracle_cc import reference_extension
from sam2_model import custom_config, load_model
from sam2_model.video.predictor import VideoPredictor
from video_pair import build_pair_reference, reference_low_res, smooth_frames

CFG = custom_config("video_corrections", image_size=256, embed_dim=32, num_heads=1, stages=(1, 2, 2, 1),
                    global_att_blocks=(4,), window_spec=(8, 4, 4, 2))
NUM_FRAMES, H, W, CORRECTED = 6, 120, 160, 3
BOX, CLICK = [30, 20, 110, 90], [[70, 55]]


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    folder = tmp_path_factory.mktemp("video_corrections") / "frames"
    folder.mkdir()
    for i, frame in enumerate(smooth_frames(NUM_FRAMES, seed=3, h=H, w=W)):
        Image.fromarray(frame).save(folder / f"{i:05d}.jpg", quality=95)
    return str(folder)


def reference_run(folder: str, tmp, correct_as_cond: bool) -> dict[str, torch.Tensor]:
    """Low-res logits (1×1×64×64) of the corrected frame: tracked, just after the click, after re-propagating;
    plus the reference's checkpoint path."""
    tmp.mkdir()
    ref, path = build_pair_reference(CFG, tmp, add_all_frames_to_correct_as_cond=correct_as_cond)
    with reference_extension(), torch.inference_mode():
        state = ref.init_state(folder)
        ref.add_new_points_or_box(state, 0, 1, box=BOX)
        for _ in ref.propagate_in_video(state):
            pass
        tracked = reference_low_res(ref, state, CORRECTED).clone()
        ref.add_new_points_or_box(state, CORRECTED, 1, points=CLICK, labels=[0], clear_old_points=False)
        clicked = reference_low_res(ref, state, CORRECTED).clone()
        for _ in ref.propagate_in_video(state):
            pass
        again = reference_low_res(ref, state, CORRECTED).clone()
    return {"tracked": tracked, "clicked": clicked, "again": again, "path": path}


def test_meta_default_drops_the_correction_ours_keeps_it(frames, tmp_path):
    meta = reference_run(frames, tmp_path / "default", correct_as_cond=False)
    # the click changed the answer on that frame...
    assert (meta["clicked"] - meta["tracked"]).abs().max() > 0.1
    # ...and Meta's default re-propagation recomputed the frame without it: the correction is gone
    torch.testing.assert_close(meta["again"], meta["tracked"], atol=1e-4, rtol=0)

    session = VideoPredictor(load_model(meta["path"], config=CFG), results_dtype=torch.float32).open(frames)
    session.add_prompt(0, 1, box=BOX)
    for _ in session.propagate("forward"):
        pass
    tracked = session.objects[1].output(CORRECTED).low_res.float().clone()
    torch.testing.assert_close(tracked, meta["tracked"][0:1], atol=1e-3, rtol=0)  # same model, same tracking
    session.add_prompt(CORRECTED, 1, points=np.array(CLICK, float), labels=np.array([0]), clear_old=False)
    clicked = session.objects[1].output(CORRECTED).low_res.float().clone()
    for _ in session.propagate("forward"):
        pass
    again = session.objects[1].output(CORRECTED).low_res.float()
    # ours keeps the corrected frame as a conditioning frame: the click survives the re-propagation
    torch.testing.assert_close(again, clicked, atol=0, rtol=0)
    assert (again - tracked).abs().max() > 0.1
    # which is what the reference does in the paper's interactive setting
    cond = reference_run(frames, tmp_path / "as_cond", correct_as_cond=True)
    torch.testing.assert_close(again, cond["again"][0:1], atol=1e-3, rtol=0)
