"""Small building blocks shared by several modules: MLP, LayerNorm2d, multi-head attention,
sine positional encoding."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MLP(nn.Module):
    """`num_layers` Linear layers with `activation` between them (parameters `layers.{i}`)."""

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        activation: type[nn.Module] = nn.ReLU,
        sigmoid_output: bool = False,
    ):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.act = activation()
        self.sigmoid_output = sigmoid_output

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.act(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dimension of a B×C×H×W tensor."""

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


QUERY_BLOCK_ELEMENTS = 1 << 23
"""Score-matrix elements (batch × heads × queries × keys) computed at once by the blocked CPU attention."""


FULL_PRECISION = (torch.float32, torch.float64)
"""Dtypes that the CPU attention paths treat as full precision (fused kernel; no reordered projections)."""


def attention(q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0) -> Tensor:
    """softmax(q·kᵀ/√d)·v. q: B×h×Nq×d, k: B×h×Nk×d, v: B×h×Nk×dv -> B×h×Nq×dv.

    PyTorch's fused kernel (scaled_dot_product_attention) runs on accelerators, with dropout, and on the CPU in
    float32/float64 when dv = d. Elsewhere on the CPU it is slower than plain matmuls: in bfloat16, and for
    dv ≠ d it falls back to a kernel that holds the whole score matrix. There the scores are computed for blocks
    of queries, with the softmax in float32 or better (measured 1.15–1.4× faster for memory-attention shapes
    on AVX-512).
    """
    full_precision = q.dtype in FULL_PRECISION
    fused = q.device.type != "cpu" or dropout_p > 0 or (full_precision and v.shape[-1] == q.shape[-1])
    if fused:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    keys_t = (k * q.shape[-1] ** -0.5).transpose(-2, -1).contiguous()  # B×h×d×Nk, laid out once for all blocks
    rows = max(1, QUERY_BLOCK_ELEMENTS // (q.shape[0] * q.shape[1] * k.shape[-2]))
    blocks = []
    for start in range(0, q.shape[-2], rows):
        scores = torch.matmul(q[..., start:start + rows, :], keys_t)
        probs = torch.softmax(scores if full_precision else scores.float(), dim=-1)
        blocks.append(torch.matmul(probs.to(v.dtype), v))
    return torch.cat(blocks, dim=-2)


class Attention(nn.Module):
    """Multi-head attention with optional down-projection of the internal width.

    q: B×Nq×D, k/v: B×Nk×kv_in_dim -> B×Nq×D. Internal width is D // downsample_rate.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        downsample_rate: int = 1,
        dropout: float = 0.0,
        kv_in_dim: int | None = None,
    ):
        super().__init__()
        self.embedding_dim = embedding_dim
        self.kv_in_dim = kv_in_dim if kv_in_dim is not None else embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError("num_heads must divide embedding_dim // downsample_rate")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(self.kv_in_dim, self.internal_dim)
        self.v_proj = nn.Linear(self.kv_in_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)
        self.dropout_p = dropout

    def split_heads(self, x: Tensor) -> Tensor:
        """B×N×C -> B×heads×N×(C/heads)."""
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    @staticmethod
    def merge_heads(x: Tensor) -> Tensor:
        """B×heads×N×c -> B×N×(heads·c)."""
        b, h, n, c = x.shape
        return x.transpose(1, 2).reshape(b, n, h * c)

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Scaled dot-product attention on head-split tensors, then merge and project out."""
        p = self.dropout_p if self.training else 0.0
        return self.out_proj(self.merge_heads(attention(q, k, v, dropout_p=p)))

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q = self.split_heads(self.q_proj(q))
        k = self.split_heads(self.k_proj(k))
        v = self.split_heads(self.v_proj(v))
        return self.attend(q, k, v)


class PositionEmbeddingSine(nn.Module):
    """2-D sine/cosine positional encoding (DETR style) of a feature map.

    forward(x: B×C×H×W) -> B×num_pos_feats×H×W: the first half encodes y, the second half x.
    """

    def __init__(self, num_pos_feats: int, temperature: float = 10000.0, scale: float = 2 * math.pi):
        super().__init__()
        if num_pos_feats % 2:
            raise ValueError("num_pos_feats must be even")
        self.half = num_pos_feats // 2
        self.temperature = temperature
        self.scale = scale
        self._cache: dict[tuple[int, int, torch.device], Tensor] = {}

    def _encode(self, h: int, w: int, device: torch.device) -> Tensor:
        eps = 1e-6
        y = torch.arange(1, h + 1, dtype=torch.float32, device=device)
        x = torch.arange(1, w + 1, dtype=torch.float32, device=device)
        y = y / (y[-1] + eps) * self.scale
        x = x / (x[-1] + eps) * self.scale
        i = torch.arange(self.half, dtype=torch.float32, device=device)
        freqs = self.temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / self.half)

        def interleave(pos: Tensor) -> Tensor:  # L -> L×half, sin on even, cos on odd channels
            angles = pos[:, None] / freqs
            return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

        pos_y = interleave(y)[:, None, :].expand(h, w, self.half)
        pos_x = interleave(x)[None, :, :].expand(h, w, self.half)
        return torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1).contiguous()  # C×H×W

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        key = (h, w, x.device)
        if key not in self._cache:
            self._cache[key] = self._encode(h, w, x.device)
        return self._cache[key][None].expand(x.shape[0], -1, -1, -1).to(x.dtype)
