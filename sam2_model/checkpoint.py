"""Checkpoint I/O in the official layout: `torch.save({"model": state_dict}, path)`.

Loading is strict and never unpickles code (`weights_only=True`). Every failure is a `CheckpointError` whose
message names the file and what does not match.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile

import torch

from .configs import HieraConfig, SAM2Config, config_for_checkpoint, get_config, CONFIGS
from .sam2 import SAM2

_MAX_LISTED = 8


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded into the requested model."""


def build_model(config: SAM2Config | str, device: str | torch.device = "cpu") -> SAM2:
    """A randomly initialised model in eval mode."""
    config = get_config(config) if isinstance(config, str) else config
    return SAM2(config).to(device).eval()


def save_checkpoint(model: SAM2, path: str | os.PathLike, *, include_config: bool | None = None) -> None:
    """Write `{"model": state_dict}` atomically. Custom (non-official) configs are stored beside the weights
    as a plain dict under "config" so `load_model` can rebuild them; official ones keep the exact official layout."""
    path = os.fspath(path)
    payload: dict = {"model": cpu_state_dict(model)}
    if include_config if include_config is not None else model.config.name not in CONFIGS:
        payload["config"] = dataclasses.asdict(model.config)
    atomic_save(payload, path)


def cpu_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's state dict, detached and on the CPU (what a checkpoint stores)."""
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def atomic_save(payload: dict, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the same folder, then rename over `path` (never a partial file)."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_model(
    path: str | os.PathLike, config: SAM2Config | str | None = None, device: str | torch.device = "cpu"
) -> SAM2:
    """Load a SAM 2 checkpoint strictly.

    config: a SAM2Config, an official name, or None to use the config stored in the file (custom models)
    or else the one named by the official file name (e.g. "sam2.1_hiera_base_plus.pt").
    """
    path = os.fspath(path)
    payload = read_checkpoint(path)
    if config is None:
        config = _config_from_payload(payload) or _config_from_name(path)
    elif isinstance(config, str):
        config = get_config(config)
    state = payload["model"]
    model = SAM2(config)
    _check_state_dict(path, model, state)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def read_checkpoint(path: str, mmap: bool = False) -> dict:
    """The checkpoint's top-level dict, validated to hold a "model" state dict of tensors.

    mmap: memory-map the file instead of reading it (tensors are not loaded): a check that costs milliseconds.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist or is not a file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # truncated zip, random bytes, pickled code refused by weights_only, ...
        raise CheckpointError(
            f"checkpoint {path!r} is not a readable PyTorch checkpoint (truncated, corrupt, or not a "
            f"weights file): {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("model"), dict):
        raise CheckpointError(f"checkpoint {path!r} has no 'model' state dict (expected the official layout "
                              "{'model': state_dict})")
    bad = [k for k, v in payload["model"].items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"checkpoint {path!r}: 'model' holds non-tensor entries: {bad[:_MAX_LISTED]}")
    return payload


def _config_from_payload(payload: dict) -> SAM2Config | None:
    raw = payload.get("config")
    if not isinstance(raw, dict):
        return None
    fields = dict(raw)
    trunk = fields.pop("trunk")
    tuples = lambda d: {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}  # noqa: E731
    return SAM2Config(trunk=HieraConfig(**tuples(trunk)), **tuples(fields))


def _config_from_name(path: str) -> SAM2Config:
    try:
        return config_for_checkpoint(path)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None


def _shapes(model_or_state) -> dict[str, tuple[int, ...]]:
    items = model_or_state.state_dict().items() if hasattr(model_or_state, "state_dict") else model_or_state.items()
    return {k: tuple(v.shape) for k, v in items}


def _check_state_dict(path: str, model: SAM2, state: dict) -> None:
    expected, found = _shapes(model), _shapes(state)
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & found.keys() if expected[k] != found[k])
    if not (missing or unexpected or wrong):
        return
    parts = [f"checkpoint {path!r} does not match config {model.config.name!r}:"]
    if missing:
        parts.append(f"{len(missing)} missing key(s) {missing[:_MAX_LISTED]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) {unexpected[:_MAX_LISTED]}")
    if wrong:
        parts.append("shape mismatch " + ", ".join(f"{k}: file {found[k]} vs model {expected[k]}"
                                                   for k in wrong[:_MAX_LISTED]))
    match = _matching_official_config(found)
    if match:
        parts.append(f"the file's weights match the official config {match!r}")
    raise CheckpointError("; ".join(parts))


def _matching_official_config(found: dict[str, tuple[int, ...]]) -> str | None:
    """Name of the official config whose key set and shapes equal `found` (built on the meta device: free)."""
    for name, cfg in CONFIGS.items():
        with torch.device("meta"):
            if _shapes(SAM2(cfg)) == found:
                return name
    return None
