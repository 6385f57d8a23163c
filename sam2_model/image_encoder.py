"""Image encoder: a Hiera trunk (hierarchical ViT with windowed attention and query pooling)
followed by an FPN neck that maps every stage to `d_model` channels with sine position encodings.

Tensors inside the trunk are channels-last (B×H×W×C); the trunk's outputs and the neck are B×C×H×W.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .configs import HieraConfig, SAM2Config
from .layers import MLP, PositionEmbeddingSine, attention


def window_partition(x: Tensor, size: int) -> tuple[Tensor, tuple[int, int]]:
    """Split B×H×W×C into (B·nh·nw)×size×size×C windows, zero-padding H and W up to multiples of size.

    Returns the windows and the window grid (nh, nw).
    """
    b, h, w, c = x.shape
    nh, nw = math.ceil(h / size), math.ceil(w / size)
    x = F.pad(x, (0, 0, 0, nw * size - w, 0, nh * size - h))
    x = x.reshape(b, nh, size, nw, size, c).transpose(2, 3)
    return x.reshape(b * nh * nw, size, size, c), (nh, nw)


def window_unpartition(windows: Tensor, grid: tuple[int, int], hw: tuple[int, int]) -> Tensor:
    """Inverse of `window_partition`: (B·nh·nw)×s×s×C windows -> B×H×W×C, dropping the padding."""
    nh, nw = grid
    _, s, _, c = windows.shape
    x = windows.reshape(-1, nh, nw, s, s, c).transpose(2, 3).reshape(-1, nh * s, nw * s, c)
    return x[:, : hw[0], : hw[1]]


def max_pool_hw(x: Tensor, stride: tuple[int, int]) -> Tensor:
    """Max-pool a channels-last B×H×W×C tensor with kernel = stride (odd remainders are dropped)."""
    return F.max_pool2d(x.permute(0, 3, 1, 2), kernel_size=stride, stride=stride).permute(0, 2, 3, 1)


class PatchEmbed(nn.Module):
    """7×7 stride-4 convolution: B×3×S×S image -> B×(S/4)×(S/4)×C tokens (channels-last)."""

    def __init__(self, embed_dim: int, in_chans: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=7, stride=4, padding=3)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class PooledAttention(nn.Module):
    """Multi-head self-attention over each window, optionally max-pooling the queries.

    x: N×h×w×dim -> N×h'×w'×dim_out, where (h', w') = (h, w) // q_stride when pooling.
    Parameters `qkv` (dim -> 3·dim_out, laid out q|k|v, each heads×head_dim) and `proj`.
    """

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_stride: tuple[int, int] | None):
        super().__init__()
        if dim_out % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide dim_out={dim_out}")
        self.num_heads = num_heads
        self.q_stride = q_stride
        self.qkv = nn.Linear(dim, 3 * dim_out)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        n, h, w, _ = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # each N×h×w×dim_out
        if self.q_stride is not None:
            q = max_pool_hw(q, self.q_stride)
            h, w = q.shape[1:3]

        def heads(t: Tensor) -> Tensor:  # N×...×C -> N×heads×L×(C/heads)
            return t.reshape(n, -1, self.num_heads, t.shape[-1] // self.num_heads).transpose(1, 2)

        out = attention(heads(q), heads(k), heads(v))
        return self.proj(out.transpose(1, 2).reshape(n, h, w, -1))


class HieraBlock(nn.Module):
    """Pre-norm transformer block with (windowed or global) attention and an MLP.

    At a stage transition (`dim != dim_out`) the residual is projected by `proj` and, like the
    queries, max-pooled by `q_stride`. `window_size == 0` means global attention.
    x: B×H×W×dim -> B×H'×W'×dim_out.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        window_size: int,
        q_stride: tuple[int, int] | None,
        mlp_ratio: float,
    ):
        super().__init__()
        self.window_size = window_size
        self.q_stride = q_stride
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = PooledAttention(dim, dim_out, num_heads, q_stride)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLP(dim_out, int(dim_out * mlp_ratio), dim_out, num_layers=2, activation=nn.GELU)
        self.proj = nn.Linear(dim, dim_out) if dim != dim_out else None

    def forward(self, x: Tensor) -> Tensor:
        normed = self.norm1(x)
        shortcut = x
        if self.proj is not None:
            shortcut = self.proj(normed)
            if self.q_stride is not None:
                shortcut = max_pool_hw(shortcut, self.q_stride)

        if self.window_size > 0:
            windows, grid = window_partition(normed, self.window_size)
            x = window_unpartition(self.attn(windows), grid, shortcut.shape[1:3])
        else:
            x = self.attn(normed)

        x = shortcut + x
        return x + self.mlp(self.norm2(x))


@dataclass(frozen=True)
class _BlockSpec:
    dim: int
    dim_out: int
    num_heads: int
    window_size: int
    q_stride: tuple[int, int] | None


def _block_specs(cfg: HieraConfig) -> list[_BlockSpec]:
    """Per-block hyper-parameters. The first block of stages 2..4 changes width and head count,
    keeps the previous stage's window size and (for the first `q_pool` transitions) pools by q_stride."""
    dims = cfg.stage_dims
    specs, heads, index = [], cfg.num_heads, 0
    for stage, depth in enumerate(cfg.stages):
        for j in range(depth):
            first = stage > 0 and j == 0
            if first:
                heads = int(heads * cfg.head_mul)
            window = cfg.window_spec[stage - 1 if first else stage]
            specs.append(
                _BlockSpec(
                    dim=dims[stage - 1] if first else dims[stage],
                    dim_out=dims[stage],
                    num_heads=heads,
                    window_size=0 if index in cfg.global_att_blocks else window,
                    q_stride=tuple(cfg.q_stride) if first and stage <= cfg.q_pool else None,
                )
            )
            index += 1
    return specs


class Hiera(nn.Module):
    """Hiera trunk. forward(B×3×S×S) -> one B×C_i×H_i×W_i map per stage, finest first
    (for S=1024 and tiny: 96×256², 192×128², 384×64², 768×32²)."""

    def __init__(self, cfg: HieraConfig):
        super().__init__()
        if len(cfg.window_spec) != len(cfg.stages):
            raise ValueError("window_spec needs one window size per stage")
        if not 0 <= cfg.q_pool < len(cfg.stages):
            raise ValueError(f"q_pool must be in [0, {len(cfg.stages) - 1}]")
        if cfg.drop_path_rate:
            raise ValueError("stochastic depth (drop_path_rate > 0) is a training feature and not supported")
        self.patch_embed = PatchEmbed(cfg.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.embed_dim, *cfg.window_pos_embed_bkg_spatial_size))
        w = cfg.window_spec[0]
        self.pos_embed_window = nn.Parameter(torch.zeros(1, cfg.embed_dim, w, w))
        self.blocks = nn.ModuleList(
            HieraBlock(s.dim, s.dim_out, s.num_heads, s.window_size, s.q_stride, cfg.mlp_ratio)
            for s in _block_specs(cfg)
        )
        self.stage_ends = tuple(sum(cfg.stages[: i + 1]) - 1 for i in range(len(cfg.stages)))

    def position_embedding(self, h: int, w: int) -> Tensor:
        """1×h×w×C: the background embedding resized (bicubic) to the grid plus the per-window
        embedding tiled across it."""
        background = F.interpolate(self.pos_embed, size=(h, w), mode="bicubic")
        ws = self.pos_embed_window.shape[-1]
        tiled = self.pos_embed_window.tile(1, 1, math.ceil(h / ws), math.ceil(w / ws))[..., :h, :w]
        return (background + tiled).permute(0, 2, 3, 1)

    def forward(self, images: Tensor) -> list[Tensor]:
        x = self.patch_embed(images)
        x = x + self.position_embedding(*x.shape[1:3])
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.stage_ends:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs


class _Lateral(nn.Module):
    """1×1 convolution held as `conv` (matches the checkpoint's `convs.{i}.conv`)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class FpnNeck(nn.Module):
    """Feature pyramid: 1×1 lateral convs to d_model, plus nearest ×2 top-down fusion into the
    levels listed in `top_down_levels` (level 0 = finest).

    forward(list of B×C_i×H_i×W_i, finest first) -> (features, positions), both lists of
    B×d_model×H_i×W_i, finest first. `convs` are ordered coarsest first, like `channel_list`.
    """

    def __init__(self, d_model: int, channel_list: tuple[int, ...], top_down_levels: tuple[int, ...]):
        super().__init__()
        self.position_encoding = PositionEmbeddingSine(d_model)
        self.convs = nn.ModuleList(_Lateral(c, d_model) for c in channel_list)
        self.top_down_levels = frozenset(top_down_levels)

    def forward(self, xs: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        n = len(self.convs)
        if len(xs) != n:
            raise ValueError(f"expected {n} feature maps, got {len(xs)}")
        features: list[Tensor] = []  # built coarsest first
        for level in reversed(range(n)):
            x = self.convs[n - 1 - level](xs[level])
            if level in self.top_down_levels and features:
                x = x + F.interpolate(features[-1].float(), scale_factor=2.0, mode="nearest")
            features.append(x)
        features.reverse()
        return features, [self.position_encoding(f) for f in features]


class ImageEncoder(nn.Module):
    """Hiera trunk + FPN neck; the `scalp` coarsest levels are discarded.

    forward(images B×3×S×S, normalized) -> (features, positions), finest first; for S=1024:
    B×256×256×256, B×256×128×128, B×256×64×64 each.
    """

    def __init__(self, config: SAM2Config):
        super().__init__()
        self.trunk = Hiera(config.trunk)
        self.neck = FpnNeck(config.d_model, config.backbone_channel_list, config.fpn_top_down_levels)
        self.scalp = config.scalp

    def forward(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        if images.shape[-1] % 32 or images.shape[-2] % 32:
            raise ValueError(f"image height and width must be multiples of 32, got {tuple(images.shape[-2:])}")
        features, positions = self.neck(self.trunk(images))
        keep = len(features) - self.scalp
        return features[:keep], positions[:keep]
