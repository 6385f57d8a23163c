"""Parity of our prompt encoder / two-way transformer / mask decoder with the reference SAM 2.1 tiny heads."""
from __future__ import annotations

import copy

import pytest
import torch

from sam2_model.configs import get_config
from sam2_model.mask_decoder import MaskDecoder
from sam2_model.prompt_encoder import PromptEncoder

TOL = 1e-5
D, H = 256, 64  # d_model, image-embedding side (1024 input)


def _rerandomize(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Give every parameter a non-trivial seeded value with activations kept O(1)."""
    for name, p in module.named_parameters():
        if p.ndim == 1:  # biases, and (LayerNorm / LayerNorm2d) norm weights around 1
            base = 1.0 if name.endswith("weight") else 0.0
            p.data = base + 0.1 * torch.randn(p.shape, generator=gen)
        elif "token" in name or "embed" in name:  # nn.Embedding tables
            p.data = torch.randn(p.shape, generator=gen)
        else:  # Linear / Conv / ConvTranspose weights
            p.data = torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5


@pytest.fixture(scope="module")
def models():
    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    ref = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None, device="cpu")
    gen = torch.Generator().manual_seed(1)
    _rerandomize(ref.sam_prompt_encoder, gen)
    _rerandomize(ref.sam_mask_decoder, gen)
    cfg = get_config("sam2.1_hiera_tiny")
    pe, dec = PromptEncoder(cfg), MaskDecoder(cfg)
    pe.load_state_dict(ref.sam_prompt_encoder.state_dict(), strict=True)
    dec.load_state_dict(ref.sam_mask_decoder.state_dict(), strict=True)
    assert ref.sam_mask_decoder.dynamic_multimask_via_stability
    return ref.sam_prompt_encoder.eval(), ref.sam_mask_decoder.eval(), pe.eval(), dec.eval()


def _features(b: int, seed: int, h: int = H) -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(b, D, h, h, generator=g)
    high_res = [torch.randn(b, D // 8, 4 * h, 4 * h, generator=g), torch.randn(b, D // 4, 2 * h, 2 * h, generator=g)]
    return img, high_res


def _prompts(kind: str, b: int, seed: int, h: int = H):
    g = torch.Generator().manual_seed(seed)
    xy = lambda n: torch.rand(b, n, 2, generator=g) * 1024  # noqa: E731
    box = torch.sort(xy(2), dim=1).values  # top-left, bottom-right
    box_labels = torch.tensor([2, 3], dtype=torch.int32).expand(b, 2)
    mask = None
    if kind == "one_point":
        coords, labels = xy(1), torch.ones(b, 1, dtype=torch.int32)
    elif kind == "points_with_negatives":
        coords, labels = xy(4), torch.tensor([1, 0, 1, 0], dtype=torch.int32).expand(b, 4)
    elif kind == "box":
        coords, labels = box, box_labels
    elif kind == "box_and_points":
        coords = torch.cat((box, xy(2)), dim=1)
        labels = torch.cat((box_labels, torch.tensor([1, 0], dtype=torch.int32).expand(b, 2)), dim=1)
    elif kind == "mask_and_point":
        coords, labels = xy(1), torch.ones(b, 1, dtype=torch.int32)
        mask = 3 * torch.randn(b, 1, 4 * h, 4 * h, generator=g)
    elif kind == "mask_only":
        coords = labels = None
        mask = 3 * torch.randn(b, 1, 4 * h, 4 * h, generator=g)
    else:
        raise ValueError(kind)
    return coords, labels, mask


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item() if a.numel() else 0.0


def test_keys_and_shapes_match(models):
    ref_pe, ref_dec, pe, dec = models
    for ref_m, ours in ((ref_pe, pe), (ref_dec, dec)):
        ref_shapes = {k: v.shape for k, v in ref_m.state_dict().items()}
        assert ref_shapes == {k: v.shape for k, v in ours.state_dict().items()}


def test_dense_pe_matches(models):
    ref_pe, _, pe, _ = models
    d = _maxdiff(ref_pe.get_dense_pe(), pe.get_dense_pe())
    print(f"dense pe max abs diff {d:.2e}")
    assert d <= TOL


def test_no_prompts_uses_batch_size(models):
    ref_pe, _, pe, _ = models
    ref_sparse, ref_dense = ref_pe(points=None, boxes=None, masks=None)
    sparse, dense = pe(None, None, None, batch_size=3)
    assert sparse.shape == (3, 0, D) and dense.shape == (3, D, H, H)
    assert torch.equal(dense, ref_dense.expand(3, -1, -1, -1))


@pytest.mark.parametrize(
    "kind, multimask",
    [
        ("one_point", False),
        ("one_point", True),
        ("points_with_negatives", False),
        ("points_with_negatives", True),
        ("box", True),
        ("box_and_points", False),
        ("mask_and_point", True),
        ("mask_only", False),
    ],
)
@torch.no_grad()
def test_decoder_parity(models, kind, multimask):
    ref_pe, ref_dec, pe, dec = models
    img, high_res = _features(1, seed=10)
    coords, labels, mask = _prompts(kind, 1, seed=20)
    points = None if coords is None else (coords, labels)
    ref_sparse, ref_dense = ref_pe(points=points, boxes=None, masks=mask)
    sparse, dense = pe(coords, labels, mask)
    emb_diff = max(_maxdiff(ref_sparse, sparse), _maxdiff(ref_dense, dense))

    ref_out = ref_dec(img, ref_pe.get_dense_pe(), ref_sparse, ref_dense, multimask, False, high_res)
    out = dec(img, pe.get_dense_pe(), sparse, dense, multimask, False, high_res)
    diffs = [_maxdiff(r, o) for r, o in zip(ref_out, out)]
    print(f"{kind} multimask={multimask}: prompt emb {emb_diff:.2e}, masks/iou/tokens/obj {[f'{d:.2e}' for d in diffs]}")
    assert emb_diff <= TOL and max(diffs) <= TOL


@pytest.mark.parametrize("multimask", [False, True])
@torch.no_grad()
def test_repeat_image_batch_of_two(models, multimask):
    ref_pe, ref_dec, pe, dec = models
    img, high_res = _features(1, seed=11)
    coords, labels, _ = _prompts("points_with_negatives", 2, seed=21)
    ref_sparse, ref_dense = ref_pe(points=(coords, labels), boxes=None, masks=None)
    sparse, dense = pe(coords, labels, None)
    ref_out = ref_dec(img, ref_pe.get_dense_pe(), ref_sparse, ref_dense, multimask, True, high_res)
    out = dec(img, pe.get_dense_pe(), sparse, dense, multimask, True, high_res)
    diffs = [_maxdiff(r, o) for r, o in zip(ref_out, out)]
    print(f"repeat_image multimask={multimask}: masks/iou/tokens/obj {[f'{d:.2e}' for d in diffs]}")
    assert out[0].shape == (2, 3 if multimask else 1, 4 * H, 4 * H)
    assert max(diffs) <= TOL


@torch.no_grad()
def test_dynamic_stability_fallback_both_paths(models):
    """Sample 0 gets near-zero logits (unstable -> best multimask), sample 1 large logits (stable)."""
    ref_pe, ref_dec, pe, dec = models
    img, (s0, s1) = _features(2, seed=12)
    s0 = s0.clone()
    s0[0] = -100.0  # GELU(-100) == 0: all logits ~0, stability 0
    s0[1] *= 30.0  # large logits: few pixels within ±delta
    high_res = [s0, s1]
    coords, labels, _ = _prompts("one_point", 2, seed=22)
    ref_sparse, ref_dense = ref_pe(points=(coords, labels), boxes=None, masks=None)
    sparse, dense = pe(coords, labels, None)
    image_pe = pe.get_dense_pe()

    all_masks, all_iou, _, _ = ref_dec.predict_masks(img, image_pe, ref_sparse, ref_dense, False, high_res)
    scores = ref_dec._get_stability_scores(all_masks[:, :1])[:, 0]
    stable = scores >= ref_dec.dynamic_multimask_stability_thresh
    print(f"stability scores {scores.tolist()}")
    assert stable.tolist() == [False, True]
    assert torch.allclose(dec.stability_scores(all_masks[:, :1])[:, 0], scores)

    ref_out = ref_dec(img, image_pe, ref_sparse, ref_dense, False, False, high_res)
    out = dec(img, image_pe, sparse, dense, False, False, high_res)
    diffs = [_maxdiff(r, o) for r, o in zip(ref_out, out)]
    print(f"stability fallback: masks/iou/tokens/obj {[f'{d:.2e}' for d in diffs]}")
    assert max(diffs) <= TOL
    best = all_iou[0, 1:].argmax() + 1
    assert torch.allclose(out[1][0, 0], all_iou[0, best], atol=TOL)  # fallback took the best multimask
    assert torch.allclose(out[1][1, 0], all_iou[1, 0], atol=TOL)  # stable kept the single mask


def test_training_mode_gradients(models):
    """Train mode: no stability fallback, autograd works, gradients match the reference.

    Float64 copies, so accumulation-order noise cannot hide a real mismatch; a 32×32 embedding
    (the decoder is size-agnostic) with the matching corner of the PE keeps it fast.
    """
    ref_pe, ref_dec, pe, dec = (copy.deepcopy(m).double().train() for m in models)
    ref_pe.pe_layer.float()  # the reference encodes point coordinates in float32 only
    pe.pe_layer.float()
    h = H // 2
    img, high_res = _features(1, seed=13, h=h)
    coords, labels, mask = _prompts("mask_and_point", 1, seed=23, h=h)
    img, high_res, mask = img.double(), [f.double() for f in high_res], mask.double()
    img_ref, img_ours = img.clone().requires_grad_(), img.clone().requires_grad_()

    ref_sparse, ref_dense = ref_pe(points=(coords.double(), labels), boxes=None, masks=mask)
    ref_image_pe = ref_pe.get_dense_pe()[..., :h, :h].double()
    ref_out = ref_dec(img_ref, ref_image_pe, ref_sparse, ref_dense, False, False, high_res)
    sparse, dense = pe(coords.double(), labels, mask)
    out = dec(img_ours, pe.get_dense_pe()[..., :h, :h].double(), sparse, dense, False, False, high_res)
    loss = lambda o: o[0].square().mean() + o[1].sum() + o[2].square().mean() + o[3].sum()  # noqa: E731
    loss(ref_out).backward()
    loss(out).backward()

    assert max(_maxdiff(r, o) for r, o in zip(ref_out, out)) <= 1e-10
    pairs = [(img_ref.grad, img_ours.grad)]
    ref_params = dict(ref_pe.named_parameters()) | {f"dec.{k}": v for k, v in ref_dec.named_parameters()}
    for k, p in (*pe.named_parameters(), *(("dec." + k, v) for k, v in dec.named_parameters())):
        if ref_params[k].grad is None:  # unused here (conv_s0/conv_s1, no_mask_embed)
            assert p.grad is None, k
        else:
            pairs.append((ref_params[k].grad, p.grad))
    scale = max(r.abs().max().item() for r, _ in pairs)
    grad_diff = max(_maxdiff(r, o) for r, o in pairs) / scale
    print(f"training-mode (float64) max grad diff relative to the largest gradient ({scale:.1f}): {grad_diff:.2e}")
    assert grad_diff <= 1e-10
