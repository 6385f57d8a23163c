"""Parity of MemoryEncoder / MemoryAttention with Meta's reference (sam2==1.1.0, test oracle only)."""
from __future__ import annotations

import pytest
import torch

from sam2_model.configs import custom_config, get_config
from sam2_model.memory_attention import AxialRoPE, MemoryAttention
from sam2_model.memory_encoder import MemoryEncoder

pytest.importorskip("sam2")
from oracle import build_reference, build_reference_custom, randomize_, state_dict_shapes  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    """(reference model, our MemoryEncoder, our MemoryAttention) with identical random weights."""
    ref = build_reference("sam2.1_hiera_tiny")
    randomize_(ref.memory_encoder, seed=1)
    randomize_(ref.memory_attention, seed=2)
    config = get_config("sam2.1_hiera_tiny")
    enc, attn = MemoryEncoder(config).eval(), MemoryAttention(config).eval()
    enc.load_state_dict(ref.memory_encoder.state_dict(), strict=True)
    attn.load_state_dict(ref.memory_attention.state_dict(), strict=True)
    return ref, enc, attn


def test_state_dict_keys_and_shapes(tiny):
    ref, enc, attn = tiny
    assert state_dict_shapes(enc) == state_dict_shapes(ref.memory_encoder)
    assert state_dict_shapes(attn) == state_dict_shapes(ref.memory_attention)
    gammas = [p for n, p in ref.memory_encoder.named_parameters() if n.endswith("gamma")]
    assert len(gammas) == 2 and all(g.abs().min() > 0.1 for g in gammas)


@torch.no_grad()
def test_memory_encoder_matches_reference(tiny):
    ref, enc, _ = tiny
    g = torch.Generator().manual_seed(3)
    pix_feat = torch.randn(2, 256, 64, 64, generator=g)
    mask = torch.sigmoid(4 * torch.randn(2, 1, 1024, 1024, generator=g)) * 20.0 - 10.0
    expected = ref.memory_encoder(pix_feat, mask, skip_mask_sigmoid=True)
    memory, pos = enc(pix_feat, mask)
    assert memory.shape == pos.shape == (2, 64, 64, 64)
    assert (memory - expected["vision_features"]).abs().max() <= 1e-5
    assert (pos - expected["vision_pos_enc"][0]).abs().max() <= 1e-5


def _attention_inputs(batch: int, side: int, frames: int, ptrs: int, mem_dim: int, d: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    hw, m = side * side, frames * side * side + ptrs
    return (
        torch.randn(batch, hw, d, generator=g),
        torch.randn(batch, hw, d, generator=g),
        torch.randn(batch, m, mem_dim, generator=g),
        torch.randn(batch, m, mem_dim, generator=g),
    )


def _reference_attention(ref_attn, curr, curr_pos, memory, memory_pos, ptrs: int) -> torch.Tensor:
    """Run the sequence-first reference on batch-first tensors; result batch-first."""
    seq = [t.transpose(0, 1) for t in (curr, memory, curr_pos, memory_pos)]
    return ref_attn(*seq, num_obj_ptr_tokens=ptrs).transpose(0, 1)


@pytest.mark.slow
@pytest.mark.parametrize("frames,ptrs,batch", [(1, 0, 2), (7, 64, 1)])  # the 64×64 grid is costly on CPU
@torch.no_grad()
def test_memory_attention_matches_reference_64(tiny, frames, ptrs, batch):
    ref, _, attn = tiny
    inputs = _attention_inputs(batch, 64, frames, ptrs, 64, 256, seed=10 * frames + ptrs)
    expected = _reference_attention(ref.memory_attention, *inputs, ptrs)
    out = attn(*inputs, num_obj_ptr_tokens=ptrs)
    assert out.shape == (batch, 4096, 256)
    assert (out - expected).abs().max() <= 1e-4


@pytest.mark.parametrize("ptrs", [0, 4, 64])
@pytest.mark.parametrize("frames", [1, 3, 7])
@torch.no_grad()
def test_memory_attention_matches_reference_16(tiny, frames, ptrs):
    """16×16 grid (image_size 256): the reference recomputes its RoPE table for the new grid."""
    ref, _, attn = tiny
    inputs = _attention_inputs(2, 16, frames, ptrs, 64, 256, seed=100 + 10 * frames + ptrs)
    expected = _reference_attention(ref.memory_attention, *inputs, ptrs)
    out = attn(*inputs, num_obj_ptr_tokens=ptrs)
    assert (out - expected).abs().max() <= 1e-4


@torch.no_grad()
def test_memory_attention_bf16_autocast(tiny):
    """Under bfloat16 autocast ours runs its own CPU kernels (blocked attention, values projected after
    attending), so it is not bit-equal to the reference's bf16 run; it must be as accurate: its error against
    the float32 result stays within the reference's own bf16 error (1.5× margin for rounding luck)."""
    ref, _, attn = tiny
    inputs = _attention_inputs(2, 16, 3, 4, 64, 256, seed=7)
    exact = _reference_attention(ref.memory_attention, *inputs, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_bf16 = _reference_attention(ref.memory_attention, *inputs, 4)
        out = attn(*inputs, num_obj_ptr_tokens=4)
    ours_err, ref_err = (out.float() - exact).abs(), (ref_bf16.float() - exact).abs()
    assert ref_err.max() > 0  # bf16 really ran
    assert ours_err.max() <= 1.5 * ref_err.max()
    assert ours_err.mean() <= 1.5 * ref_err.mean()


def test_custom_small_config_matches_reference():
    """Multi-head (head_dim 16) RoPE, d_model 32, memory_dim 16, image 256 -> 16×16 grid."""
    config = custom_config(image_size=256, d_model=32, memory_dim=16, memory_attention_heads=2,
                           memory_attention_ff_dim=64, memory_attention_layers=2)
    ref = build_reference_custom(config)
    ref_attn, ref_enc = randomize_(ref.memory_attention, seed=4), randomize_(ref.memory_encoder, seed=5)
    attn, enc = MemoryAttention(config).eval(), MemoryEncoder(config).eval()
    attn.load_state_dict(ref_attn.state_dict(), strict=True)
    enc.load_state_dict(ref_enc.state_dict(), strict=True)

    with torch.no_grad():
        inputs = _attention_inputs(2, 16, 2, 8, 16, 32, seed=6)
        expected = _reference_attention(ref_attn, *inputs, 8)
        assert (attn(*inputs, num_obj_ptr_tokens=8) - expected).abs().max() <= 1e-5

        pix_feat, mask = torch.randn(2, 32, 16, 16), torch.randn(2, 1, 256, 256)
        expected = ref_enc(pix_feat, mask, skip_mask_sigmoid=True)
        memory, pos = enc(pix_feat, mask)
        assert (memory - expected["vision_features"]).abs().max() <= 1e-5
        assert (pos - expected["vision_pos_enc"][0]).abs().max() <= 1e-6


def test_no_out_proj_when_memory_dim_equals_d_model():
    enc = MemoryEncoder(custom_config(d_model=32, memory_dim=32))
    assert not any(k.startswith("out_proj") for k in enc.state_dict())


def test_rope_table_cached_and_square_only():
    rope = AxialRoPE(16)
    assert rope(256, torch.device("cpu")) is rope(256, torch.device("cpu"))
    cos, sin = rope(256, torch.device("cpu"))
    assert cos.shape == sin.shape == (256, 8) and cos.dtype == torch.float32
    with pytest.raises(ValueError):
        rope(250, torch.device("cpu"))


def test_attention_weights_are_the_ones_forward_applies():
    """attention_weights(q, k) · values, merged and projected, is forward's output (pointer keys unrotated)."""
    torch.manual_seed(0)
    layer = MemoryAttention(custom_config(d_model=32, memory_dim=16)).layers[0].cross_attn_image.eval()
    rope = AxialRoPE(32)(16, torch.device("cpu"))
    q, k = torch.randn(2, 16, 32), torch.randn(2, 2 * 16 + 4, 16)  # two 4×4 memory grids and 4 pointer tokens
    weights = layer.attention_weights(q, k, rope, num_k_exclude_rope=4)
    assert weights.shape == (2, 1, 16, 36) and torch.allclose(weights.sum(-1), torch.ones(2, 1, 16))
    expected = layer.out_proj(layer.merge_heads(weights @ layer.split_heads(layer.v_proj(k))))
    torch.testing.assert_close(layer(q, k, k, rope, num_k_exclude_rope=4), expected, atol=1e-5, rtol=1e-5)
