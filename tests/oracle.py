"""Test-only helpers around Meta's reference SAM 2 (`sam2==1.1.0`), the oracle of every parity test.

The reference is built on the CPU with random weights, either from its own yaml for an official size
(`build_reference("sam2.1_hiera_tiny")`) or from one of our configs, small ones included, through hydra
overrides (`build_reference_custom(custom_config(...))`). `randomize_` then gives every parameter a
deterministic, non-degenerate value so that a strict state-dict copy into our model exercises all of it.
`ReferenceImagePredictor` runs the reference's image-predictor steps (for parity tests and bench/), its mask
post-processing included (`oracle_cc.reference_extension` supplies the CUDA extension that needs).
"""
from __future__ import annotations

import dataclasses
import functools
import os
import sys
import types
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from sam2_model.configs import SAM2Config, get_config
from sam2_model.image_predictor import preprocess_image

_SIZE_LETTERS = {"tiny": "t", "small": "s", "base_plus": "b+", "large": "l"}

# Values the reference hard-codes (SAM2Base._build_sam_heads, Hiera's blocks): a config that changes
# them cannot be expressed as a reference model.
_FIXED_IN_REFERENCE = ("decoder_depth", "decoder_heads", "decoder_mlp_dim", "num_multimask_outputs")


def reference_config_path(name: str) -> str:
    """Reference yaml for one of our official config names, e.g.
    "sam2.1_hiera_tiny" -> "configs/sam2.1/sam2.1_hiera_t.yaml" (aliases as in `get_config`)."""
    cfg = get_config(name)
    size = cfg.name.rsplit("_hiera_", 1)[1]
    prefix = "sam2.1" if cfg.version == "2.1" else "sam2"
    return f"configs/{prefix}/{prefix}_hiera_{_SIZE_LETTERS[size]}.yaml"


def _fmt(value: Any) -> str:
    """A Python value as hydra override syntax."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(_fmt(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _postprocessing_overrides(
    video: bool, stability_delta: float = 0.05, stability_thresh: float = 0.98
) -> list[str]:
    """What the reference's build functions add with apply_postprocessing=True (same values by default).

    The reference appends them AFTER the caller's overrides, so a caller could not change them; we
    build with apply_postprocessing=False and put them first instead.
    """
    extra = "++model.sam_mask_decoder_extra_args"
    overrides = [
        f"{extra}.dynamic_multimask_via_stability=true",
        f"{extra}.dynamic_multimask_stability_delta={_fmt(float(stability_delta))}",
        f"{extra}.dynamic_multimask_stability_thresh={_fmt(float(stability_thresh))}",
    ]
    if video:
        overrides += ["++model.binarize_mask_from_pts_for_mem_enc=true", "++model.fill_hole_area=8"]
    return overrides


def _build(config_file: str, video: bool, overrides: list[str]) -> nn.Module:
    from sam2.build_sam import build_sam2, build_sam2_video_predictor

    build = build_sam2_video_predictor if video else build_sam2
    return build(
        config_file, ckpt_path=None, device="cpu", hydra_overrides_extra=overrides, apply_postprocessing=False
    )


def _model_kwargs_overrides(model_kwargs: dict[str, Any]) -> list[str]:
    return [f"++model.{key}={_fmt(value)}" for key, value in model_kwargs.items()]


def build_reference(
    name: str | SAM2Config, video: bool = False, overrides: Sequence[str] = (), **model_kwargs: Any
) -> nn.Module:
    """The reference model for an official config name (or any SAM2Config, via `build_reference_custom`).

    video=False: `build_sam2` (SAM2Base, as the reference's image predictor builds it, with the dynamic
    multimask fallback); video=True: `build_sam2_video_predictor` (SAM2VideoPredictor). Always CPU, no
    checkpoint, eval mode. `overrides` are raw hydra overrides ("++model.fill_hole_area=0"); keyword
    arguments are shorthand for `++model.<key>=<value>` (fill_hole_area=0). Both are applied last.
    """
    if isinstance(name, SAM2Config):
        return build_reference_custom(name, video=video, overrides=overrides, **model_kwargs)
    cfg = get_config(name)
    return _build(
        reference_config_path(name),
        video,
        _postprocessing_overrides(
            video, cfg.dynamic_multimask_stability_delta, cfg.dynamic_multimask_stability_thresh
        )
        + list(overrides)
        + _model_kwargs_overrides(model_kwargs),
    )


def reference_overrides(cfg: SAM2Config) -> list[str]:
    """Hydra overrides that turn the reference's tiny yaml of the same version into `cfg`."""
    defaults = SAM2Config(name="defaults")
    for key in _FIXED_IN_REFERENCE:
        if getattr(cfg, key) != getattr(defaults, key):
            raise ValueError(f"the reference hard-codes {key}={getattr(defaults, key)}; got {getattr(cfg, key)}")
    for key in ("mlp_ratio", "q_stride"):  # q_stride: hydra would pass a list where a tuple is needed
        if getattr(cfg.trunk, key) != getattr(defaults.trunk, key):
            raise ValueError(f"the reference needs the Hiera {key}={getattr(defaults.trunk, key)}")

    t = cfg.trunk
    stage_starts = [sum(t.stages[:i]) for i in range(1, len(t.stages))][: t.q_pool]
    if set(stage_starts) & set(t.global_att_blocks):
        raise ValueError(
            f"the reference's Hiera fails when a global-attention block is a query-pooling block (the first "
            f"block of a pooled stage): global_att_blocks={t.global_att_blocks}, pooling blocks={stage_starts}"
        )
    enc = "++model.image_encoder"
    mem_att = "++model.memory_attention"
    mem_enc = "++model.memory_encoder"
    feat = cfg.image_embedding_size
    trunk_fields = (
        "embed_dim", "num_heads", "stages", "global_att_blocks", "window_spec",
        "window_pos_embed_bkg_spatial_size", "q_pool", "dim_mul", "head_mul", "drop_path_rate",
    )  # fmt: skip
    o = [f"{enc}.trunk.{key}={_fmt(getattr(t, key))}" for key in trunk_fields]
    o += [
        f"{enc}.scalp={cfg.scalp}",
        f"{enc}.neck.d_model={cfg.d_model}",
        f"{enc}.neck.position_encoding.num_pos_feats={cfg.d_model}",
        f"{enc}.neck.backbone_channel_list={_fmt(cfg.backbone_channel_list)}",
        f"{enc}.neck.fpn_top_down_levels={_fmt(cfg.fpn_top_down_levels)}",
        f"{mem_att}.d_model={cfg.d_model}",
        f"{mem_att}.num_layers={cfg.memory_attention_layers}",
        f"{mem_att}.layer.d_model={cfg.d_model}",
        f"{mem_att}.layer.dim_feedforward={cfg.memory_attention_ff_dim}",
        f"{mem_att}.layer.dropout={_fmt(cfg.dropout)}",
    ]
    for attn in ("self_attention", "cross_attention"):
        o += [
            f"{mem_att}.layer.{attn}.embedding_dim={cfg.d_model}",
            f"{mem_att}.layer.{attn}.num_heads={cfg.memory_attention_heads}",
            f"{mem_att}.layer.{attn}.rope_theta={_fmt(cfg.rope_theta)}",
            f"{mem_att}.layer.{attn}.feat_sizes={_fmt((feat, feat))}",
            f"{mem_att}.layer.{attn}.dropout={_fmt(cfg.dropout)}",
        ]
    o += [
        f"{mem_att}.layer.cross_attention.kv_in_dim={cfg.memory_dim}",
        f"{mem_enc}.out_dim={cfg.memory_dim}",
        f"{mem_enc}.in_dim={cfg.d_model}",
        f"{mem_enc}.position_encoding.num_pos_feats={cfg.memory_dim}",
        f"{mem_enc}.mask_downsampler.embed_dim={cfg.d_model}",
        f"{mem_enc}.fuser.layer.dim={cfg.d_model}",
        f"{mem_enc}.fuser.num_layers={cfg.fuser_layers}",
    ]
    model_fields = (
        "image_size", "backbone_stride", "num_maskmem", "max_obj_ptrs_in_encoder", "sigmoid_scale_for_mem_enc",
        "sigmoid_bias_for_mem_enc", "no_obj_embed_spatial", "add_tpos_enc_to_obj_ptrs",
        "proj_tpos_enc_in_obj_ptrs", "use_signed_tpos_enc_to_obj_ptrs",
    )  # fmt: skip
    o += _model_kwargs_overrides({key: getattr(cfg, key) for key in model_fields})
    return o


def build_reference_custom(
    cfg: SAM2Config, video: bool = False, overrides: Sequence[str] = (), **model_kwargs: Any
) -> nn.Module:
    """The reference model shaped by any of our configs (official or custom), CPU, random weights.

    Starts from the reference's tiny yaml of the config's version and overrides every field our config
    sets; see `build_reference` for `video`, `overrides` and keyword arguments.
    """
    base = reference_config_path("sam2.1_hiera_tiny" if cfg.version == "2.1" else "sam2_hiera_tiny")
    return _build(
        base,
        video,
        _postprocessing_overrides(
            video, cfg.dynamic_multimask_stability_delta, cfg.dynamic_multimask_stability_thresh
        )
        + reference_overrides(cfg)
        + list(overrides)
        + _model_kwargs_overrides(model_kwargs),
    )


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)) or (
        "Norm" in type(module).__name__
    )


def _init_stats(module: nn.Module, name: str, p: torch.Tensor) -> tuple[float, float]:
    """(mean, std) of the normal distribution for parameter `name` of `module`."""
    if _is_norm(module):
        return (1.0, 0.1) if name == "weight" else (0.0, 0.05)
    if name.endswith("bias"):
        return 0.0, 0.05
    if name == "gamma":  # layer scale: its 1e-6 init would silence the whole block
        return 1.0, 0.1
    if isinstance(module, nn.modules.conv._ConvTransposeNd) and name == "weight":
        kernel = torch.tensor(module.kernel_size).prod().item()
        stride = torch.tensor(module.stride).prod().item()
        fan_in = max(1.0, p.shape[0] * kernel / stride)
        return 0.0, fan_in**-0.5
    if isinstance(module, nn.Embedding):
        return 0.0, 0.5
    if name.endswith("weight") and p.dim() >= 2:  # Linear, Conv: keep activations O(1)
        return 0.0, p[0].numel() ** -0.5
    return 0.0, 0.5  # free-standing embeddings, tokens, positional tables


@torch.no_grad()
def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Re-draw every parameter of `module` in place, deterministically for a given seed and module tree.

    Normal draws, (mean, std): norm weights (1, 0.1), biases (0, 0.05), layer-scale `gamma` (1, 0.1),
    Linear/Conv weights (0, 1/sqrt(fan_in)), embeddings and other free parameters (0, 0.5).
    Buffers are left alone.
    """
    generator = torch.Generator().manual_seed(seed)
    for module_ in module.modules():
        for name, p in module_.named_parameters(recurse=False):
            mean, std = _init_stats(module_, name, p)
            p.normal_(mean, std, generator=generator)
    return module


@functools.cache
def reference_transforms_class() -> type:
    """The reference's `SAM2Transforms` (its mask post-processing), imported without torchvision: the module
    imports three torchvision transforms that only its constructor uses, so placeholders stand in for them
    during the import when torchvision is absent (and are removed again)."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        stub = types.ModuleType("torchvision")
        stub.transforms = types.ModuleType("torchvision.transforms")
        for name in ("Normalize", "Resize", "ToTensor"):
            setattr(stub.transforms, name, type(name, (), {}))
        sys.modules.update({"torchvision": stub, "torchvision.transforms": stub.transforms})
        try:
            from sam2.utils.transforms import SAM2Transforms
        finally:
            sys.modules.pop("torchvision", None)
            sys.modules.pop("torchvision.transforms", None)
    else:
        from sam2.utils.transforms import SAM2Transforms
    return SAM2Transforms


def reference_postprocess_masks(low_res: torch.Tensor, orig_hw: tuple[int, int], mask_threshold: float = 0.0,
                                max_hole_area: float = 0.0, max_sprinkle_area: float = 0.0) -> torch.Tensor:
    """The reference's `SAM2Transforms.postprocess_masks` (hole filling, sprinkle removal, upscaling to the
    image) on B×C×h×w low-res logits, run unbound on the attributes it reads."""
    attrs = types.SimpleNamespace(mask_threshold=mask_threshold, max_hole_area=max_hole_area,
                                  max_sprinkle_area=max_sprinkle_area)
    return reference_transforms_class().postprocess_masks(attrs, low_res, orig_hw)


class ReferenceImagePredictor:
    """The reference SAM2ImagePredictor's steps, on the reference model's own methods and the reference's own
    mask post-processing (its predictor module imports torchvision, which the CPU test environment lacks).
    Input preprocessing is shared with ours."""

    def __init__(self, ref, image: np.ndarray, max_hole_area: float = 0.0, max_sprinkle_area: float = 0.0):
        self.ref = ref
        self.max_hole_area, self.max_sprinkle_area = max_hole_area, max_sprinkle_area
        self.orig_hw = image.shape[:2]
        x = preprocess_image(image, ref.image_size)
        backbone_out = ref.forward_image(x)
        _, feats, _, sizes = ref._prepare_backbone_features(backbone_out)
        feats[-1] = feats[-1] + ref.no_mem_embed
        maps = [f.permute(1, 2, 0).view(1, -1, *s) for f, s in zip(feats, sizes)]
        self.embed, self.high_res = maps[-1], maps[:-1]

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output=True):
        h, w = self.orig_hw
        # the reference's transform_coords: normalise by the image size, then scale to the model input
        to_input = lambda xy: xy / torch.tensor([w, h]) * self.ref.image_size  # noqa: E731
        points = None
        if point_coords is not None:
            points = (to_input(torch.as_tensor(point_coords, dtype=torch.float))[None],
                      torch.as_tensor(point_labels, dtype=torch.int)[None])
        if box is not None:
            box_coords = to_input(torch.as_tensor(box, dtype=torch.float).reshape(-1, 2, 2))
            box_labels = torch.tensor([[2, 3]], dtype=torch.int).repeat(box_coords.shape[0], 1)
            if points is not None:
                points = (torch.cat([box_coords, points[0]], 1), torch.cat([box_labels, points[1]], 1))
            else:
                points = (box_coords, box_labels)
        masks = None if mask_input is None else torch.as_tensor(mask_input, dtype=torch.float)[None]
        sparse, dense = self.ref.sam_prompt_encoder(points=points, boxes=None, masks=masks)
        low_res, iou, _, _ = self.ref.sam_mask_decoder(
            image_embeddings=self.embed, image_pe=self.ref.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask_output,
            repeat_image=points is not None and points[0].shape[0] > 1, high_res_features=self.high_res)
        full = reference_postprocess_masks(low_res, self.orig_hw, 0.0, self.max_hole_area, self.max_sprinkle_area)
        # like the reference: drop the batch dimension only for a single prompt
        return full.squeeze(0).numpy(), iou.squeeze(0).numpy(), low_res.clamp(-32, 32).squeeze(0).numpy()


def save_official_checkpoint(state_dict: dict[str, torch.Tensor], path: str | os.PathLike) -> str:
    """Write `state_dict` in the official checkpoint layout, {"model": state_dict}; returns the path."""
    torch.save({"model": state_dict}, path)
    return os.fspath(path)


def state_dict_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a module's state dict (for comparing layouts)."""
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


def reference_yaml_values(name: str) -> dict[str, Any]:
    """The values of an official reference yaml that our config mirrors, without building the model.

    Keys are SAM2Config / HieraConfig field names; entries the yaml leaves out take the defaults of the
    reference classes' constructors.
    """
    import inspect

    from hydra import compose
    from omegaconf import OmegaConf
    from sam2.modeling.backbones.hieradet import Hiera
    from sam2.modeling.sam2_base import SAM2Base

    def with_defaults(cls: type, given: dict[str, Any]) -> dict[str, Any]:
        params = inspect.signature(cls.__init__).parameters.values()
        values = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
        values.update(given)
        return values

    model = OmegaConf.to_container(compose(config_name=reference_config_path(name)).model, resolve=True)
    trunk = with_defaults(Hiera, model["image_encoder"]["trunk"])
    base = with_defaults(SAM2Base, model)
    hiera_fields = {f.name for f in dataclasses.fields(get_config(name).trunk)}
    values: dict[str, Any] = {f"trunk.{k}": _tuples(v) for k, v in trunk.items() if k in hiera_fields}
    values.update(
        image_size=base["image_size"],
        backbone_stride=base["backbone_stride"],
        image_embedding_size=base["image_size"] // base["backbone_stride"],
        backbone_channel_list=tuple(model["image_encoder"]["neck"]["backbone_channel_list"]),
        d_model=model["image_encoder"]["neck"]["d_model"],
        memory_dim=model["memory_encoder"]["out_dim"],
        num_maskmem=base["num_maskmem"],
        memory_attention_layers=model["memory_attention"]["num_layers"],
        memory_attention_ff_dim=model["memory_attention"]["layer"]["dim_feedforward"],
        fuser_layers=model["memory_encoder"]["fuser"]["num_layers"],
        **{
            key: base[key]
            for key in (
                "max_obj_ptrs_in_encoder", "sigmoid_scale_for_mem_enc", "sigmoid_bias_for_mem_enc",
                "no_obj_embed_spatial", "add_tpos_enc_to_obj_ptrs", "proj_tpos_enc_in_obj_ptrs",
                "use_signed_tpos_enc_to_obj_ptrs",
            )  # fmt: skip
        },
    )
    return values


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def config_values(cfg: SAM2Config, keys: Iterable[str]) -> dict[str, Any]:
    """Our config's values for `reference_yaml_values` keys ("trunk.embed_dim", "image_embedding_size", ...)."""
    out = {}
    for key in keys:
        obj: Any = cfg
        for part in key.split("."):
            obj = getattr(obj, part)
        out[key] = obj
    return out
