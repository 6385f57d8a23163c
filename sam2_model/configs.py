"""Model configurations: the eight official SAM 2 / SAM 2.1 sizes, plus custom small ones.

Plain frozen dataclasses, no hydra. A config fully determines the module tree and therefore the
checkpoint's key set; `config_for_checkpoint` maps an official file name to its config.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field


@dataclass(frozen=True)
class HieraConfig:
    """Hiera trunk: a 4-stage hierarchical ViT with windowed attention and Q-pooling."""

    embed_dim: int = 96
    num_heads: int = 1
    stages: tuple[int, ...] = (1, 2, 7, 2)
    global_att_blocks: tuple[int, ...] = (5, 7, 9)
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (7, 7)
    q_pool: int = 3  # number of stage transitions that pool queries
    q_stride: tuple[int, int] = (2, 2)
    dim_mul: float = 2.0
    head_mul: float = 2.0
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.0

    @property
    def stage_dims(self) -> tuple[int, ...]:
        """Channel width of each stage, finest first (e.g. 96, 192, 384, 768)."""
        return tuple(int(self.embed_dim * self.dim_mul**i) for i in range(len(self.stages)))


@dataclass(frozen=True)
class SAM2Config:
    """Everything needed to build a SAM 2 model. Defaults are the official values."""

    name: str
    trunk: HieraConfig = field(default_factory=HieraConfig)
    image_size: int = 1024
    backbone_stride: int = 16
    d_model: int = 256  # FPN / prompt encoder / mask decoder / memory attention width
    fpn_top_down_levels: tuple[int, ...] = (2, 3)
    scalp: int = 1  # number of coarsest FPN levels discarded
    # mask decoder
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    num_multimask_outputs: int = 3
    # memory
    memory_dim: int = 64
    num_maskmem: int = 7
    memory_attention_layers: int = 4
    memory_attention_ff_dim: int = 2048
    memory_attention_heads: int = 1
    rope_theta: float = 10000.0
    fuser_layers: int = 2
    max_obj_ptrs_in_encoder: int = 16
    sigmoid_scale_for_mem_enc: float = 20.0
    sigmoid_bias_for_mem_enc: float = -10.0
    dropout: float = 0.1  # memory attention dropout (training only)
    # SAM 2.1 additions
    no_obj_embed_spatial: bool = True
    add_tpos_enc_to_obj_ptrs: bool = True
    proj_tpos_enc_in_obj_ptrs: bool = True
    use_signed_tpos_enc_to_obj_ptrs: bool = True
    # dynamic multimask fallback (single-mask output unstable -> best multimask output)
    dynamic_multimask_stability_delta: float = 0.05
    dynamic_multimask_stability_thresh: float = 0.98

    @property
    def image_embedding_size(self) -> int:
        """Side of the stride-16 feature map (64 for a 1024 input)."""
        return self.image_size // self.backbone_stride

    @property
    def backbone_channel_list(self) -> tuple[int, ...]:
        """Trunk output channels, coarsest first, as the FPN neck consumes them."""
        return tuple(reversed(self.trunk.stage_dims))

    @property
    def version(self) -> str:
        return "2.1" if self.no_obj_embed_spatial else "2.0"

    def replace(self, **changes) -> "SAM2Config":
        return dataclasses.replace(self, **changes)


_SIZES = {
    "tiny": HieraConfig(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9)),
    "small": HieraConfig(embed_dim=96, num_heads=1, stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13)),
    "base_plus": HieraConfig(
        embed_dim=112,
        num_heads=2,
        stages=(2, 3, 16, 3),
        global_att_blocks=(12, 16, 20),
        window_pos_embed_bkg_spatial_size=(14, 14),
    ),
    "large": HieraConfig(
        embed_dim=144,
        num_heads=2,
        stages=(2, 6, 36, 4),
        global_att_blocks=(23, 33, 43),
        window_spec=(8, 4, 16, 8),
    ),
}

_SAM2_0_FLAGS = dict(
    no_obj_embed_spatial=False,
    add_tpos_enc_to_obj_ptrs=False,
    proj_tpos_enc_in_obj_ptrs=False,
    use_signed_tpos_enc_to_obj_ptrs=False,
)


def _official() -> dict[str, SAM2Config]:
    configs = {}
    for size, trunk in _SIZES.items():
        configs[f"sam2.1_hiera_{size}"] = SAM2Config(name=f"sam2.1_hiera_{size}", trunk=trunk)
        configs[f"sam2_hiera_{size}"] = SAM2Config(name=f"sam2_hiera_{size}", trunk=trunk, **_SAM2_0_FLAGS)
    return configs


CONFIGS: dict[str, SAM2Config] = _official()
"""The eight official configurations, keyed by checkpoint stem (e.g. "sam2.1_hiera_tiny")."""

_ALIASES = {"t": "tiny", "s": "small", "b+": "base_plus", "b": "base_plus", "l": "large"}


def get_config(name: str) -> SAM2Config:
    """Look up an official config by name: "sam2.1_hiera_tiny", "sam2.1_hiera_t", "sam2_hiera_b+"..."""
    stem = name[:-5] if name.endswith(".yaml") else name
    stem = os.path.basename(stem)
    if stem not in CONFIGS:
        prefix, _, size = stem.rpartition("_")
        stem = f"{prefix}_{_ALIASES.get(size, size)}"
    if stem not in CONFIGS:
        raise ValueError(f"unknown SAM 2 config {name!r}; known: {', '.join(sorted(CONFIGS))}")
    return CONFIGS[stem]


def config_for_checkpoint(path: str | os.PathLike) -> SAM2Config:
    """Infer the config from an official checkpoint file name such as "sam2.1_hiera_large.pt"."""
    stem = os.path.splitext(os.path.basename(os.fspath(path)))[0]
    try:
        return get_config(stem)
    except ValueError:
        raise ValueError(
            f"cannot infer the model config from the file name {os.fspath(path)!r}: expected an official "
            f"name ({', '.join(sorted(CONFIGS))}) or pass config= explicitly"
        ) from None


def custom_config(
    name: str = "custom",
    *,
    embed_dim: int = 16,
    num_heads: int = 1,
    stages: tuple[int, ...] = (1, 1, 2, 1),
    global_att_blocks: tuple[int, ...] = (3,),
    window_spec: tuple[int, ...] = (8, 4, 4, 2),
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (4, 4),
    base: str = "sam2.1_hiera_tiny",
    **overrides,
) -> SAM2Config:
    """A smaller model of the same architecture (for tests, benchmarks and the micro demo model).

    Trunk arguments shape the Hiera; any other SAM2Config field (image_size, d_model, memory_dim,
    num_maskmem, ...) can be overridden by keyword. SAM 2.0 vs 2.1 behaviour follows `base`.
    """
    trunk = HieraConfig(
        embed_dim=embed_dim,
        num_heads=num_heads,
        stages=stages,
        global_att_blocks=global_att_blocks,
        window_spec=window_spec,
        window_pos_embed_bkg_spatial_size=window_pos_embed_bkg_spatial_size,
    )
    return get_config(base).replace(name=name, trunk=trunk, **overrides)
