"""Memory encoder: fuses a frame's image features with its predicted mask into a compact memory.

The mask is downsampled to the feature grid by strided convolutions, added to the projected image
features, refined by ConvNeXt blocks and projected to `memory_dim` channels.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .configs import SAM2Config
from .layers import LayerNorm2d, PositionEmbeddingSine


class MaskDownSampler(nn.Module):
    """Stride-2 3×3 convs (channels ×4 each step) with LayerNorm2d + GELU, then a 1×1 conv.

    B×1×S×S -> B×out_dim×(S/total_stride)×(S/total_stride). Parameters live in `encoder.{i}`.
    """

    def __init__(self, out_dim: int, total_stride: int):
        super().__init__()
        num_steps = round(math.log2(total_stride))
        if 2**num_steps != total_stride:
            raise ValueError(f"total_stride must be a power of 2, got {total_stride}")
        layers: list[nn.Module] = []
        channels = 1
        for _ in range(num_steps):
            layers += [
                nn.Conv2d(channels, channels * 4, kernel_size=3, stride=2, padding=1),
                LayerNorm2d(channels * 4),
                nn.GELU(),
            ]
            channels *= 4
        layers.append(nn.Conv2d(channels, out_dim, kernel_size=1))
        self.encoder = nn.Sequential(*layers)

    def forward(self, mask: Tensor) -> Tensor:
        return self.encoder(mask)


class CXBlock(nn.Module):
    """ConvNeXt block: depthwise 7×7 conv, LayerNorm2d, pointwise MLP (×4, GELU), layer scale, residual.

    B×C×H×W -> B×C×H×W.
    """

    def __init__(self, dim: int, layer_scale_init: float = 1e-6):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = LayerNorm2d(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale_init))

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)  # channels last for the Linear layers
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)


class Fuser(nn.Module):
    """A stack of ConvNeXt blocks (parameters `layers.{i}`)."""

    def __init__(self, dim: int, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(CXBlock(dim) for _ in range(num_layers))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    """Encode (image features, mask) of one frame into a memory and its sine positional encoding."""

    def __init__(self, config: SAM2Config):
        super().__init__()
        dim = config.d_model
        self.mask_downsampler = MaskDownSampler(dim, total_stride=config.backbone_stride)
        self.pix_feat_proj = nn.Conv2d(dim, dim, kernel_size=1)
        self.fuser = Fuser(dim, config.fuser_layers)
        # Official checkpoints have no out_proj weights when no projection is needed.
        self.out_proj = (
            nn.Identity() if config.memory_dim == dim else nn.Conv2d(dim, config.memory_dim, kernel_size=1)
        )
        self.position_encoding = PositionEmbeddingSine(config.memory_dim)

    def forward(self, pix_feat: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """pix_feat: B×D×h×w image features; mask: B×1×S×S, already mapped for memory (the caller
        applies sigmoid / scale / bias), with S = h · backbone_stride.

        Returns (memory, pos), both B×memory_dim×h×w.
        """
        x = self.pix_feat_proj(pix_feat) + self.mask_downsampler(mask)
        x = self.out_proj(self.fuser(x))
        return x, self.position_encoding(x)
