"""SAM 2: the assembled model and the pieces of one tracking step.

The model is stateless: it embeds frames, turns prompts (plus, when tracking, memories of other frames) into
masks, and encodes a frame's prediction into a memory. Which memories a frame attends to is decided by the
caller (the video engine's memory bank); `assemble_memory` only packs them into tokens.

Conventions: B = objects (or images) in the batch, D = config.d_model (256), Dm = config.memory_dim (64),
h×w = the stride-16 grid (64×64 for 1024 px), S = config.image_size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .configs import SAM2Config
from .image_encoder import ImageEncoder
from .layers import MLP
from .mask_decoder import MaskDecoder
from .memory_attention import MemoryAttention
from .memory_encoder import MemoryEncoder
from .prompt_encoder import PromptEncoder

NO_OBJECT_LOGIT = -1024.0
"""Mask logit written where the object-presence head says the object is absent."""

MASK_INPUT_SCALE, MASK_INPUT_BIAS = 20.0, -10.0
"""A binary mask prompt used directly as output becomes logits of ±10."""


@dataclass
class FrameFeatures:
    """Image-encoder output of a batch of frames.

    embedding: B×D×h×w stride-16 features (before any memory conditioning);
    pos: B×D×h×w their sine position encoding;
    high_res: [B×D/8×4h×4w, B×D/4×2h×2w] stride-4/8 features already projected by the decoder's skip convs.
    """

    embedding: Tensor
    pos: Tensor
    high_res: list[Tensor]

    def select(self, index: Tensor | slice | int) -> "FrameFeatures":
        """Rows of the batch (keeps the batch dimension for an int)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return FrameFeatures(self.embedding[index], self.pos[index], [f[index] for f in self.high_res])

    def expand(self, batch: int) -> "FrameFeatures":
        """Broadcast a single frame (batch 1) to `batch` objects without copying."""
        grow = lambda t: t.expand(batch, *t.shape[1:])  # noqa: E731
        return FrameFeatures(grow(self.embedding), grow(self.pos), [grow(f) for f in self.high_res])


@dataclass
class MaskPrediction:
    """One decoder pass (or a mask prompt taken as output) for B objects.

    multimasks: B×M×4h×4w low-res logits of every candidate; ious: B×M;
    low_res: B×1×4h×4w and high_res: B×1×S×S logits of the chosen mask;
    obj_ptr: B×D object pointer; object_score: B×1 presence logit (> 0: present).
    """

    multimasks: Tensor
    ious: Tensor
    low_res: Tensor
    high_res: Tensor
    obj_ptr: Tensor
    object_score: Tensor


def token_major(x: Tensor) -> Tensor:
    """B×C×H×W feature map stored token-major (HW×B×C memory), the layout memory attention reads as tokens.

    The values are unchanged; convolutions downstream then take the same kernels, hence the same rounding, as
    the reference implementation, which keeps its features in this layout."""
    b, c, h, w = x.shape
    return x.flatten(2).permute(2, 0, 1).contiguous().permute(1, 2, 0).view(b, c, h, w)


def sine_encoding_1d(positions: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """Transformer-style encoding of scalar positions: N -> N×dim (sines then cosines)."""
    half = dim // 2
    i = torch.arange(half, dtype=torch.float32, device=positions.device)
    freqs = temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / half)
    angles = positions[:, None].float() / freqs
    return torch.cat((angles.sin(), angles.cos()), dim=-1)


class SAM2(nn.Module):
    """SAM 2 with the official parameter layout (a checkpoint's `model` state dict loads strictly)."""

    def __init__(self, config: SAM2Config):
        super().__init__()
        self.config = config
        d, dm = config.d_model, config.memory_dim
        self.image_encoder = ImageEncoder(config)
        self.sam_prompt_encoder = PromptEncoder(config)
        self.sam_mask_decoder = MaskDecoder(config)
        self.memory_attention = MemoryAttention(config)
        self.memory_encoder = MemoryEncoder(config)
        # temporal encoding of the spatial memories: index 0 = most distant past, num_maskmem-1 = prompted frames
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(config.num_maskmem, 1, 1, dm))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, d))  # added to a frame tracked without memory
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, d))  # unused at inference, kept for the layout
        self.no_obj_ptr = nn.Parameter(torch.zeros(1, d))  # pointer of an absent object
        self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)  # mask prompt -> decoder mask input
        self.obj_ptr_proj = MLP(d, d, d, 3)
        if config.proj_tpos_enc_in_obj_ptrs:
            self.obj_ptr_tpos_proj = nn.Linear(d, dm)
        if config.no_obj_embed_spatial:
            self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, dm))
        for p in (self.maskmem_tpos_enc, self.no_mem_embed, self.no_mem_pos_enc, self.no_obj_ptr):
            nn.init.trunc_normal_(p, std=0.02)
        if config.no_obj_embed_spatial:
            nn.init.trunc_normal_(self.no_obj_embed_spatial, std=0.02)

    @property
    def device(self) -> torch.device:
        return self.no_mem_embed.device

    # ------------------------------------------------------------------ image
    def encode_image(self, images: Tensor) -> FrameFeatures:
        """images B×3×S×S (normalized) -> FrameFeatures."""
        features, positions = self.image_encoder(images)
        decoder = self.sam_mask_decoder
        high_res = [decoder.conv_s0(features[0]), decoder.conv_s1(features[1])]
        return FrameFeatures(embedding=token_major(features[-1]), pos=token_major(positions[-1]),
                             high_res=[token_major(f) for f in high_res])

    def decode(
        self,
        embedding: Tensor,
        high_res: list[Tensor],
        coords: Tensor | None,
        labels: Tensor | None,
        mask_input: Tensor | None,
        multimask_output: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Prompt encoder + mask decoder.

        embedding: b×D×h×w (b = 1 broadcasts over the prompt batch), coords B×N×2 in model-input pixels,
        labels B×N, mask_input B×1×4h×4w logits. -> (multimasks B×M×4h×4w, ious B×M, tokens B×M×D,
        object_score B×1).
        """
        batch = coords.shape[0] if coords is not None else (mask_input.shape[0] if mask_input is not None else 1)
        sparse, dense = self.sam_prompt_encoder(coords, labels, mask_input, batch_size=batch)
        return self.sam_mask_decoder(
            image_embeddings=embedding,
            image_pe=self.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            repeat_image=embedding.shape[0] != sparse.shape[0],
            high_res_features=high_res,  # batch 1 broadcasts over the prompts
        )

    # ------------------------------------------------------------------ tracking step
    def predict_masks(
        self,
        pix_feat: Tensor,
        high_res: list[Tensor],
        coords: Tensor | None,
        labels: Tensor | None,
        mask_input: Tensor | None,
        multimask_output: bool,
    ) -> MaskPrediction:
        """Decode a (memory-conditioned) frame for B objects and derive their pointers.

        pix_feat B×D×h×w; coords B×N×2 / labels B×N (None: no clicks); mask_input B×1×h'×w' logits or None.
        An absent object (presence logit ≤ 0) gets NO_OBJECT_LOGIT masks and the no-object pointer.
        """
        b = pix_feat.shape[0]
        if coords is None:  # the decoder needs at least one (padding) point
            coords = pix_feat.new_zeros(b, 1, 2)
            labels = -torch.ones(b, 1, dtype=torch.int32, device=pix_feat.device)
        if mask_input is not None:
            grid = (self.sam_prompt_encoder.mask_input_size,) * 2
            if tuple(mask_input.shape[-2:]) != grid:
                mask_input = F.interpolate(mask_input.float(), size=grid, mode="bilinear",
                                           align_corners=False, antialias=True)
        multimasks, ious, tokens, object_score = self.decode(pix_feat, high_res, coords, labels, mask_input,
                                                             multimask_output)
        present = object_score > 0
        multimasks = torch.where(present[:, None, None], multimasks, NO_OBJECT_LOGIT).float()
        if multimask_output:
            best = ious.argmax(dim=-1)
            rows = torch.arange(b, device=best.device)
            low_res = multimasks[rows, best].unsqueeze(1)
            token = tokens[rows, best] if tokens.shape[1] > 1 else tokens[:, 0]
        else:
            low_res, token = multimasks, tokens[:, 0]
        high_res_mask = self.upscale(low_res)
        obj_ptr = self.pointer(self.obj_ptr_proj(token), present.float())
        return MaskPrediction(multimasks, ious, low_res, high_res_mask, obj_ptr, object_score)

    def mask_as_output(self, pix_feat: Tensor, high_res: list[Tensor], mask: Tensor) -> MaskPrediction:
        """Take a binary mask prompt (B×1×S×S) as the frame's output; the decoder only supplies its pointer."""
        mask = mask.float()
        high_res_mask = mask * MASK_INPUT_SCALE + MASK_INPUT_BIAS
        low_res = F.interpolate(high_res_mask, size=(mask.shape[-2] // 4, mask.shape[-1] // 4),
                                mode="bilinear", align_corners=False, antialias=True)
        decoded = self.predict_masks(pix_feat, high_res, None, None, self.mask_downsample(mask),
                                     multimask_output=False)
        # presence comes from the mask itself, not from the decoder's score
        present = (mask.flatten(1) > 0).any(dim=1, keepdim=True).float()
        obj_ptr = self.pointer(decoded.obj_ptr, present)
        object_score = MASK_INPUT_SCALE * present + MASK_INPUT_BIAS
        return MaskPrediction(low_res, mask.new_ones(mask.shape[0], 1), low_res, high_res_mask, obj_ptr, object_score)

    def pointer(self, raw_ptr: Tensor, present: Tensor) -> Tensor:
        """Gate a projected pointer B×D by presence B×1 (0/1): absent objects get the learned no-object pointer."""
        return present * raw_ptr + (1 - present) * self.no_obj_ptr

    def input_coords(self, xy: Tensor, frame_hw: tuple[int, int]) -> Tensor:
        """Pixel coordinates (...×2, x then y) of an H×W frame -> model-input pixels (normalise, then scale)."""
        h, w = frame_hw
        return xy.float() / torch.tensor([w, h], dtype=torch.float32) * self.config.image_size

    def upscale(self, low_res: Tensor, size: int | None = None) -> Tensor:
        """B×M×4h×4w -> B×M×size×size logits (bilinear; size: the input size S unless given)."""
        side = size or self.config.image_size
        return F.interpolate(low_res.float(), size=(side, side), mode="bilinear", align_corners=False)

    def condition_on_memory(
        self, features: FrameFeatures, memory: Tensor | None, memory_pos: Tensor | None, num_ptr_tokens: int
    ) -> Tensor:
        """Fuse a frame's stride-16 features with memories. memory: B×M×Dm tokens or None (a frame
        tracked with no memory at all, i.e. an initial prompted frame) -> B×D×h×w."""
        emb = features.embedding
        if memory is None:
            return emb + self.no_mem_embed.view(1, -1, 1, 1)
        b, d, h, w = emb.shape
        curr = emb.flatten(2).transpose(1, 2)
        pos = features.pos.flatten(2).transpose(1, 2)
        out = self.memory_attention(curr, pos, memory, memory_pos, num_obj_ptr_tokens=num_ptr_tokens)
        return out.transpose(1, 2).reshape(b, d, h, w)

    def encode_memory(
        self, features: FrameFeatures, high_res_masks: Tensor, object_score: Tensor, from_clicks: bool
    ) -> tuple[Tensor, Tensor]:
        """Encode a frame and its predicted masks B×1×S×S into a memory: -> (B×Dm×h×w, B×Dm×h×w).

        Masks prompted by clicks are binarized; otherwise the sigmoid is used. Absent objects
        (object_score ≤ 0) get the learned no-object embedding added (SAM 2.1)."""
        cfg = self.config
        mask = (high_res_masks > 0).float() if from_clicks and not self.training else torch.sigmoid(high_res_masks)
        mask = mask * cfg.sigmoid_scale_for_mem_enc + cfg.sigmoid_bias_for_mem_enc
        memory, pos = self.memory_encoder(features.embedding, mask)
        if cfg.no_obj_embed_spatial:
            absent = (object_score <= 0).to(memory.dtype)[..., None, None]
            memory = memory + absent * self.no_obj_embed_spatial.to(memory.dtype)[..., None, None]
        return memory, pos

    def assemble_memory(
        self,
        spatial: list[tuple[int, Tensor, Tensor]],
        pointers: list[tuple[int, Tensor]],
        max_ptr_distance: int,
    ) -> tuple[Tensor, Tensor, int]:
        """Pack memories into attention tokens.

        spatial: (t_pos, memory B×Dm×h×w, pos B×Dm×h×w) with t_pos 0 for prompted frames and 1..num_maskmem-1
        for recent frames (num_maskmem-1 = the previous frame); pointers: (signed distance, ptr B×D);
        max_ptr_distance: the distance normalising pointer positions (min(frames, 16) - 1).
        -> (memory B×M×Dm, memory_pos B×M×Dm, number of pointer tokens at the end).
        """
        cfg = self.config
        tokens, positions = [], []
        for t_pos, mem, pos in spatial:
            tokens.append(mem.flatten(2).transpose(1, 2))
            tpos = self.maskmem_tpos_enc[cfg.num_maskmem - t_pos - 1].view(1, 1, -1)
            positions.append(pos.flatten(2).transpose(1, 2) + tpos)
        num_ptr_tokens = 0
        if pointers:
            distances = torch.tensor([t for t, _ in pointers], device=self.device)
            ptrs = torch.stack([p for _, p in pointers], dim=1)  # B×P×D
            b, p, d = ptrs.shape
            dm = cfg.memory_dim
            if cfg.add_tpos_enc_to_obj_ptrs:
                enc_dim = d if cfg.proj_tpos_enc_in_obj_ptrs else dm
                ptr_pos = sine_encoding_1d(distances / max(max_ptr_distance, 1), enc_dim)
                if cfg.proj_tpos_enc_in_obj_ptrs:
                    ptr_pos = self.obj_ptr_tpos_proj(ptr_pos)
                ptr_pos = ptr_pos[None].expand(b, p, dm)
            else:
                ptr_pos = ptrs.new_zeros(b, p, dm)
            split = d // dm  # each pointer becomes `split` tokens of width Dm
            tokens.append(ptrs.reshape(b, p * split, dm))
            positions.append(ptr_pos.repeat_interleave(split, dim=1))
            num_ptr_tokens = p * split
        # memories may be stored in bfloat16: attend in the model's dtype (autocast may lower it again)
        dtype = self.no_mem_embed.dtype
        memory = torch.cat([t.to(dtype) for t in tokens], dim=1)
        memory_pos = torch.cat([q.to(dtype) for q in positions], dim=1)
        return memory, memory_pos, num_ptr_tokens
