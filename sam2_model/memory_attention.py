"""Memory attention: conditions the current frame's features on memories of past frames.

A stack of pre-norm transformer layers (self-attention, cross-attention to the memories, FFN), where
both attentions use 2-D axial rotary position encoding (RoPE) over the square feature grid.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .configs import SAM2Config
from .layers import FULL_PRECISION, Attention, attention

RopeTable = tuple[Tensor, Tensor]
"""(cos, sin) of the rotation angles, each N×(head_dim/2) float32, N = tokens of one grid."""


class AxialRoPE(nn.Module):
    """2-D axial RoPE tables for a square, row-major token grid (x varies fastest).

    Channels are rotated in consecutive pairs (2i, 2i+1). The first head_dim/4 pairs rotate by
    x · f_j and the last head_dim/4 pairs by y · f_j, with f_j = theta^(-4j / head_dim).
    Tables are computed once per grid size and device; they hold no parameters.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0):
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"axial RoPE needs a head dim divisible by 4, got {head_dim}")
        self.head_dim = head_dim
        self.theta = theta
        self._cache: dict[tuple[int, torch.device], RopeTable] = {}

    def _table(self, side: int) -> RopeTable:
        # Computed on the CPU in float32 and moved afterwards, as the reference does, so the table is
        # bit-identical to it on every device. cos/sin are taken from torch.polar because its CPU kernel
        # rounds differently from torch.cos/sin (1 ulp) and the reference uses it.
        exponents = torch.arange(0, self.head_dim, 4, dtype=torch.float32) / self.head_dim
        inv_freq = 1.0 / (self.theta**exponents)  # head_dim/4
        idx = torch.arange(side * side, dtype=torch.float32)
        x, y = idx % side, torch.div(idx, side, rounding_mode="floor")
        angles = torch.cat((torch.outer(x, inv_freq), torch.outer(y, inv_freq)), dim=1)  # N×head_dim/2
        rotation = torch.polar(torch.ones_like(angles), angles)
        return rotation.real.contiguous(), rotation.imag.contiguous()

    def forward(self, num_tokens: int, device: torch.device) -> RopeTable:
        """Table for a grid of `num_tokens` = side² tokens."""
        side = math.isqrt(num_tokens)
        if side * side != num_tokens:
            raise ValueError(f"RoPE needs a square token grid, got {num_tokens} tokens")
        key = (side, torch.device(device))
        if key not in self._cache:
            self._cache[key] = tuple(t.to(device) for t in self._table(side))
        return self._cache[key]


def apply_rope(x: Tensor, rope: RopeTable) -> Tensor:
    """Rotate x: B×heads×(r·N)×head_dim by the N-token table, tiled r times along the tokens.

    The rotation is done in float32 and cast back to x's dtype.
    """
    cos, sin = rope
    n = cos.shape[0]
    if x.shape[-2] % n:
        raise ValueError(f"{x.shape[-2]} RoPE tokens are not a whole number of {n}-token grids")
    pairs = x.float().unflatten(-2, (-1, n)).unflatten(-1, (-1, 2))  # B×h×r×N×(C/2)×2
    a, b = pairs.unbind(-1)
    rotated = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1)
    return rotated.flatten(-2).flatten(2, 3).to(x.dtype)


class RoPEAttention(Attention):
    """Attention with axial RoPE on queries and keys.

    q: B×Nq×D (Nq = one grid), k/v: B×Nk×kv_in_dim -> B×Nq×D. The first Nk - num_k_exclude_rope keys
    (one or more grids, e.g. several memory frames) are rotated; the last num_k_exclude_rope keys
    (object pointers) are not.
    """

    def forward(
        self, q: Tensor, k: Tensor, v: Tensor, rope: RopeTable, num_k_exclude_rope: int = 0
    ) -> Tensor:
        q, k = self._rotated(q, k, rope, num_k_exclude_rope)
        if self._project_values_last(q):
            return self.out_proj(self.merge_heads(self._attend_then_project_values(q, k, v)))
        return self.attend(q, k, self.split_heads(self.v_proj(v)))

    def attention_weights(self, q: Tensor, k: Tensor, rope: RopeTable, num_k_exclude_rope: int = 0) -> Tensor:
        """The attention matrix of `forward(q, k, v, rope, num_k_exclude_rope)`: B×h×Nq×Nk, rows summing to 1
        (a diagnostic: `forward` never materialises it on the fused path)."""
        q, k = self._rotated(q, k, rope, num_k_exclude_rope)
        return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)

    def _rotated(self, q: Tensor, k: Tensor, rope: RopeTable, num_k_exclude_rope: int) -> tuple[Tensor, Tensor]:
        """Project and split q and k into heads and rotate them: B×h×Nq×c, B×h×Nk×c."""
        q = apply_rope(self.split_heads(self.q_proj(q)), rope)
        k = self.split_heads(self.k_proj(k))
        num_rope = k.shape[-2] - num_k_exclude_rope
        if num_rope > 0:
            k = torch.cat((apply_rope(k[:, :, :num_rope], rope), k[:, :, num_rope:]), dim=2)
        return q, k

    def _project_values_last(self, q: Tensor) -> bool:
        """On the CPU in reduced precision, attend over the memories when they are narrower than the projected
        values (2 threads, tiny config, bf16: 2.4 s instead of 2.9 s per object-frame; in float32 PyTorch's
        fused kernel on the projected values is as fast, and it is kept)."""
        narrow = self.num_heads * self.kv_in_dim < self.internal_dim
        reduced = q.dtype not in FULL_PRECISION
        return narrow and reduced and q.device.type == "cpu" and not (self.training and self.dropout_p > 0)

    def _attend_then_project_values(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Attention rows sum to 1, so A·(v·Wᵀ + b) = (A·v)·Wᵀ + b: attending over the kv_in_dim-wide memories
        and projecting afterwards saves (1 - h·kv_in_dim/internal_dim) of the A·v multiply-adds (3/4 for
        SAM 2's 64-wide memories). q, k: B×h×Nq|Nk×c, v: B×Nk×kv_in_dim -> B×h×Nq×c."""
        heads = v.to(q.dtype)[:, None].expand(-1, self.num_heads, -1, -1)
        mixed = attention(q, k, heads)  # B×h×Nq×kv_in_dim
        weight = self.v_proj.weight.view(self.num_heads, -1, self.kv_in_dim)  # h×c×kv_in_dim
        bias = self.v_proj.bias.view(1, self.num_heads, 1, -1)
        return torch.einsum("bhnk,hck->bhnc", mixed, weight.to(mixed.dtype)) + bias.to(mixed.dtype)


class MemoryAttentionLayer(nn.Module):
    """Pre-norm layer: RoPE self-attention, RoPE cross-attention to memories, ReLU FFN.

    As in every official config, positional encodings enter only through RoPE and the memory keys
    (memory + memory_pos); the queries carry no additive positional encoding.
    """

    def __init__(self, config: SAM2Config):
        super().__init__()
        d, heads, p = config.d_model, config.memory_attention_heads, config.dropout
        self.self_attn = RoPEAttention(d, heads, dropout=p)
        self.cross_attn_image = RoPEAttention(d, heads, dropout=p, kv_in_dim=config.memory_dim)
        self.linear1 = nn.Linear(d, config.memory_attention_ff_dim)
        self.linear2 = nn.Linear(config.memory_attention_ff_dim, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.norm3 = nn.LayerNorm(d)
        self.dropout = nn.Dropout(p)  # inside the FFN
        self.dropout1 = nn.Dropout(p)
        self.dropout2 = nn.Dropout(p)
        self.dropout3 = nn.Dropout(p)

    def forward(
        self, x: Tensor, memory: Tensor, memory_pos: Tensor, rope: RopeTable, num_obj_ptr_tokens: int
    ) -> Tensor:
        """x: B×HW×D, memory/memory_pos: B×M×memory_dim -> B×HW×D."""
        y = self.norm1(x)
        x = x + self.dropout1(self.self_attn(y, y, y, rope))
        y = self.norm2(x)
        x = x + self.dropout2(self.cross_attn_image(y, memory + memory_pos, memory, rope, num_obj_ptr_tokens))
        y = self.linear2(self.dropout(F.relu(self.linear1(self.norm3(x)))))
        return x + self.dropout3(y)


class MemoryAttention(nn.Module):
    """Stack of `config.memory_attention_layers` MemoryAttentionLayers and a final LayerNorm."""

    def __init__(self, config: SAM2Config):
        super().__init__()
        num_layers = config.memory_attention_layers
        self.layers = nn.ModuleList(MemoryAttentionLayer(config) for _ in range(num_layers))
        self.norm = nn.LayerNorm(config.d_model)
        self.rope = AxialRoPE(config.d_model // config.memory_attention_heads, config.rope_theta)

    def forward(
        self,
        curr: Tensor,
        curr_pos: Tensor,
        memory: Tensor,
        memory_pos: Tensor,
        num_obj_ptr_tokens: int = 0,
    ) -> Tensor:
        """Batch-first. curr/curr_pos: B×HW×D (HW a square grid); memory/memory_pos: B×M×memory_dim,
        M = frames·HW spatial memory tokens followed by num_obj_ptr_tokens object-pointer tokens.

        Returns B×HW×D.
        """
        if curr.shape[0] != memory.shape[0]:
            raise ValueError("curr and memory must have the same batch size")
        x = curr + 0.1 * curr_pos
        rope = self.rope(curr.shape[1], curr.device)
        for layer in self.layers:
            x = layer(x, memory, memory_pos, rope, num_obj_ptr_tokens)
        return self.norm(x)


@contextmanager
def recorded_cross_attention(module: MemoryAttention) -> Iterator[list[tuple[Tensor, int]]]:
    """Within the block, every memory cross-attention call of `module` appends (its attention matrix B×h×Nq×Nk,
    the number of object-pointer keys at its end) to the yielded list, differentiable (for diagnostics and
    training terms; each matrix is computed a second time beside the layer's own fused attention)."""
    records: list[tuple[Tensor, int]] = []

    def record(attn: RoPEAttention, args: tuple) -> None:
        query, key, _, rope, num_pointers = args
        records.append((attn.attention_weights(query, key, rope, num_pointers), num_pointers))

    hooks = [layer.cross_attn_image.register_forward_pre_hook(record) for layer in module.layers]
    try:
        yield records
    finally:
        for hook in hooks:
            hook.remove()
