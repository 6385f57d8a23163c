"""Image encoder vs Meta's reference (installed `sam2` package, test oracle only)."""
from __future__ import annotations

import functools

import pytest
import torch

from sam2_model.configs import CONFIGS, HieraConfig, SAM2Config, custom_config
from sam2_model.image_encoder import ImageEncoder

from sam2.modeling.backbones.hieradet import Hiera as RefHiera
from sam2.modeling.backbones.image_encoder import FpnNeck as RefFpnNeck
from sam2.modeling.backbones.image_encoder import ImageEncoder as RefImageEncoder
from sam2.modeling.position_encoding import PositionEmbeddingSine as RefPositionEmbeddingSine


def build_reference(cfg: SAM2Config) -> RefImageEncoder:
    """The reference image encoder with the same hyper-parameters as the official yaml files."""
    t = cfg.trunk
    trunk = RefHiera(
        embed_dim=t.embed_dim,
        num_heads=t.num_heads,
        stages=t.stages,
        global_att_blocks=t.global_att_blocks,
        window_spec=t.window_spec,
        window_pos_embed_bkg_spatial_size=t.window_pos_embed_bkg_spatial_size,
    )
    neck = RefFpnNeck(
        position_encoding=RefPositionEmbeddingSine(num_pos_feats=cfg.d_model, normalize=True, temperature=10000),
        d_model=cfg.d_model,
        backbone_channel_list=list(cfg.backbone_channel_list),
        fpn_top_down_levels=list(cfg.fpn_top_down_levels),
        fpn_interp_model="nearest",
    )
    return RefImageEncoder(trunk, neck, scalp=cfg.scalp).eval()


@functools.lru_cache(maxsize=None)
def reference_manifest(trunk: HieraConfig, d_model: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the reference image encoder. Cached by trunk: 2.0 and 2.1 share the encoder."""
    cfg = CONFIGS["sam2.1_hiera_tiny"].replace(trunk=trunk, d_model=d_model)
    return {k: tuple(v.shape) for k, v in build_reference(cfg).state_dict().items()}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_state_dict_matches_reference(name: str) -> None:
    cfg = CONFIGS[name]
    with torch.device("meta"):
        ours = ImageEncoder(cfg)
    expected = reference_manifest(cfg.trunk, cfg.d_model)
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert got == expected


def randomized_pair(cfg: SAM2Config, seed: int = 0) -> tuple[ImageEncoder, RefImageEncoder]:
    """Reference with every parameter re-randomized, and ours loaded strictly from it."""
    ref = build_reference(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith(("norm1.weight", "norm2.weight")):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith("pos_embed") or name.endswith("pos_embed_window"):
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel() if p.dim() > 1 else 1
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5 * (1 if p.dim() > 1 else 0.1))
    ours = ImageEncoder(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


def max_diffs(cfg: SAM2Config, image_size: int, batch: int = 1, seed: int = 0) -> tuple[list[float], list[float]]:
    ours, ref = randomized_pair(cfg, seed)
    x = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed + 1))
    with torch.inference_mode():
        feats, pos = ours(x)
        expected = ref(x)
    ref_feats, ref_pos = expected["backbone_fpn"], expected["vision_pos_enc"]
    assert [f.shape for f in feats] == [f.shape for f in ref_feats]
    assert [p.shape for p in pos] == [p.shape for p in ref_pos]
    side = image_size // 4
    assert [f.shape[-1] for f in feats] == [side >> i for i in range(len(feats))]
    feat_diff = [(a - b).abs().max().item() for a, b in zip(feats, ref_feats)]
    pos_diff = [(a - b).abs().max().item() for a, b in zip(pos, ref_pos)]
    print(f"\nfeature max abs diff per level: {feat_diff}; position max abs diff: {pos_diff}")
    print(f"feature max abs per level: {[f.abs().max().item() for f in ref_feats]}")
    return feat_diff, pos_diff


def test_tiny_full_resolution_parity() -> None:
    feat_diff, pos_diff = max_diffs(CONFIGS["sam2.1_hiera_tiny"], 1024)
    assert len(feat_diff) == 3
    assert max(feat_diff) <= 1e-4
    assert max(pos_diff) <= 1e-6


def test_custom_config_window_padding_parity() -> None:
    # grids at 256 px: 64, 32, 16, 8; windows 6 and 3 do not divide them, so every later stage pads
    cfg = custom_config(
        image_size=256,
        embed_dim=16,
        num_heads=1,
        stages=(1, 2, 2, 1),
        global_att_blocks=(4,),
        window_spec=(8, 6, 6, 3),
        window_pos_embed_bkg_spatial_size=(5, 5),
        d_model=32,
    )
    feat_diff, pos_diff = max_diffs(cfg, 256, batch=2)
    assert max(feat_diff) <= 1e-5
    assert max(pos_diff) <= 1e-6


def test_base_plus_shaped_multi_head_parity() -> None:
    # base_plus hyper-parameters (2 heads doubling per stage, 112 wide, windows 8/4/14/7, 14×14 background
    # embedding), fewer blocks, at 256 px: windows 14 and 7 exceed the 16×16 and 8×8 grids and are padded.
    bp = CONFIGS["sam2.1_hiera_base_plus"].trunk
    cfg = custom_config(
        image_size=256,
        embed_dim=bp.embed_dim,
        num_heads=bp.num_heads,
        stages=(2, 3, 5, 2),
        global_att_blocks=(6, 9),
        window_spec=bp.window_spec,
        window_pos_embed_bkg_spatial_size=bp.window_pos_embed_bkg_spatial_size,
    )
    feat_diff, pos_diff = max_diffs(cfg, 256)
    assert max(feat_diff) <= 1e-4
    assert max(pos_diff) <= 1e-6
