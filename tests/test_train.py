"""Training: losses on hand-made cases, prompt simulation, gradient flow, learning, exact resume, the CLIs."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from sam2_model import load_model
from sam2_model.sam2 import SAM2
from sam2_model.train import __main__ as train_cli
from sam2_model.train import evaluate
from sam2_model.train.data import TRAIN_SEED_BASE, ClipBatch, resize_masks, sample_batch, sample_frames, sample_window
from sam2_model.train import unroll as unroll_module
from sam2_model.train.losses import (BACKGROUND, UNLABELLED, LossWeights, coverage, dice_loss, focal_loss,
                                     identity_loss, mask_iou, mask_prediction_loss, memory_attention_loss,
                                     memory_readout_loss, object_cell_labels)
from sam2_model.train.prompts import center_error_click, mask_box, noisy_box, random_error_click
from sam2_model.train.synthetic import generate_clip
from sam2_model.train.recipes import MICRO_CONFIG, RECIPES, TEST_CONFIG
from sam2_model.train.trainer import Trainer, init_memory_path, init_prompt_attention
from sam2_model.train.unroll import ClipUnroll, PromptPlan, sample_plan
from sam2_model.video.frames import preprocess_frame
from sam2_model.video.predictor import VideoPredictor

RECIPE = RECIPES["test"]
S = RECIPE.model.image_size


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny models' ops are too small to gain from threads; on a busy machine two threads cost far more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def square(size: int, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    m = torch.zeros(size, size)
    m[y0:y1, x0:x1] = 1
    return m


# ---------------------------------------------------------------------------------------------------- losses
def test_perfect_prediction_has_near_zero_mask_losses():
    target = square(16, 4, 12, 4, 12)[None, None]
    logits = (target * 2 - 1) * 20
    assert focal_loss(logits, target).item() < 1e-9
    assert dice_loss(logits, target).item() < 1e-6
    assert mask_iou(logits, target).item() == 1.0
    wrong = -logits
    assert focal_loss(wrong, target).item() > 1.0 and dice_loss(wrong, target).item() > 0.99


def test_iou_l1_is_exact_and_best_candidate_is_supervised():
    target = square(8, 0, 4, 0, 4)[None, None]  # 16 pixels
    exact, half, empty = target[0, 0], square(8, 0, 2, 0, 4), torch.zeros(8, 8)
    multimasks = (torch.stack([half, exact, empty])[None] * 2 - 1) * 10  # 1×3×8×8, best candidate is index 1
    np.testing.assert_allclose(mask_iou(multimasks, target).numpy(), [[0.5, 1.0, 0.0]])
    ious = torch.tensor([[0.5, 0.5, 0.5]])
    score = torch.tensor([[3.0]])
    out = mask_prediction_loss(multimasks, ious, score, target)
    assert out["best"].tolist() == [1]
    assert out["iou"].item() == pytest.approx((0.0 + 0.5 + 0.5) / 3)
    assert out["focal"].item() == pytest.approx(focal_loss(multimasks[:, 1:2], target).item())
    assert out["dice"].item() == pytest.approx(dice_loss(multimasks[:, 1:2], target).item())
    assert out["presence"].item() == pytest.approx(math.log1p(math.exp(-3.0)))
    w = LossWeights()
    total = w.focal * out["focal"] + w.dice * out["dice"] + w.iou * out["iou"] + w.presence * out["presence"]
    assert out["loss"].item() == pytest.approx(total.item())
    assert (w.focal, w.dice, w.iou, w.presence) == (20.0, 1.0, 1.0, 1.0)


def test_absent_objects_get_only_the_presence_term():
    target = torch.zeros(2, 1, 8, 8)
    target[0, 0, :4, :4] = 1  # object 0 present, object 1 absent
    multimasks = torch.full((2, 1, 8, 8), -10.0)
    out = mask_prediction_loss(multimasks, torch.zeros(2, 1), torch.tensor([[0.0], [0.0]]), target)
    only_first = mask_prediction_loss(multimasks[:1], torch.zeros(1, 1), torch.tensor([[0.0]]), target[:1])
    assert out["dice"].item() == pytest.approx(only_first["dice"].item() / 2)  # averaged over both objects
    assert out["presence"].item() == pytest.approx(math.log(2))
    scores = torch.tensor([[2.0], [1.0]])  # the absent object's term weighs `absent` times the present one's
    weighted = mask_prediction_loss(multimasks, torch.zeros(2, 1), scores, target, LossWeights(absent=10.0))
    expected = (math.log1p(math.exp(-2.0)) + 10 * math.log1p(math.exp(1.0))) / 2
    assert weighted["presence"].item() == pytest.approx(expected)


def test_losses_on_a_coarser_grid_train_like_the_full_size_losses():
    """The unroll's loss grid (the masks upscaled to it, the target's coverage of it): the input size gives the
    model's own upscaled masks; half of it pushes the decoder's logits the same way (the gradients agree), at a
    quarter of the pixels."""
    model = SAM2(RECIPE.model)  # 64 px input, 16×16 low-res masks

    def at_loss_size(logits, mask_target, size):
        return model.upscale(logits, size), coverage(mask_target, (size, size))

    g = torch.Generator().manual_seed(0)
    target = torch.zeros(2, 1, 64, 64)
    target[0, 0, 10:41, 7:30] = 1
    target[1, 0, 33:60, 20:57] = 1
    target[1, 0, 40:50, 30:45] = 0  # a hole
    # a decent but imperfect prediction: the target's 16×16 coverage, noisy, as 3 candidates
    low_res = (8 * (coverage(target, (16, 16)) - 0.5)).repeat(1, 3, 1, 1) + torch.randn(2, 3, 16, 16, generator=g)
    full_logits, full_target = at_loss_size(low_res, target, 64)
    assert full_target is target
    assert torch.equal(full_logits, model.upscale(low_res))
    assert torch.equal(full_logits, torch.nn.functional.interpolate(low_res, size=(64, 64), mode="bilinear"))
    logits, soft = at_loss_size(low_res, target, 32)
    assert logits.shape == (2, 3, 32, 32) and soft.shape == (2, 1, 32, 32)
    assert soft.sum().item() == pytest.approx(target.sum().item() / 4)  # coverage keeps the area

    def gradient(loss, mask_target, size):
        x = low_res.clone().requires_grad_(True)
        loss(*at_loss_size(x, mask_target, size)).sum().backward()
        return x.grad.flatten()

    for loss in (focal_loss, dice_loss):
        full = gradient(loss, target, 64)
        assert torch.cosine_similarity(gradient(loss, target, 32), full, dim=0) > 0.85  # focal 0.89, dice 0.98
        # a misplaced target pushes elsewhere: the check can fail
        shifted = torch.roll(target, shifts=(6, 6), dims=(2, 3))
        assert torch.cosine_similarity(gradient(loss, shifted, 32), full, dim=0) < 0.5
    # a one-pixel object is still present on the coarse grid
    speck = torch.zeros(1, 1, 64, 64)
    speck[0, 0, 5, 5] = 1
    logits, soft = at_loss_size(low_res[:1], speck, 32)
    out = mask_prediction_loss(logits, torch.zeros(1, 3), torch.tensor([[2.0]]), soft)
    assert out["presence"].item() == pytest.approx(math.log1p(math.exp(-2.0)))


# ---------------------------------------------------------------------------------------------------- prompts
def test_clicks_come_from_the_error_region():
    gt = square(20, 5, 15, 5, 15).bool().numpy()
    pred = square(20, 5, 15, 5, 10).bool().numpy()  # right half missed
    rng = np.random.default_rng(0)
    for _ in range(20):
        x, y, label = random_error_click(pred, gt, rng)
        assert label == 1 and gt[y, x] and not pred[y, x]
    x, y, label = random_error_click(gt | square(20, 0, 2, 0, 20).bool().numpy(), gt, rng)
    assert label == 0 and y < 2
    x, y, label = center_error_click(pred, gt)
    assert label == 1 and x == 12 and 7 <= y <= 12  # the missed 10×5 strip's middle column
    assert center_error_click(gt, gt) is None
    for _ in range(20):
        x1, y1, x2, y2 = noisy_box(gt, rng)
        assert 0 <= x1 < x2 <= 20 and 0 <= y1 < y2 <= 20 and abs(x1 - 5) <= 3 and abs(y2 - 14) <= 3


def test_training_windows_and_heldout_seeds_are_disjoint():
    images, masks = sample_window(np.random.default_rng(3), S, RECIPE.data)
    assert images.shape == (RECIPE.data.num_frames, 3, S, S) and masks.shape[:2] == (RECIPE.data.num_frames,
                                                                                    masks.shape[1])
    assert masks.shape[2:] == (S, S) and set(masks.unique().tolist()) <= {0.0, 1.0}
    assert (masks[0].flatten(1).sum(1) > 0).all()  # every tracked object is visible on the first frame
    assert evaluate.heldout_seed(4000, 999_999) < TRAIN_SEED_BASE
    with pytest.raises(ValueError):
        evaluate.heldout_seed(5000, 0)
    plan = sample_plan(np.random.default_rng(0), 8, p_second_init=1.0, max_correction_frames=2)
    assert plan.init_frames[0] == 0 and not set(plan.init_frames) & set(plan.correction_frames)


def test_image_steps_are_single_frames():
    batch = sample_frames(np.random.default_rng(2), S, RECIPE.data, 4)
    n = batch.images.shape[1]
    assert batch.images.shape[0] == batch.masks.shape[0] == 1 and 1 <= n <= 4
    assert batch.clip_index.unique().tolist() == list(range(n)) and (batch.masks[0].flatten(1).sum(1) > 0).all()
    stats = Trainer(RECIPE.replace(p_image=1.0)).train_step()
    assert stats["prompt"] == "image" and 0.0 <= stats["image_iou"] <= 1.0


def test_image_steps_draw_frames_from_several_videos(monkeypatch):
    """image_videos = V: V distinct videos (12 frames each, enough for the leave-and-return event) share the
    frames of one image step; every frame keeps its own objects."""
    from sam2_model.train import data as data_module

    calls, rendered = [], []

    def counting(**video):
        calls.append((video["seed"], video["num_frames"]))
        rendered.append(len(video["frame_indices"]))
        return generate_clip(**video)

    monkeypatch.setattr(data_module, "generate_clip", counting)
    cfg = dataclasses.replace(RECIPE.data, image_videos=4, source_frames=24)
    batch = sample_frames(np.random.default_rng(5), S, cfg, 8)
    assert len(calls) == 4 and len({seed for seed, _ in calls}) == 4
    assert all(length == 12 for _, length in calls) and rendered == [2, 2, 2, 2]  # only the drawn frames
    assert 4 <= batch.images.shape[1] <= 8 and (batch.masks[0].flatten(1).sum(1) > 0).all()
    calls.clear()
    sample_frames(np.random.default_rng(5), S, dataclasses.replace(cfg, image_videos=1), 8)
    assert calls and all(length == 24 for _, length in calls) and len(calls) == 1


def test_min_objects_sets_the_fewest_objects_per_video(monkeypatch):
    from sam2_model.train import data as data_module

    counts = []

    def counting(**video):
        counts.append(video["num_objects"])
        return generate_clip(**video)

    monkeypatch.setattr(data_module, "generate_clip", counting)
    rng = np.random.default_rng(0)
    for min_objects in (1, 2):
        counts.clear()
        cfg = dataclasses.replace(RECIPE.data, min_objects=min_objects, max_objects=3)
        for _ in range(12):
            sample_window(rng, S, cfg)
        assert min(counts) == min_objects and max(counts) == 3


def test_image_step_without_visible_objects_uses_frame_zero():
    """Every drawn frame below min_area (objects gone or tiny): frame 0, where all objects show, stands in."""
    data = dataclasses.replace(RECIPE.data, min_area=1.0)  # no frame qualifies
    batch = sample_frames(np.random.default_rng(2), S, data, 4)
    assert batch.images.shape[:2] == (1, 1) and batch.masks.shape[1] >= 1
    assert batch.clip_index.tolist() == [0] * batch.masks.shape[1]


def test_micro_config_is_small():
    params = sum(p.numel() for p in SAM2(MICRO_CONFIG).parameters())
    assert params * 4 < 20e6


# ---------------------------------------------------------------------------------------------------- model
@pytest.fixture(scope="module")
def batch():
    return sample_batch(np.random.default_rng(1), S, RECIPE.data, num_clips=2)


def test_gradients_reach_every_trained_parameter(batch):
    torch.manual_seed(0)
    model = SAM2(RECIPE.model).train()
    rng = np.random.default_rng(0)
    plans = [PromptPlan("mask", correction_frames=(2,), frame_corrections=2),
             PromptPlan("box", init_corrections=2, correction_frames=(1,)),
             PromptPlan("click", init_frames=(0, 2))]
    for plan in plans:
        result = ClipUnroll(model, batch, plan, rng).run()
        assert torch.isfinite(result.loss)
        result.loss.backward()
    unused = {"no_mem_pos_enc"}  # kept for the official layout, used by no computation
    for name, p in model.named_parameters():
        if name in unused:
            assert p.grad is None
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    frozen = Trainer(RECIPE.replace(freeze_image_encoder=True))
    frozen.train_step()
    assert all(p.grad is None for p in frozen.model.image_encoder.parameters())
    assert frozen.model.sam_mask_decoder.conv_s0.weight.grad is not None


def test_embedding_penalty_adds_the_mean_square_of_the_image_embedding(batch):
    torch.manual_seed(0)
    model = SAM2(RECIPE.model).train()
    plain = ClipUnroll(model, batch, PromptPlan("box"), np.random.default_rng(0)).run()
    penalised = ClipUnroll(model, batch, PromptPlan("box"), np.random.default_rng(0), LossWeights(embedding=0.5)).run()
    square = model.encode_image(batch.images.flatten(0, 1)).embedding.pow(2).mean().item()
    assert penalised.loss.item() == pytest.approx(plain.loss.item() + 0.5 * square, rel=1e-5)


def test_memory_readout_is_scored_against_cell_coverage():
    target = square(8, 0, 4, 0, 2)[None, None]  # covers the top-left 4×4 cell by half, nothing else
    coverage = torch.tensor([[0.5, 0.0], [0.0, 0.0]])[None, None]
    exact = torch.logit(coverage.clamp(1e-6, 1 - 1e-6))
    assert memory_readout_loss(exact, target).item() == pytest.approx(math.log(2) / 4, rel=1e-3)  # entropy only
    assert memory_readout_loss(-exact, target).item() > 3.0


def with_term(batch: ClipBatch, weights: LossWeights, term: str, weight: float,
              readout: torch.nn.Module | None = None) -> tuple[SAM2, object, object]:
    """A fresh model's mask-prompted unroll of `batch`, plain and with `weights`: checks that the second loss is the
    first plus weight × the logged `term`, and back-propagates their difference. -> (model, plain, scored)."""
    torch.manual_seed(0)
    model = SAM2(RECIPE.model).train()
    plain = ClipUnroll(model, batch, PromptPlan("mask"), np.random.default_rng(0)).run()
    scored = ClipUnroll(model, batch, PromptPlan("mask"), np.random.default_rng(0), weights, readout).run()
    assert scored.loss.item() == pytest.approx(plain.loss.item() + weight * scored.terms[term], rel=1e-5)
    model.zero_grad()
    (scored.loss - plain.loss.detach()).backward()
    return model, plain, scored


def test_memory_readout_supervises_tracked_frames_through_the_memory(batch):
    """The readout term is the mean over tracked frames; its gradient reaches memory attention and the memory
    encoder (the path it exists for), and a prompted-only clip has no such term."""
    torch.manual_seed(0)
    readout = torch.nn.Conv2d(RECIPE.model.d_model, 1, 1)
    weights = LossWeights(memory_readout=2.0)
    model, plain, _ = with_term(batch, weights, "readout", 2.0, readout)
    assert "readout" not in plain.terms
    assert readout.weight.grad.abs().sum() > 0
    for part in (model.memory_attention, model.memory_encoder.mask_downsampler):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    single = ClipBatch(batch.images[:1], batch.masks[:1], batch.clip_index)
    assert "readout" not in ClipUnroll(model, single, PromptPlan("box"), np.random.default_rng(0), weights,
                                       readout).run().terms


def identity_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two 3-frame clips on a 2×2 cell grid (cells of 4×4 pixels): clip 0 holds objects 0 and 1, which swap
    cells between frames, clip 1 holds object 2. -> (masks 3×3×8×8, clip_index, a cell-one-hot embedding
    (3·2)×4×2×2 with one channel per object and one for the background: features that follow each object)."""
    masks = torch.zeros(3, 3, 8, 8)
    embedding = torch.zeros(3 * 2, 4, 2, 2)
    embedding[:, 3] = 1  # background everywhere, then the objects' cells
    for t in range(3):
        for obj, (y, x) in enumerate([(t % 2, 0), (1 - t % 2, 0), (0, 1)]):
            masks[t, obj, 4 * y:4 * y + 4, 4 * x:4 * x + 4] = 1
            row = t * 2 + (obj == 2)
            embedding[row, :, y, x] = 0
            embedding[row, obj, y, x] = 1
    return masks, torch.tensor([0, 0, 1]), embedding


def test_identity_loss_rewards_features_that_follow_each_object():
    masks, clip_index, following = identity_case()
    assert identity_loss(following, masks, clip_index).item() < 1e-3
    swapped = following.clone()
    swapped[2:4, [0, 1]] = swapped[2:4, [1, 0]]  # frame 1: objects 0 and 1 look like each other
    assert identity_loss(swapped, masks, clip_index).item() > 1.0  # 2 of 8 object cells wrong, ≈ 10 each
    positional = following[:2].repeat(3, 1, 1, 1)  # every frame looks like frame 0: features follow positions
    assert identity_loss(positional, masks, clip_index).item() > 1.0
    assert identity_loss(following, masks[:, [0, 1]], clip_index[:2]).item() < 1e-3  # objects of clip 0 only


def test_identity_term_trains_the_image_encoder_on_video_steps_only(batch):
    weights = LossWeights(identity=0.5)
    model, _, _ = with_term(batch, weights, "identity", 0.5)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.image_encoder.parameters())
    single = ClipBatch(batch.images[:1], batch.masks[:1], batch.clip_index)
    assert "identity" not in ClipUnroll(model, single, PromptPlan("box"), np.random.default_rng(0), weights).run().terms


def test_object_cell_labels_name_the_covering_object_of_the_rows_clip():
    masks, clip_index, _ = identity_case()
    masks[0, 2, 4:8, 4:6] = 1  # frame 0: object 2 (clip 1) also covers half of the bottom-right cell
    labels = object_cell_labels(masks, clip_index, 2, 2)  # 3×3×4, cells (0,0) (0,1) (1,0) (1,1)
    b = BACKGROUND
    assert labels[0, 0].tolist() == labels[0, 1].tolist() == [0, b, 1, b]  # clip 0: object 2 is background
    assert labels[0, 2].tolist() == [b, 2, b, UNLABELLED]  # half covered: neither object nor background
    assert labels[1, 0].tolist() == [1, b, 0, b]  # objects 0 and 1 swapped cells
    assert labels[1, 2].tolist() == [b, 2, b, b]


def test_memory_attention_loss_rewards_reading_the_own_objects_memory():
    """Frame 1 attends to frame 0's memory (2×2 cells) and two pointer tokens. Objects 0 and 1 swap cells between
    the frames: attention that copies positions misses, attention that follows content scores ~0."""
    masks, clip_index, _ = identity_case()
    labels = object_cell_labels(masks[:, :2], clip_index[:2], 2, 2)  # clip 0: 3×2×4
    query, memory = labels[1], labels[0]
    same = (query[:, :, None] == memory[:, None, :]).float()  # 2×4×4
    content = torch.cat([same / same.sum(-1, keepdim=True), torch.zeros(2, 4, 2)], dim=-1)[:, None]  # B×h×4×6
    loss, mass = memory_attention_loss([content], query, memory)
    assert loss.item() < 1e-6 and mass.item() == pytest.approx(1.0)
    positional = torch.cat([torch.eye(4).expand(2, 4, 4), torch.zeros(2, 4, 2)], dim=-1)[:, None]
    loss, mass = memory_attention_loss([positional], query, memory)
    # background cells keep their place (loss 0), object cells moved (mass 0, -log 1e-6): the two groups average
    assert loss.item() == pytest.approx(-math.log(1e-6) / 2, rel=1e-4) and mass.item() == pytest.approx(0.5)
    pointers = torch.cat([0.5 * content[..., :4], torch.full((2, 1, 4, 2), 0.25)], dim=-1)
    assert memory_attention_loss([pointers], query, memory)[1].item() == pytest.approx(0.5)  # pointers: not own
    loss, _ = memory_attention_loss([content, positional], query, memory)  # layers average
    assert loss.item() == pytest.approx(-math.log(1e-6) / 4, rel=1e-4)


def test_memory_attention_term_labels_the_memories_the_tracked_frame_reads(batch, monkeypatch):
    """The term sees each tracked frame's own labels and, key by key, the labels of the memory frames
    `select_memories` packs (conditioning frame 0 first, then the num_maskmem - 1 = 2 most recent frames);
    its gradient reaches memory attention and the memory encoder; single frames have no such term."""
    seen = []
    original = unroll_module.memory_attention_loss

    def spy(attention, query_labels, memory_labels):
        seen.append((query_labels, memory_labels, attention[0].shape))
        return original(attention, query_labels, memory_labels)

    monkeypatch.setattr(unroll_module, "memory_attention_loss", spy)
    weights = LossWeights(memory_attention=0.5)
    model, _, scored = with_term(batch, weights, "attention", 0.5)
    assert 0 < scored.terms["attention_mass"] < 1
    side = S // 16
    labels = object_cell_labels(batch.masks, batch.clip_index, side, side)
    expected = {1: [0], 2: [0, 1], 3: [0, 1, 2]}
    assert len(seen) == batch.masks.shape[0] - 1
    for t, (query_labels, memory_labels, shape) in enumerate(seen, start=1):
        assert torch.equal(query_labels, labels[t])
        frames = expected.get(t, [0, t - 2, t - 1])
        assert torch.equal(memory_labels, torch.cat([labels[f] for f in frames], dim=1))
        assert shape[2] == side * side and shape[3] > len(frames) * side * side  # then the pointer tokens
    for part in (model.memory_attention, model.memory_encoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    single = ClipBatch(batch.images[:1], batch.masks[:1], batch.clip_index)
    single_frame = ClipUnroll(model, single, PromptPlan("box"), np.random.default_rng(0), weights).run()
    assert "attention" not in single_frame.terms


def test_memory_path_init_lets_the_mask_reach_the_next_frame():
    """Two objects' memories of the same frame condition the same next frame. At default initialisation the
    attention is nearly uniform and their masks average away; the local attention bias keeps them apart, and a
    stronger mask path more so."""
    clip = generate_clip(4, 2, (S, S), 2)
    frames = torch.stack([preprocess_frame(f, S) for f in clip.frames])
    logits = (resize_masks(clip.masks[0], S)[:, None] * 2 - 1) * 20  # 2×1×S×S

    def spread(attention_bias: float, mask_gain: float) -> float:
        torch.manual_seed(0)
        model = SAM2(RECIPE.model).eval()
        init_memory_path(model, attention_bias, mask_gain)
        with torch.no_grad():
            feats = model.encode_image(frames)
            first, second = (feats.select(torch.full((2,), t, dtype=torch.long)) for t in (0, 1))
            memory, pos = model.encode_memory(first, logits, torch.ones(2, 1), from_clicks=False)
            packed = model.assemble_memory([(0, memory, pos)], [], 1)
            out = model.condition_on_memory(second, *packed)
        return ((out[0] - out[1]).norm() / out.norm()).item()

    default, local, strong = spread(0.0, 1.0), spread(5.0, 1.0), spread(5.0, 10.0)
    assert local > 3 * default and strong > 2 * local


def test_prompt_attention_init_points_a_prompt_token_at_its_position():
    """Share of a prompt token's attention (position encoding only) on the 3×3 cells around its own cell, in the
    decoder's first token->image attention: chance level at default initialisation, peaked after the init."""
    torch.manual_seed(0)
    model = SAM2(MICRO_CONFIG)
    side = MICRO_CONFIG.image_embedding_size
    grid = model.sam_prompt_encoder.pe_layer.grid(side, side).flatten(1).T  # side²×D
    attn = model.sam_mask_decoder.transformer.layers[0].cross_attn_token_to_image
    cell = (5, 3)

    def local_share() -> float:
        heads = attn.num_heads
        with torch.no_grad():
            q = attn.q_proj(grid[cell[0] * side + cell[1]]).reshape(heads, -1)
            k = attn.k_proj(grid).reshape(side * side, heads, -1)
            weights = (torch.einsum("hc,nhc->hn", q, k) / q.shape[-1] ** 0.5).softmax(-1).mean(0)
        near = weights.reshape(side, side)[cell[0] - 1:cell[0] + 2, cell[1] - 1:cell[1] + 2]
        return float(near.sum())

    chance = 9 / side**2
    assert local_share() < 2 * chance
    init_prompt_attention(model, gain=3.0)
    assert local_share() > 4 * chance


def test_unroll_tracks_like_the_video_session():
    """In eval mode the training unroll and VideoSession produce the same masks (the session keeps memories in
    bfloat16, hence the tolerance)."""
    torch.manual_seed(0)
    model = SAM2(RECIPE.model).eval()
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.02)
    model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.data.fill_(5.0)  # objects present: real masks
    clip = generate_clip(3, 6, (S, S), 2)
    frames = torch.stack([preprocess_frame(f, S) for f in clip.frames])[:, None]
    batch = ClipBatch(frames, resize_masks(clip.masks, S), torch.zeros(2, dtype=torch.long))
    with torch.no_grad():
        unroll = ClipUnroll(model, batch, PromptPlan("mask"), np.random.default_rng(0))
        unroll.run()
    # training fills no holes (neither does the reference's): compare with the session's hole filling off
    session = VideoPredictor(model, results_dtype=torch.float32, fill_hole_area=0).open(clip.frames)
    for k in range(2):
        session.add_prompt(0, k, mask=clip.masks[0, k])
    tracked = 0
    for result in session.propagate():
        t = result.frame_idx
        ours = (unroll.obj.cond.get(t) or unroll.obj.tracked.get(t)).low_res
        theirs = torch.cat([obj.output(t).low_res.float() for obj in session.objects.values()])
        torch.testing.assert_close(ours, theirs, atol=1e-3, rtol=0)
        tracked += t > 0 and bool((ours > 0).any())
    assert tracked == 5


def test_overfits_one_clip(batch):
    torch.manual_seed(0)
    model = SAM2(RECIPE.model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    plan = PromptPlan("box")
    losses = []
    for step in range(20):
        result = ClipUnroll(model, batch, plan, np.random.default_rng(0)).run()
        optimizer.zero_grad()
        result.loss.backward()
        optimizer.step()
        losses.append(result.loss.item())
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3]), losses


def test_resume_gives_the_same_next_step(tmp_path):
    recipe = RECIPE.replace(loss=LossWeights(memory_readout=1.0))  # the readout head is resumed too
    trainer = Trainer(recipe, seed=5)
    trainer.fit(str(tmp_path / "m.pt"), steps=2, state_path=str(tmp_path / "s.pt"), progress=False)
    expected = trainer.train_step(0.5)
    assert "readout" in expected
    resumed = Trainer.load(str(tmp_path / "s.pt"), recipe)
    assert resumed.step == 2 and resumed.seed == 5
    assert resumed.train_step(0.5) == expected
    for a, b in zip(trainer.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    assert isinstance(load_model(tmp_path / "s.pt"), SAM2)  # the state file is a model checkpoint too
    with pytest.raises(ValueError, match="different recipe"):
        Trainer.load(str(tmp_path / "s.pt"), RECIPE.replace(lr=1.0))


def test_prefetched_data_trains_the_same_model(tmp_path):
    """A second process drawing each next step's data ahead changes nothing: same steps, same weights."""
    recipe = RECIPE.replace(p_image=0.5)  # image and video steps both
    plain, prefetched = Trainer(recipe, seed=3), Trainer(recipe, seed=3)
    plain.fit(str(tmp_path / "a.pt"), steps=4, progress=False, log_path=str(tmp_path / "a.jsonl"), log_every=1)
    prefetched.fit(str(tmp_path / "b.pt"), steps=4, progress=False, log_path=str(tmp_path / "b.jsonl"), log_every=1,
                   prefetch=True)
    assert prefetched.step == 4
    logs = [[json.loads(line)["prompts"] for line in open(tmp_path / f"{n}.jsonl")] for n in "ab"]
    assert logs[0] == logs[1] and len({next(iter(p)) for p in logs[0]}) > 1  # the same image and video steps
    for a, b in zip(plain.model.parameters(), prefetched.model.parameters()):
        assert torch.equal(a, b)


def test_ema_model_is_written_and_resumed(tmp_path):
    """ema_decay d: the written model holds e_1 = w_1, e_n = d·e_(n-1) + (1 - d)·w_n over the trained weights
    w_n after step n; the state file keeps the trained weights and the average, so a resumed run goes on alike."""
    recipe = RECIPE.replace(ema_decay=0.5)
    trainer = Trainer(recipe, seed=3)
    expected = None
    for _ in range(3):
        trainer.train_step(0.5)
        weights = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
        expected = weights if expected is None else {k: 0.5 * expected[k] + 0.5 * w for k, w in weights.items()}
    trainer.save(str(tmp_path / "s.pt"))
    trainer._checkpoint(str(tmp_path / "m.pt"), None)
    written = dict(load_model(tmp_path / "m.pt").named_parameters())
    trained = dict(trainer.model.named_parameters())
    assert any(not torch.equal(written[k], trained[k]) for k in expected)
    for k, v in expected.items():
        torch.testing.assert_close(written[k], v)
    resumed = Trainer.load(str(tmp_path / "s.pt"), recipe)
    trainer.train_step(0.5), resumed.train_step(0.5)
    for a, b in zip(trainer.ema.module.parameters(), resumed.ema.module.parameters()):
        assert torch.equal(a, b)


def test_cli_train_resume_and_evaluate(tmp_path, capsys):
    out = str(tmp_path / "demo" / "m.pt")
    train_cli.main(["--config", "test", "--out", out, "--steps", "2", "--log-every", "1", "--no-progress"])
    trainer = train_cli.main(["--config", "test", "--out", out, "--steps", "3", "--resume", "--no-progress",
                               "--prefetch"])
    assert trainer.step == 3
    lines = [json.loads(line) for line in open(tmp_path / "demo" / "m.log.jsonl")]
    assert [line["step"] for line in lines] == [1, 2, 3] and all(math.isfinite(line["loss"]) for line in lines)
    model = load_model(out)
    assert model.config == RECIPE.model
    capsys.readouterr()
    report = evaluate.main(["--checkpoint", out, "--clips", "1", "--frames", "12", "--rounds", "1",
                            "--json", str(tmp_path / "eval.json"), "--strips", "1"])
    printed = capsys.readouterr().out.splitlines()
    strips = report["per_clip"][0]["mask"]["strips"]
    assert len(strips) == len(report["per_clip"][0]["mask"]["J"]) and all(len(x) == 12 for x in strips)
    assert printed[-len(strips):] == [f"clip 0, object {k}   {x}" for k, x in enumerate(strips)]
    saved = json.load(open(tmp_path / "eval.json"))
    assert set(saved["modes"]) == set(evaluate.MODES) == set(report["modes"])
    for mode in saved["modes"].values():
        assert all(0.0 <= mode[k] <= 1.0 for k in ("J", "F", "JF", "presence", "wrong_object"))
    true_presence, mask = saved["modes"]["mask_true_presence"], saved["modes"]["mask"]
    assert true_presence["J"] >= mask["J"] and true_presence["presence"] >= mask["presence"]


def test_frame_strips_mark_each_frame_of_each_object():
    gt = np.zeros((5, 2, 10, 10), bool)
    gt[:, 0, :5, :5] = True  # object 0: top left, out of view on frames 3 and 4
    gt[3:, 0] = False
    gt[:, 1, 5:, 5:] = True  # object 1: bottom right
    pred = gt.copy()
    pred[1, 0, :5, :4] = False  # frame 1: IoU 1/5 -> "2"
    pred[2, 0] = gt[2, 1]  # frame 2: on object 1 -> "W"
    pred[3, 0] = gt[3, 1]  # frame 3: on object 1 while out of view -> "w"
    pred[4, 0, 0, 0] = True  # frame 4: a mask while out of view -> "a"
    pred[4, 1] = False  # object 1 missed on frame 4 -> "0"
    gt[0, 1] = pred[0, 1] = False  # object 1 out of view and rightly empty on frame 0 -> "_"
    assert evaluate.frame_strips(pred, gt) == ["92Wwa", "_9990"]


def test_true_presence_blanks_only_the_frames_where_the_object_is_absent():
    gt = np.zeros((3, 2, 4, 4), bool)
    gt[0, :, 1, 1] = True  # both objects on frame 0
    gt[2, 1, 2:, 2:] = True  # object 1 on frame 2; object 0 gone from frame 1 on, object 1 hidden on frame 1
    pred = np.ones_like(gt)
    out = evaluate.with_true_presence(pred, gt)
    assert out[0].all() and out[2, 1].all()  # present: the prediction is kept, false positives included
    assert not out[1].any() and not out[2, 0].any()


def test_cli_passes_the_memory_path_options(tmp_path):
    args = ["--config", "test", "--out", str(tmp_path / "m.pt"), "--steps", "1", "--no-progress",
            "--memory-attention-bias", "5", "--mask-memory-gain", "10", "--embedding-penalty", "0.01",
            "--memory-readout", "2", "--focal-weight", "2", "--dice-weight", "1.5", "--presence-weight", "4",
            "--image-warmup", "0.25", "--image-videos", "3", "--ema-decay", "0.9", "--prompt-attention-gain", "3",
            "--identity-weight", "0.5", "--memory-attention-weight", "0.25", "--loss-size", "32"]
    recipe = train_cli.main(args).recipe
    assert recipe.loss_size == 32
    assert (recipe.memory_attention_bias, recipe.mask_memory_gain) == (5.0, 10.0)
    assert (recipe.loss.embedding, recipe.loss.memory_readout, recipe.loss.identity) == (0.01, 2.0, 0.5)
    assert recipe.loss.memory_attention == 0.25
    assert (recipe.loss.focal, recipe.loss.dice, recipe.loss.presence, recipe.image_warmup) == (2.0, 1.5, 4.0, 0.25)
    assert (recipe.data.image_videos, recipe.ema_decay, recipe.prompt_attention_gain) == (3, 0.9, 3.0)
    defaults = dict(memory_attention_bias=0.0, mask_memory_gain=1.0, loss=RECIPE.loss, image_warmup=0.0,
                    data=RECIPE.data, ema_decay=0.0, prompt_attention_gain=0.0, loss_size=0)
    assert recipe.replace(**defaults) == RECIPE


def test_image_warmup_takes_only_image_steps_first():
    trainer = Trainer(RECIPE.replace(image_warmup=0.5), seed=0)
    kinds = []
    for progress in (0.0, 0.2, 0.4, 0.6, 0.8, 0.9):
        kinds.append(trainer.train_step(progress)["prompt"])
    assert kinds[:3] == ["image"] * 3 and "image" not in kinds[3:]  # the test recipe has p_image 0


class _FakePredictor:
    """Stands in for ImagePredictor on one known clip: answers every prompt with the mask that `answer` picks."""

    def __init__(self, clip, answer):
        self.clip, self.answer, self.t = clip, answer, None

    def set_image(self, frame):
        self.t = next(t for t in range(len(self.clip.frames)) if np.array_equal(self.clip.frames[t], frame))

    def predict(self, box=None, point_coords=None, point_labels=None, multimask_output=True):
        masks = self.clip.masks[self.t]
        if box is not None:
            k = next(k for k, m in enumerate(masks) if m.any() and tuple(mask_box(m)) == tuple(box))
        else:
            x, y = point_coords[0]
            k = int(np.argmax(masks[:, y, x]))
        mask = self.answer(masks, k).astype(np.float32) * 2 - 1
        n = 3 if multimask_output else 1
        return np.repeat(mask[None], n, axis=0), np.arange(n, dtype=np.float32), None


def test_probe_scores_segmentation_and_prompt_sensitivity(monkeypatch):
    """An oracle decoder scores IoU 1 and distinct masks (sensitivity 0); a prompt-blind one that returns every
    object for every prompt scores sensitivity 1."""
    from sam2_model.train import probe

    clip = evaluate.heldout_clip(2, 0, 12)
    monkeypatch.setattr(probe, "heldout_clip", lambda seed, i, frames: clip)
    monkeypatch.setattr(probe, "ImagePredictor", lambda model: _FakePredictor(clip, lambda masks, k: masks[k]))
    oracle = probe.probe_model(None, clips=1)
    assert oracle["objects"] >= 3 and oracle["pairs"] >= 1
    assert oracle["box_iou"] == oracle["click_iou"] == 1.0 and oracle["same_mask_iou"] == 0.0
    monkeypatch.setattr(probe, "ImagePredictor", lambda model: _FakePredictor(clip, lambda masks, k: masks.any(0)))
    blind = probe.probe_model(None, clips=1)
    assert blind["same_mask_iou"] == 1.0 and blind["box_iou"] < 0.9


def test_memory_attention_focus_sees_the_positional_initialisation():
    """init_memory_path's attention bias makes memory attention copy each position's own memory: the probe's
    focus measure sees it (own-position mass up, entropy down) against the default initialisation."""
    from sam2_model.train import probe

    torch.manual_seed(0)
    model = SAM2(TEST_CONFIG).eval()
    default = probe.memory_attention_focus(model, clips=1, num_frames=12)
    init_memory_path(model, attention_bias=5.0)
    positional = probe.memory_attention_focus(model, clips=1, num_frames=12)
    assert positional["same_position"] > 0.5 > 0.2 > default["same_position"]
    assert positional["entropy"] < 0.5 < 0.9 < default["entropy"]
    assert 0 < default["pointers"] < 1 and positional["pointers"] < default["pointers"]


def test_own_object_attention_measures_where_memory_attention_reads():
    """Near-uniform attention puts on the own object's memory cells only their share of the memory; attention
    that copies positions more (the synthetic objects move a little between frames)."""
    from sam2_model.train import probe

    torch.manual_seed(0)
    model = SAM2(TEST_CONFIG).eval()
    default = probe.own_object_attention(model, clips=1, num_frames=12)
    init_memory_path(model, attention_bias=5.0)
    positional = probe.own_object_attention(model, clips=1, num_frames=12)
    assert 0.2 < default < positional < 1


def test_identity_accuracy_tells_content_from_position(monkeypatch):
    """Two solid squares, one above the other, cross the frame in opposite directions over 5 frames on black: the
    frames' colours tell every object cell's object (accuracy 1), features that only encode where a cell is do
    not."""
    from types import SimpleNamespace

    from sam2_model.train import probe
    from sam2_model.train.synthetic import SyntheticClip

    frames, masks = np.zeros((5, 192, 192, 3), np.uint8), np.zeros((5, 2, 192, 192), bool)
    for t in range(5):
        for k, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
            x = 16 + 32 * (t if k == 0 else 4 - t)
            masks[t, k, 32 + 80 * k:80 + 80 * k, x:x + 48] = True
            frames[t, 32 + 80 * k:80 + 80 * k, x:x + 48] = colour
    clip = SyntheticClip(frames, masks, 24.0, masks)
    monkeypatch.setattr(probe, "heldout_clip", lambda seed, i, num_frames: clip)
    assert probe.identity_accuracy(None, clips=1) == 1.0

    def where(images: torch.Tensor) -> SimpleNamespace:
        y, x = torch.meshgrid(torch.arange(12.0), torch.arange(12.0), indexing="ij")
        return SimpleNamespace(embedding=torch.stack([x, y, torch.full_like(x, 6)]).expand(len(images), 3, 12, 12))

    positional = SimpleNamespace(config=SimpleNamespace(image_size=192), encode_image=where)
    assert probe.identity_accuracy(positional, clips=1) < 0.7
