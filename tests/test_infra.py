"""Smoke tests of the test infrastructure: the oracle installs and imports, `tests.oracle` builds
reference models (official and small custom ones) and our configs agree with the reference's yaml."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from sam2_model.configs import CONFIGS, custom_config
from tests.oracle import (
    build_reference,
    build_reference_custom,
    config_values,
    randomize_,
    reference_config_path,
    reference_yaml_values,
    save_official_checkpoint,
    state_dict_shapes,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SMALL = custom_config("small_test", image_size=256, stages=(1, 2, 2, 1), global_att_blocks=(4,))


def _layout(module: torch.nn.Module) -> set[str]:
    """State-dict keys with repeated-block indices folded, e.g. "trunk.blocks.N.attn.qkv.weight"."""
    return {re.sub(r"\.\d+\.", ".N.", key) for key in module.state_dict()}


@pytest.fixture(scope="module")
def small_reference() -> torch.nn.Module:
    return build_reference_custom(SMALL)


def test_oracle_is_the_installed_package() -> None:
    import sam2

    assert not (REPO_ROOT / "sam2").exists(), "a sam2/ folder in the repository root would shadow the oracle"
    assert Path(sam2.__file__).resolve().parent.parent != REPO_ROOT
    assert "site-packages" in sam2.__file__


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_reference_config_path_exists(name: str) -> None:
    import sam2

    path = reference_config_path(name)
    assert os.path.isfile(os.path.join(os.path.dirname(sam2.__file__), path)), path


def test_reference_config_path_aliases() -> None:
    assert reference_config_path("sam2.1_hiera_b+") == "configs/sam2.1/sam2.1_hiera_b+.yaml"
    assert reference_config_path("sam2_hiera_large") == "configs/sam2/sam2_hiera_l.yaml"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_official_config_matches_reference_yaml(name: str) -> None:
    ref = reference_yaml_values(name)
    ours = config_values(CONFIGS[name], ref)
    assert ours == ref
    assert CONFIGS[name].image_embedding_size == ref["image_embedding_size"] == 64


def test_official_tiny_builds_with_postprocessing() -> None:
    ref = build_reference("sam2.1_hiera_tiny")
    assert ref.sam_image_embedding_size == CONFIGS["sam2.1_hiera_tiny"].image_embedding_size
    assert ref.sam_mask_decoder.dynamic_multimask_via_stability
    assert ref.sam_mask_decoder.dynamic_multimask_stability_delta == 0.05
    assert ref.sam_mask_decoder.dynamic_multimask_stability_thresh == 0.98
    assert not ref.training and ref.device == torch.device("cpu")
    # a small custom config has the same module tree, only with fewer / narrower repeats
    assert _layout(ref) == _layout(build_reference_custom(SMALL))


def test_custom_reference_shapes_follow_config(small_reference: torch.nn.Module) -> None:
    cfg, shapes = SMALL, state_dict_shapes(small_reference)
    t = cfg.trunk
    assert small_reference.sam_image_embedding_size == cfg.image_embedding_size == 16
    assert shapes["image_encoder.trunk.pos_embed"] == (1, t.embed_dim, *t.window_pos_embed_bkg_spatial_size)
    assert shapes["image_encoder.trunk.pos_embed_window"] == (1, t.embed_dim, t.window_spec[0], t.window_spec[0])
    assert len(small_reference.image_encoder.trunk.blocks) == sum(t.stages)
    for i, channels in enumerate(cfg.backbone_channel_list):
        assert shapes[f"image_encoder.neck.convs.{i}.conv.weight"] == (cfg.d_model, channels, 1, 1)
    assert len(small_reference.memory_attention.layers) == cfg.memory_attention_layers
    assert shapes["maskmem_tpos_enc"] == (cfg.num_maskmem, 1, 1, cfg.memory_dim)
    assert shapes["memory_encoder.out_proj.weight"] == (cfg.memory_dim, cfg.d_model, 1, 1)
    assert shapes["no_obj_embed_spatial"] == (1, cfg.memory_dim)
    head_dim = cfg.d_model // cfg.memory_attention_heads
    for layer in small_reference.memory_attention.layers:
        for attn in (layer.self_attn, layer.cross_attn_image):
            assert attn.freqs_cis.shape == (cfg.image_embedding_size**2, head_dim // 2)


def test_custom_reference_narrow_2_0() -> None:
    cfg = SMALL.replace(name="narrow", d_model=32, memory_dim=16, memory_attention_heads=2,
                        memory_attention_ff_dim=64, memory_attention_layers=2, fuser_layers=1)  # fmt: skip
    cfg = cfg.replace(no_obj_embed_spatial=False, add_tpos_enc_to_obj_ptrs=False,
                      proj_tpos_enc_in_obj_ptrs=False, use_signed_tpos_enc_to_obj_ptrs=False)  # fmt: skip
    assert cfg.version == "2.0"
    shapes = state_dict_shapes(build_reference_custom(cfg))
    assert "no_obj_embed_spatial" not in shapes and "obj_ptr_tpos_proj.weight" not in shapes
    assert shapes["memory_attention.layers.1.linear1.weight"] == (64, 32)
    assert shapes["memory_attention.layers.0.cross_attn_image.k_proj.weight"] == (32, 16)
    assert shapes["memory_encoder.fuser.layers.0.dwconv.weight"] == (32, 1, 7, 7)
    assert "memory_encoder.fuser.layers.1.dwconv.weight" not in shapes
    assert shapes["sam_prompt_encoder.no_mask_embed.weight"] == (1, 32)


def test_reference_rejects_what_it_cannot_express() -> None:
    with pytest.raises(ValueError, match="query-pooling"):
        build_reference_custom(custom_config(stages=(1, 1, 1, 1), global_att_blocks=(2,)))
    with pytest.raises(ValueError, match="decoder_depth"):
        build_reference_custom(SMALL.replace(decoder_depth=1))


def test_video_reference_overrides_win() -> None:
    default = build_reference_custom(SMALL, video=True)
    assert type(default).__name__ == "SAM2VideoPredictor"
    assert default.fill_hole_area == 8 and default.binarize_mask_from_pts_for_mem_enc
    changed = build_reference(SMALL.replace(dynamic_multimask_stability_thresh=0.5), video=True,
                              overrides=["++model.max_cond_frames_in_attn=2"], fill_hole_area=0)  # fmt: skip
    assert changed.fill_hole_area == 0 and changed.max_cond_frames_in_attn == 2
    assert changed.sam_mask_decoder.dynamic_multimask_stability_thresh == 0.5


def test_randomize_is_deterministic_and_non_degenerate(small_reference: torch.nn.Module) -> None:
    first = {k: v.clone() for k, v in randomize_(small_reference, seed=3).state_dict().items()}
    second = randomize_(small_reference, seed=3).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    randomize_(small_reference, seed=4)
    for name, p in small_reference.named_parameters():
        assert not torch.equal(p, first[name]), f"{name} ignores the seed"
        if p.numel() > 1:
            assert p.std() > 0.01, f"{name} is nearly constant"
    gammas = [p for n, p in small_reference.named_parameters() if n.endswith("gamma")]
    assert gammas and all(g.abs().mean() > 0.5 for g in gammas)

    randomize_(small_reference, seed=0)
    with torch.no_grad():
        out = small_reference.forward_image(torch.randn(1, 3, SMALL.image_size, SMALL.image_size))
    for feature in out["backbone_fpn"]:
        assert torch.isfinite(feature).all() and 0.1 < feature.std() < 10


def test_official_checkpoint_round_trip(small_reference: torch.nn.Module, checkpoint_dir: Path) -> None:
    from sam2.build_sam import _load_checkpoint

    randomize_(small_reference, seed=5)
    path = save_official_checkpoint(small_reference.state_dict(), checkpoint_dir / "small_test.pt")
    assert set(torch.load(path, map_location="cpu", weights_only=True)) == {"model"}
    fresh = build_reference_custom(SMALL)
    _load_checkpoint(fresh, path)  # the reference's own strict loader
    expected = small_reference.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in fresh.state_dict().items())
