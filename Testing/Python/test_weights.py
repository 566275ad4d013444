"""Weight files: safe reading, official key normalisation, strict loading with a key report, checkpoint discovery."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from medsyn.errors import MedSynError
from medsyn.models.weights import (STALE_DIFFUSION_BUFFERS, find_checkpoint_weights, load_state_dict_strict,
                                   normalize_official_state_dict, read_weight_file, sha256_file)
from medsyn.networks.config import from_official_kwargs

SHARED = [f"mid_spatial_attn{k}.fn.fn.fn.{name}.weight" for k in (2, 3, 4) for name in ("to_qkv", "to_out")]


class NotATensor:
    """A pickled object that weights_only loading must refuse."""


@pytest.fixture
def plain_state(fixture_dir) -> dict[str, torch.Tensor]:
    return load_file(fixture_dir / "lowres_state_dict.safetensors")


@pytest.fixture
def lowres_net(fixture_dir):
    manifest = json.loads((fixture_dir / "manifest.json").read_text())
    return from_official_kwargs("lowres", manifest["models"]["lowres"]["constructor_kwargs"]).build()


def test_prefixes_stripped_including_nested_wrappers(plain_state, lowres_net):
    wrapped = {f"module.denoise_fn.{key}": value for key, value in plain_state.items()}
    state, notes = normalize_official_state_dict(wrapped, "lowres")
    assert list(state) == list(plain_state)
    assert any("prefix" in note for note in notes)
    load_state_dict_strict(lowres_net, state, "wrapped")
    assert torch.equal(lowres_net.null_cond_emb, plain_state["null_cond_emb"])


def test_plain_state_needs_no_normalisation(plain_state):
    state, notes = normalize_official_state_dict(plain_state, "lowres")
    assert state.keys() == plain_state.keys() and notes == []


def test_stale_diffusion_buffers_are_dropped(plain_state, lowres_net):
    stale = {name: torch.zeros(1000) for name in sorted(STALE_DIFFUSION_BUFFERS)}
    checkpoint = {**stale, **{f"denoise_fn.{key}": value for key, value in plain_state.items()}}
    state, notes = normalize_official_state_dict(checkpoint, "lowres")
    assert not STALE_DIFFUSION_BUFFERS & state.keys()
    assert any(f"dropped {len(stale)} stale" in note for note in notes)
    load_state_dict_strict(lowres_net, state, "cg checkpoint")


def test_dropped_shared_attention_keys_are_tied(plain_state, lowres_net):
    partial = {key: value for key, value in plain_state.items() if key not in SHARED}
    state, notes = normalize_official_state_dict(partial, "lowres")
    assert any("tied 6" in note for note in notes)
    load_state_dict_strict(lowres_net, state, "safetensors save")
    for key in SHARED:
        assert torch.equal(lowres_net.state_dict()[key], plain_state[key])


def test_disagreeing_shared_attention_copies_are_refused(plain_state):
    broken = dict(plain_state)
    broken[SHARED[0]] = broken[SHARED[0]] + 1
    with pytest.raises(MedSynError, match="mid_spatial_attn2.*differs"):
        normalize_official_state_dict(broken, "lowres")


def test_bin_file_read_with_weights_only(tmp_path, plain_state):
    path = tmp_path / "pytorch_model.bin"
    torch.save(plain_state, path)
    read = read_weight_file(path)
    assert read.keys() == plain_state.keys()
    assert all(torch.equal(read[key], plain_state[key]) for key in plain_state)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.bin"
    torch.save({"payload": NotATensor()}, path)
    with pytest.raises(MedSynError, match="evil.bin"):
        read_weight_file(path)


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
def test_corrupt_file_names_the_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(MedSynError, match=name):
        read_weight_file(path)


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(MedSynError, match="not found"):
        read_weight_file(tmp_path / "absent.safetensors")
    (tmp_path / "weights.ckpt").write_bytes(b"x")
    with pytest.raises(MedSynError, match="unsupported"):
        read_weight_file(tmp_path / "weights.ckpt")


def test_wrong_shape_reports_key_and_both_shapes(plain_state, lowres_net):
    bad = dict(plain_state)
    bad["init_conv.bias"] = torch.zeros(5)
    with pytest.raises(MedSynError, match=r"init_conv\.bias: file \(5,\) vs network \(4,\)"):
        load_state_dict_strict(lowres_net, bad, "bad.safetensors")


def test_missing_and_unexpected_keys_are_reported_briefly(plain_state, lowres_net):
    bad = {key: value for key, value in plain_state.items() if not key.startswith("ups.")}
    bad["extra.weight"] = torch.zeros(1)
    with pytest.raises(MedSynError) as info:
        load_state_dict_strict(lowres_net, bad, "partial.safetensors")
    message = str(info.value)
    assert message.startswith("partial.safetensors does not fit LowResUNet3D")
    assert "missing [ups.0.0.mlp.1.weight" in message and "unexpected [extra.weight]" in message
    assert "\n" not in message and len(message) < 1000


def _write(path, tensors):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))


def test_accelerate_checkpoint_selection(tmp_path):
    results = tmp_path / "results"
    for step in (2, 10):
        _write(results / f"{step}_ckpt" / "model.safetensors", {"w": torch.full((1,), float(step))})
        _write(results / f"{step}_ckpt" / "model_1.safetensors", {"w": torch.full((1,), -float(step))})
    assert find_checkpoint_weights(results) == results / "10_ckpt" / "model_1.safetensors"  # numeric, not lexical
    assert find_checkpoint_weights(results, "online") == results / "10_ckpt" / "model.safetensors"
    assert find_checkpoint_weights(results / "2_ckpt", "ema") == results / "2_ckpt" / "model_1.safetensors"
    bare = results / "2_ckpt" / "model.safetensors"
    assert find_checkpoint_weights(bare, "ema") == bare


def test_accelerate_bin_names_and_missing_ema(tmp_path):
    folder = tmp_path / "7_ckpt"
    folder.mkdir()
    torch.save({"w": torch.zeros(1)}, folder / "pytorch_model.bin")
    assert find_checkpoint_weights(folder, "online") == folder / "pytorch_model.bin"
    with pytest.raises(MedSynError, match="no ema weights"):
        find_checkpoint_weights(folder, "ema")
    torch.save({"w": torch.ones(1)}, folder / "pytorch_model_1.bin")
    assert find_checkpoint_weights(tmp_path, "ema") == folder / "pytorch_model_1.bin"
    with pytest.raises(MedSynError, match="'ema' or 'online'"):
        find_checkpoint_weights(folder, "best")


def test_sha256_matches_manifest(fixture_dir):
    manifest = json.loads((fixture_dir / "manifest.json").read_text())
    name = "sr_state_dict.safetensors"
    assert sha256_file(fixture_dir / name) == manifest["files"][name]["sha256"]
