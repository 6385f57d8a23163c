"""SAM 2 mask decoder: output tokens + prompt tokens run through a two-way transformer with the
image embedding; each mask token then becomes a dynamic 1×1 filter over the upscaled image features.

Output tokens, in order: object score, IoU, 1 single-mask token, `num_multimask_outputs` multimask
tokens. SAM 2 behaviour (high-res skip features, sigmoid IoU, MLP object-score head, multimask tokens
as object pointers) is fixed: every official model uses it.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .configs import SAM2Config
from .layers import MLP, LayerNorm2d
from .transformer import TwoWayTransformer

IOU_HEAD_HIDDEN_DIM = 256
IOU_HEAD_DEPTH = 3


class MaskDecoder(nn.Module):
    """Predicts low-res mask logits, IoU estimates, mask tokens and an object score."""

    def __init__(self, config: SAM2Config):
        super().__init__()
        dim = config.d_model
        self.num_mask_tokens = config.num_multimask_outputs + 1
        self.stability_delta = config.dynamic_multimask_stability_delta
        self.stability_thresh = config.dynamic_multimask_stability_thresh

        self.transformer = TwoWayTransformer(
            depth=config.decoder_depth,
            embedding_dim=dim,
            num_heads=config.decoder_heads,
            mlp_dim=config.decoder_mlp_dim,
        )
        self.obj_score_token = nn.Embedding(1, dim)
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)

        # 4× upscaling; the stride-8 and stride-4 backbone features (already projected by conv_s1 /
        # conv_s0 when the image is encoded) are added after each transposed conv.
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.conv_s0 = nn.Conv2d(dim, dim // 8, kernel_size=1)
        self.conv_s1 = nn.Conv2d(dim, dim // 4, kernel_size=1)

        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            dim, IOU_HEAD_HIDDEN_DIM, self.num_mask_tokens, IOU_HEAD_DEPTH, sigmoid_output=True
        )
        self.pred_obj_score_head = MLP(dim, dim, 1, 3)

    def forward(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        multimask_output: bool,
        repeat_image: bool,
        high_res_features: list[Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Decode masks for B prompts.

        image_embeddings: B×D×h×w (1×D×h×w with repeat_image=True, shared by all prompts);
        image_pe: 1×D×h×w; sparse_prompt_embeddings: B×N×D; dense_prompt_embeddings: B×D×h×w;
        high_res_features: [stride-4 (B or 1)×D/8×4h×4w, stride-8 (B or 1)×D/4×2h×2w] or None.
        -> masks B×M×4h×4w logits, iou B×M, sam_tokens B×M'×D, object_score_logits B×1, where
        M = M' = num_multimask_outputs with multimask_output, else M = M' = 1. Single-mask output
        in eval mode falls back, per prompt, to the best multimask output when the single mask is
        unstable; the single-mask token is always the one returned then.
        """
        masks, iou, mask_tokens, obj_scores = self.predict_masks(
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            repeat_image,
            high_res_features,
        )
        if multimask_output:
            return masks[:, 1:], iou[:, 1:], mask_tokens[:, 1:], obj_scores
        if self.training:
            masks, iou = masks[:, :1], iou[:, :1]
        else:
            masks, iou = self.select_stable_single_mask(masks, iou)
        return masks, iou, mask_tokens[:, :1], obj_scores

    def predict_masks(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        repeat_image: bool,
        high_res_features: list[Tensor] | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """All mask tokens' outputs -> masks B×T×4h×4w, iou B×T, tokens B×T×D, obj score B×1
        (T = num_mask_tokens, single-mask token first)."""
        b = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat((self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight))
        tokens = torch.cat((output_tokens[None].expand(b, -1, -1), sparse_prompt_embeddings), dim=1)

        if repeat_image:
            image_embeddings = image_embeddings.repeat_interleave(b, dim=0)
        elif image_embeddings.shape[0] != b:
            raise ValueError("image_embeddings and prompts differ in batch size; use repeat_image=True")
        src = image_embeddings + dense_prompt_embeddings
        _, c, h, w = src.shape

        hs, src = self.transformer(src, image_pe, tokens)
        obj_token_out = hs[:, 0]
        iou_token_out = hs[:, 1]
        mask_tokens_out = hs[:, 2 : 2 + self.num_mask_tokens]

        upscaled = self.upscale(src.transpose(1, 2).reshape(b, c, h, w), high_res_features)
        filters = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )  # B×T×D/8
        masks = (filters @ upscaled.flatten(2)).reshape(b, -1, *upscaled.shape[-2:])

        iou = self.iou_prediction_head(iou_token_out)
        obj_scores = self.pred_obj_score_head(obj_token_out)
        return masks, iou, mask_tokens_out, obj_scores

    def upscale(self, src: Tensor, high_res_features: list[Tensor] | None) -> Tensor:
        """B×D×h×w -> B×D/8×4h×4w, adding the high-res skip features when given."""
        up1, norm, act1, up2, act2 = self.output_upscaling
        x = up1(src)
        if high_res_features is not None:
            x = x + high_res_features[1]
        x = up2(act1(norm(x)))
        if high_res_features is not None:
            x = x + high_res_features[0]
        return act2(x)

    def stability_scores(self, mask_logits: Tensor) -> Tensor:
        """B×M×H×W logits -> B×M IoU between the masks thresholded at +delta and at -delta."""
        logits = mask_logits.flatten(-2)
        inner = (logits > self.stability_delta).sum(-1).float()
        outer = (logits > -self.stability_delta).sum(-1).float()
        return torch.where(outer > 0, inner / outer, torch.ones_like(outer))

    def select_stable_single_mask(self, masks: Tensor, iou: Tensor) -> tuple[Tensor, Tensor]:
        """masks B×T×H×W, iou B×T -> B×1×H×W, B×1: the single-mask output where it is stable,
        otherwise the multimask output with the highest predicted IoU."""
        best = iou[:, 1:].argmax(dim=-1) + 1  # B, index into all T outputs
        rows = torch.arange(masks.shape[0], device=masks.device)
        best_masks, best_iou = masks[rows, best][:, None], iou[rows, best][:, None]
        stable = self.stability_scores(masks[:, :1]) >= self.stability_thresh  # B×1
        return (
            torch.where(stable[..., None, None], masks[:, :1], best_masks),
            torch.where(stable, iou[:, :1], best_iou),
        )
