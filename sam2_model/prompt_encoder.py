"""Prompt encoder: turns clicks, box corners and a mask prompt into decoder inputs.

Sparse prompts (points, box corners) become one token each: a random-Fourier encoding of the
position plus a learned per-label embedding. A mask prompt is downscaled by a small conv net into
a dense embedding the size of the image embedding; without one a learned "no mask" vector is used.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .configs import SAM2Config
from .layers import LayerNorm2d

MASK_IN_CHANS = 16  # hidden width of the mask-downscaling convs (fixed in every official model)
NUM_POINT_LABELS = 4  # 0 negative, 1 positive, 2 box top-left, 3 box bottom-right
PAD_LABEL = -1


class RandomFourierPositionEncoding(nn.Module):
    """Encodes 2-D positions in [0, 1]² with fixed random frequencies (a checkpoint buffer).

    An (x, y) position p maps to [sin(2π·(2p−1)·G), cos(2π·(2p−1)·G)] with G of shape 2×F,
    giving 2F channels.
    """

    def __init__(self, num_freqs: int):
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_freqs))

    def encode(self, xy: Tensor) -> Tensor:
        """...×2 positions normalised to [0, 1] -> ...×2F."""
        angles = (2 * xy - 1) @ self.positional_encoding_gaussian_matrix
        angles = 2 * math.pi * angles
        return torch.cat((angles.sin(), angles.cos()), dim=-1)

    def grid(self, h: int, w: int) -> Tensor:
        """Encoding of the pixel centres of an h×w grid -> 2F×h×w."""
        g = self.positional_encoding_gaussian_matrix
        ys = (torch.arange(h, dtype=g.dtype, device=g.device) + 0.5) / h
        xs = (torch.arange(w, dtype=g.dtype, device=g.device) + 0.5) / w
        xy = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # h×w×2 as (x, y)
        return self.encode(xy).permute(2, 0, 1)

    def points(self, coords: Tensor, height: int, width: int) -> Tensor:
        """B×N×2 (x, y) pixel coordinates in a height×width image -> B×N×2F (in the buffer's dtype)."""
        coords = coords.to(self.positional_encoding_gaussian_matrix.dtype)
        return self.encode(coords / coords.new_tensor([width, height]))


class PromptEncoder(nn.Module):
    """Embeds point/box prompts (sparse) and a mask prompt (dense) for the mask decoder."""

    def __init__(self, config: SAM2Config):
        super().__init__()
        dim = config.d_model
        self.embed_dim = dim
        self.input_image_size = config.image_size
        self.image_embedding_size = config.image_embedding_size
        self.mask_input_size = 4 * config.image_embedding_size

        self.pe_layer = RandomFourierPositionEncoding(dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, dim) for _ in range(NUM_POINT_LABELS))
        self.not_a_point_embed = nn.Embedding(1, dim)
        hidden = MASK_IN_CHANS // 4
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, hidden, kernel_size=2, stride=2),
            LayerNorm2d(hidden),
            nn.GELU(),
            nn.Conv2d(hidden, MASK_IN_CHANS, kernel_size=2, stride=2),
            LayerNorm2d(MASK_IN_CHANS),
            nn.GELU(),
            nn.Conv2d(MASK_IN_CHANS, dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, dim)

    def get_dense_pe(self) -> Tensor:
        """Positional encoding of every image-embedding cell -> 1×D×h×w."""
        side = self.image_embedding_size
        return self.pe_layer.grid(side, side)[None]

    def embed_points(self, coords: Tensor, labels: Tensor) -> Tensor:
        """B×N×2 pixel coords, B×N labels -> B×(N+1)×D, with one padding point appended."""
        b = coords.shape[0]
        coords = torch.cat((coords + 0.5, coords.new_zeros(b, 1, 2)), dim=1)  # +0.5: pixel centre
        labels = torch.cat((labels, labels.new_full((b, 1), PAD_LABEL)), dim=1)
        size = self.input_image_size
        pe = self.pe_layer.points(coords, size, size)
        label_table = torch.cat([e.weight for e in self.point_embeddings])  # 4×D
        tokens = pe + label_table[labels.clamp(0, NUM_POINT_LABELS - 1).long()]
        return torch.where((labels == PAD_LABEL)[..., None], self.not_a_point_embed.weight, tokens)

    def forward(
        self,
        coords: Tensor | None,
        labels: Tensor | None,
        masks: Tensor | None,
        batch_size: int = 1,
    ) -> tuple[Tensor, Tensor]:
        """Embed prompts.

        coords: B×N×2 (x, y) in input-image pixels (already scaled to config.image_size);
        labels: B×N in {-1 pad, 0 negative, 1 positive, 2 box top-left, 3 box bottom-right};
        masks: B×1×4h×4w mask logits or None; batch_size is used only when every prompt is None.
        -> sparse B×N'×D (N' = N + 1 padding point, or 0 without points), dense B×D×h×w.
        """
        if (coords is None) != (labels is None):
            raise ValueError("coords and labels must be given together")
        if coords is not None:
            b = coords.shape[0]
        elif masks is not None:
            b = masks.shape[0]
        else:
            b = batch_size

        weight = self.no_mask_embed.weight
        if coords is not None:
            sparse = self.embed_points(coords, labels)
        else:
            sparse = weight.new_empty(b, 0, self.embed_dim)

        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            side = self.image_embedding_size
            dense = weight.reshape(1, -1, 1, 1).expand(b, -1, side, side)
        return sparse, dense
