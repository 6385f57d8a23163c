"""Checkpoint I/O: the official layout loads strictly for all 8 configs; every bad file fails clearly."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

from oracle import build_reference, save_official_checkpoint, state_dict_shapes
from sam2_model import CONFIGS, CheckpointError, SAM2, build_model, custom_config, load_model, save_checkpoint


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_reference_state_dict_loads_strictly(name):
    """Key names and shapes equal the reference's, and its state dict loads strictly into ours."""
    ref_state = build_reference(name).state_dict()
    with torch.device("meta"):
        ours = SAM2(CONFIGS[name])
    assert state_dict_shapes(ours) == {k: tuple(v.shape) for k, v in ref_state.items()}
    ours.load_state_dict(ref_state, strict=True, assign=True)
    assert torch.equal(ours.image_encoder.trunk.pos_embed, ref_state["image_encoder.trunk.pos_embed"])


SMALL = custom_config("small_test", image_size=128, d_model=32, memory_dim=16, decoder_mlp_dim=64,
                      memory_attention_ff_dim=64, memory_attention_layers=1)


@pytest.fixture
def small_model():
    torch.manual_seed(0)
    return build_model(SMALL)


def test_save_and_load_round_trip(small_model, tmp_path):
    path = tmp_path / "custom.pt"
    save_checkpoint(small_model, path)
    payload = torch.load(path, weights_only=True)
    assert set(payload) == {"model", "config"}  # custom configs travel with the weights
    loaded = load_model(path)
    assert loaded.config == SMALL
    for (k, a), (_, b) in zip(small_model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


def test_official_name_gives_config_and_official_layout(tmp_path):
    torch.manual_seed(0)
    model = build_model("sam2_hiera_tiny")
    path = tmp_path / "sam2_hiera_tiny.pt"
    save_checkpoint(model, path)
    assert set(torch.load(path, weights_only=True)) == {"model"}
    assert load_model(path).config == CONFIGS["sam2_hiera_tiny"]


def test_wrong_config_names_file_and_mismatch(tmp_path):
    """2.1 weights under a 2.0 file name: the two SAM 2.1 tensors are named, and the right config suggested."""
    state = build_model("sam2.1_hiera_tiny").state_dict()
    path = save_official_checkpoint(state, tmp_path / "sam2_hiera_tiny.pt")
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    msg = str(err.value)
    assert path in msg and "unexpected" in msg
    assert "no_obj_embed_spatial" in msg and "obj_ptr_tpos_proj.weight" in msg
    assert "sam2.1_hiera_tiny" in msg


def test_missing_and_shape_mismatch(small_model, tmp_path):
    state = small_model.state_dict()
    del state["no_mem_embed"]
    state["maskmem_tpos_enc"] = torch.zeros(3, 1, 1, 16)
    path = save_official_checkpoint(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"missing key\(s\) \['no_mem_embed'\].*maskmem_tpos_enc"):
        load_model(path, config=SMALL)


def test_truncated_file(small_model, tmp_path):
    path = tmp_path / "trunc.pt"
    save_checkpoint(small_model, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="trunc.pt.*not a readable PyTorch checkpoint"):
        load_model(path, config=SMALL)


@pytest.mark.parametrize("content", [b"", b"hello, I am not a checkpoint\n", os.urandom(4096)])
def test_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="sam2.1_hiera_tiny.pt"):
        load_model(path)


def test_wrong_layout(tmp_path):
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="no 'model' state dict"):
        load_model(path)


class _Exploit:
    def __reduce__(self):
        return (open, ("/tmp/sam2_model_pwned", "w"))


def test_pickled_code_is_not_executed(tmp_path):
    marker = "/tmp/sam2_model_pwned"
    if os.path.exists(marker):
        os.unlink(marker)
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": _Exploit()}, f)
    with pytest.raises(CheckpointError):
        load_model(path)
    assert not os.path.exists(marker)


def test_missing_file_and_unknown_name(tmp_path, small_model):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope.pt")
    path = save_official_checkpoint(small_model.state_dict(), tmp_path / "my_weights.pt")
    with pytest.raises(CheckpointError, match="cannot infer the model config.*my_weights.pt"):
        load_model(path)
