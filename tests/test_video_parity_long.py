"""Video parity as shipped, on a clip long enough for the memory bank to do everything it does.

A 26-frame synthetic H.264 clip is read through our video reader (`VideoPredictor.open(mp4)`); the reference
reads the very frames our reader decoded (lossless PNG data under the .jpg names its loader wants). Ours runs
with the shipped defaults (float16 stored results, fill_hole_area=8, float32 compute on the CPU); the reference
with its defaults except add_all_frames_to_correct_as_cond=True (our correction semantics, see
test_video_corrections.py), its hole filling running on the CUDA kernel's stand-in (oracle_cc). Both model
families (SAM 2.0 and 2.1) use a small image encoder with the official memory settings (7 memories, 16 object
pointers, 4 memory-attention layers of width 256, memory width 64). The tests assert that the memory window
slides, that our engine prunes memories, that more than 16 object pointers exist and the cap applies, and that
holes were filled, so that they cannot silently test less.

Tolerance: the stored low-res logits must agree within ATOL + 2^-11·|reference logit|. The second term is the
float16 rounding of our stored results. ATOL covers float32 arithmetic, except after a correction click on a
tracked frame: its decoder pass takes that frame's stored logits as its mask input, float16-rounded in ours,
float32 in the reference, so the corrected frame, and every frame tracked from its memory and pointer, moves by
up to CORRECTION_ATOL.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from oracle_cc import reference_extension
from sam2_model import custom_config, get_config, load_model
from sam2_model.video.frames import VideoFileSource, write_h264
from sam2_model.video.predictor import VideoPredictor
from sam2_model.train.metrics import region_similarity
from sam2_model.video.session import select_for
from video_pair import FP16_RTOL, Pair, build_pair_reference, smooth_frames

NUM_FRAMES, H, W = 26, 120, 160
ATOL = 1e-3
CORRECTION_ATOL = 1e-2
BF16_MIN_IOU = 0.95
MEMORY_SETTINGS = ("num_maskmem", "max_obj_ptrs_in_encoder", "memory_attention_layers", "memory_attention_heads",
                   "memory_attention_ff_dim", "d_model", "memory_dim", "fuser_layers", "rope_theta",
                   "sigmoid_scale_for_mem_enc", "sigmoid_bias_for_mem_enc")


def small_config(base: str):
    return custom_config(f"long_{base}", base=base, image_size=256, embed_dim=32, num_heads=1, stages=(1, 2, 2, 1),
                         global_att_blocks=(4,), window_spec=(8, 4, 4, 2))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """(H.264 file, folder of the frames our reader decodes from it)."""
    tmp = tmp_path_factory.mktemp("long_clip")
    video = tmp / "clip.mp4"
    write_h264(video, smooth_frames(NUM_FRAMES, seed=5, h=H, w=W), fps=24.0)
    folder = tmp / "frames"
    folder.mkdir()
    with VideoFileSource(video) as source:
        assert source.frame_count == NUM_FRAMES
        for i in range(NUM_FRAMES):
            Image.fromarray(source.get(i)).save(folder / f"{i:05d}.jpg", format="PNG")  # lossless
    return video, str(folder)


@pytest.fixture(scope="module", params=["sam2.1_hiera_tiny", "sam2_hiera_tiny"])
def family(request, tmp_path_factory, clip):
    """(config, reference predictor, our model, reference's filled-hole pixel counter) for one model family."""
    cfg = small_config(request.param)
    official = get_config(request.param)
    assert {k: getattr(cfg, k) for k in MEMORY_SETTINGS} == {k: getattr(official, k) for k in MEMORY_SETTINGS}
    assert cfg.version == official.version
    ref, path = build_pair_reference(cfg, tmp_path_factory.mktemp(cfg.name))
    assert ref.fill_hole_area == 8 and ref.num_maskmem == 7 and ref.max_obj_ptrs_in_encoder == 16
    filled = {"pixels": 0}
    import sam2.sam2_video_predictor as reference_module

    fill = reference_module.fill_holes_in_mask_scores

    def counting_fill(mask, max_area):
        out = fill(mask, max_area)
        filled["pixels"] += int(((mask <= 0) & (out > 0)).sum())
        return out

    with reference_extension(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(reference_module, "fill_holes_in_mask_scores", counting_fill)
        yield cfg, ref, load_model(path, config=cfg), filled


def check_memory_bank(session, cfg, front: int) -> None:
    """After forward tracking from frame 0 to `front`: the window slid, memories were pruned, the pointer cap
    applied (asserted, so the parity above covers them)."""
    reach = cfg.num_maskmem - 1
    for obj in session.objects.values():
        sel = select_for(session.model, obj, front, False, session.frame_count)
        assert sorted(sel.spatial_frames) == [0] + list(range(front - reach, front))  # the window slid
        kept = sorted(t for t, out in obj.tracked.items() if out.memory is not None)
        pruned = sorted(t for t, out in obj.tracked.items() if out.memory is None)
        # memories within reach of the prompted frame 0 or of the front stay; the rest went
        assert kept == list(range(1, reach + 1)) + list(range(front - reach, front + 1))
        assert pruned == list(range(reach + 1, front - reach))
        pointers = 1 + len(obj.tracked)  # prompted frame 0 and every tracked frame
        assert pointers > cfg.max_obj_ptrs_in_encoder
        assert len(sel.pointers) == cfg.max_obj_ptrs_in_encoder
        assert all(out.low_res.dtype == torch.float16 for out in obj.tracked.values())


def test_long_clip_parity_as_shipped(family, clip):
    cfg, ref, model, filled = family
    video, folder = clip
    predictor = VideoPredictor(model)  # the shipped defaults
    assert predictor.results_dtype == torch.float16 and predictor.fill_hole_area == 8
    assert predictor.dtype == torch.float32
    pair = Pair(ref, predictor, folder, str(video), atol=ATOL, rtol=FP16_RTOL)
    assert isinstance(pair.session.frames, VideoFileSource)

    pair.prompt(0, 1, box=[30, 20, 110, 90])
    pair.prompt(0, 2, points=[[120, 80], [100, 30]], labels=[1, 1])
    pair.propagate("forward")
    front = NUM_FRAMES - 1
    check_memory_bank(pair.session, cfg, front)
    assert filled["pixels"] > 0, "no hole was filled: the post-processing went untested"
    tracked_worst = pair.worst

    # a correction click on the tracking front (a tracked frame), then tracking back over the whole clip
    pair.atol = CORRECTION_ATOL
    pair.prompt(front, 1, points=[[70, 50]], labels=[0], clear_old=False)
    pair.propagate("backward", start=front)
    assert pair.non_trivial()
    print(f"{cfg.version}: tracked {tracked_worst:.2e}, after the correction {pair.worst:.2e} beyond float16 "
          f"rounding ({pair.worst_abs:.2e} with it); {filled['pixels']} hole pixels filled, {pair.flipped} "
          f"filled on one side only next to a logit within {ATOL} of 0")
    assert tracked_worst <= ATOL


def foreground_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU (the J of sam2_model.train.metrics) of two non-empty boolean masks."""
    assert a.any() and b.any(), "an empty mask would make the IoU meaningless"
    return region_similarity(a, b)


@pytest.mark.parametrize("family", ["sam2.1_hiera_tiny"], indirect=True)  # one family (CI time)
def test_bfloat16_foreground_iou(family, clip):
    """Ours in bfloat16 against the reference in float32, per object over the whole clip."""
    cfg, ref, model, _ = family
    video, folder = clip
    state = ref.init_state(folder)
    session = VideoPredictor(model, dtype=torch.bfloat16).open(str(video))
    with torch.inference_mode():
        ref.add_new_points_or_box(state, 0, 1, box=[30, 20, 110, 90])
        ref.add_new_points_or_box(state, 0, 2, points=[[120, 80], [100, 30]], labels=[1, 1])
        ref_masks = np.stack([(logits[:, 0] > 0).numpy() for _, _, logits in ref.propagate_in_video(state)])
    session.add_prompt(0, 1, box=[30, 20, 110, 90])
    session.add_prompt(0, 2, points=[[120, 80], [100, 30]], labels=[1, 1])
    ours = np.stack([r.masks for r in session.propagate()])
    ious = [foreground_iou(ours[:, k], ref_masks[:, k]) for k in range(2)]
    print(f"bfloat16 foreground IoU vs the float32 reference: {', '.join(f'{v:.4f}' for v in ious)}")
    assert min(ious) >= BF16_MIN_IOU
