"""Our U-Nets against the official MedSyn fixture: exact key layout, strict loading, forward numerics, batching."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from medsyn.diffusion.schedule import alpha_cumprod
from medsyn.errors import MedSynError
from medsyn.models.weights import load_state_dict_strict, normalize_official_state_dict
from medsyn.networks.config import (OFFICIAL_LOWRES, OFFICIAL_SR, LowResConfig, SRConfig, count_parameters,
                                    from_official_kwargs)
from medsyn.networks.lowres_unet import LowResUNet3D
from medsyn.networks.sr_unet import SRUNet3D

ATOL = 1e-4


@pytest.fixture
def manifest(fixture_dir) -> dict:
    return json.loads((fixture_dir / "manifest.json").read_text())


def _build(manifest: dict, kind: str):
    return from_official_kwargs(kind, manifest["models"][kind]["constructor_kwargs"]).build()


def _loaded(manifest: dict, fixture_dir, kind: str, file_name: str):
    net = _build(manifest, kind).eval()
    state, _ = normalize_official_state_dict(load_file(fixture_dir / file_name), kind)
    load_state_dict_strict(net, state, source=file_name)
    return net


@pytest.mark.parametrize("kind", ["lowres", "sr"])
def test_state_dict_keys_and_shapes_equal_official(manifest, kind):
    net = _build(manifest, kind)
    layout = {key: list(value.shape) for key, value in net.state_dict().items()}
    expected = manifest["models"][kind]["state_dict_keys_and_shapes"]
    assert list(layout.items()) == list(expected.items())
    assert count_parameters(net) == manifest["models"][kind]["unique_parameter_count"]


@pytest.mark.parametrize("config, kind, n_keys, n_params", [
    (OFFICIAL_LOWRES, "lowres", 377, 716_215_684),
    (OFFICIAL_SR, "sr", 317, 54_307_908),
])
def test_official_full_size_configs_on_meta(manifest, config, kind, n_keys, n_params):
    with torch.device("meta"):
        net = config.build()
    assert count_parameters(net) == n_params
    keys = list(net.state_dict())
    assert len(keys) == n_keys
    assert keys == list(manifest["models"][kind]["state_dict_keys_and_shapes"])  # same names and order as tiny


def test_mid_spatial_attention_is_shared_but_norms_are_not(manifest):
    net = _build(manifest, "lowres")
    attentions = [getattr(net, f"mid_spatial_attn{k}").fn.fn.fn for k in range(1, 5)]
    assert all(a is attentions[0] for a in attentions)
    gammas = [getattr(net, f"mid_spatial_attn{k}").fn.norm.gamma for k in range(1, 5)]
    assert len({g.data_ptr() for g in gammas}) == 4
    state = net.state_dict()
    assert state["mid_spatial_attn4.fn.fn.fn.to_qkv.weight"].data_ptr() == \
        state["mid_spatial_attn1.fn.fn.fn.to_qkv.weight"].data_ptr()


def test_plain_and_wrapped_files_load_to_identical_weights(manifest, fixture_dir):
    plain = _loaded(manifest, fixture_dir, "lowres", "lowres_state_dict.safetensors")
    wrapped = _loaded(manifest, fixture_dir, "lowres", "lowres_state_dict_wrapped.safetensors")
    for (key, a), b in zip(plain.state_dict().items(), wrapped.state_dict().values()):
        assert torch.equal(a, b), key


@pytest.mark.parametrize("up_order", ["eval", "train"])
def test_lowres_forward_matches_official_for_both_up_orders(manifest, fixture_dir, up_order):
    net = _loaded(manifest, fixture_dir, "lowres", "lowres_state_dict.safetensors")
    io = load_file(fixture_dir / "lowres_io.safetensors")
    net.up_order = up_order
    with torch.no_grad():
        cond_out = net(io["x"], io["t"], io["cond"])
        null_out = net(io["x"], io["t"])
    torch.testing.assert_close(cond_out, io[f"out_{up_order}_cond"], atol=ATOL, rtol=0)
    torch.testing.assert_close(null_out, io[f"out_{up_order}_null"], atol=ATOL, rtol=0)
    if up_order == "eval":  # official forward_with_cond_scale(cond_scale=3): null + (cond - null) * 3
        torch.testing.assert_close(null_out + (cond_out - null_out) * 3, io["out_eval_cfg3"], atol=ATOL, rtol=0)


def test_up_order_switch_changes_the_function_and_is_validated(manifest, fixture_dir):
    net = _loaded(manifest, fixture_dir, "lowres", "lowres_state_dict.safetensors")
    io = load_file(fixture_dir / "lowres_io.safetensors")
    with torch.no_grad():
        eval_out = net(io["x"], io["t"], io["cond"])
        net.up_order = "train"
        train_out = net(io["x"], io["t"], io["cond"])
    assert (eval_out - train_out).abs().max() > 0.1
    with pytest.raises(MedSynError, match="up_order"):
        net.up_order = "sideways"


@pytest.mark.parametrize("up_order", ["eval", "train"])
def test_sr_forward_matches_official_for_both_up_orders(manifest, fixture_dir, up_order):
    net = _loaded(manifest, fixture_dir, "sr", "sr_state_dict.safetensors")
    io = load_file(fixture_dir / "sr_io.safetensors")
    net.up_order = up_order
    with torch.no_grad():
        out = net(io["x_t"], io["t"], io["x_lr"])
    torch.testing.assert_close(out, io[f"out_{up_order}"], atol=ATOL, rtol=0)


def test_lowres_batch_of_two_equals_two_single_runs(manifest, fixture_dir):
    """Catches a wrong (b, slice) tiling of the text in cross-attention, invisible at B = 1."""
    net = _loaded(manifest, fixture_dir, "lowres", "lowres_state_dict.safetensors")
    io = load_file(fixture_dir / "lowres_io.safetensors")
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([io["x"], torch.randn(io["x"].shape, generator=gen)])
    cond = torch.cat([io["cond"], torch.randn(io["cond"].shape, generator=gen)])
    time = torch.tensor([io["t"].item(), 250.0])
    with torch.no_grad():
        batched = net(x, time, cond)
        singles = torch.cat([net(x[i:i + 1], time[i:i + 1], cond[i:i + 1]) for i in range(2)])
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=0)
    assert (batched[0] - batched[1]).abs().max() > 1e-2


def test_sr_batch_of_two_and_non_square_volume(manifest, fixture_dir):
    net = _loaded(manifest, fixture_dir, "sr", "sr_state_dict.safetensors")
    gen = torch.Generator().manual_seed(1)
    x_t, x_lr = torch.randn(2, 4, 3, 8, 16, generator=gen), torch.randn(2, 4, 3, 8, 16, generator=gen)
    time = torch.tensor([1000.0, 20.0])
    with torch.no_grad():
        batched = net(x_t, time, x_lr)
        singles = torch.cat([net(x_t[i:i + 1], time[i:i + 1], x_lr[i:i + 1]) for i in range(2)])
    assert batched.shape == x_t.shape
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=0)


def test_residual_sr_starts_as_nearest_upsampling_and_keeps_official_keys(manifest, fixture_dir):
    """The demo's residual SR: same state_dict as the official class, identity on x_lr until trained, and the
    residual is really added (loading official weights into it changes the output by exactly x_lr)."""
    kwargs = manifest["models"]["sr"]["constructor_kwargs"]
    config = from_official_kwargs("sr", kwargs)
    residual = SRConfig.from_dict({**config.to_dict(), "residual": True}).build().eval()
    plain = _loaded(manifest, fixture_dir, "sr", "sr_state_dict.safetensors")
    assert residual.state_dict().keys() == plain.state_dict().keys()
    io = load_file(fixture_dir / "sr_io.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(residual(io["x_t"], io["t"], io["x_lr"]), io["x_lr"], atol=0, rtol=0)
        load_state_dict_strict(residual, plain.state_dict(), source="sr")
        torch.testing.assert_close(residual(io["x_t"], io["t"], io["x_lr"]),
                                   plain(io["x_t"], io["t"], io["x_lr"]) + io["x_lr"], atol=1e-6, rtol=0)


def test_v_parameterized_lowres_keeps_official_keys_and_returns_x0_from_v(manifest, fixture_dir):
    """The demo's v-parameterized low-res network: official state_dict, and with official weights its output is
    √ᾱ·x_t − √(1−ᾱ)·(official output), so at t = 0 it returns nearly x_t itself."""
    kwargs = manifest["models"]["lowres"]["constructor_kwargs"]
    config = from_official_kwargs("lowres", kwargs)
    plain = _loaded(manifest, fixture_dir, "lowres", "lowres_state_dict.safetensors")
    v_net = LowResConfig.from_dict({**config.to_dict(), "parameterization": "v"}).build().eval()
    load_state_dict_strict(v_net, plain.state_dict(), source="lowres")
    io = load_file(fixture_dir / "lowres_io.safetensors")
    alpha = alpha_cumprod(io["t"] / 1000).view(-1, 1, 1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(v_net(io["x"], io["t"], io["cond"]),
                                   alpha.sqrt() * io["x"] - (1 - alpha).sqrt() * plain(io["x"], io["t"], io["cond"]))
        zero = torch.zeros_like(io["t"])
        head = plain(io["x"], zero, io["cond"])
        at_zero = v_net(io["x"], zero, io["cond"])
    # ᾱ(0) ≈ 1 − 1.6e-4 (the cosine schedule's offset): the head's output enters at a weight of 0.0125 only
    assert (at_zero - io["x"]).abs().max() <= 0.013 * head.abs().max()
    with pytest.raises(MedSynError, match="unknown parameterization"):
        LowResConfig.from_dict({**config.to_dict(), "parameterization": "eps"}).build()


def test_config_round_trip_and_validation(manifest):
    config = from_official_kwargs("lowres", manifest["models"]["lowres"]["constructor_kwargs"])
    assert config == LowResConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert isinstance(config.build(), LowResUNet3D)
    assert isinstance(SRConfig.from_dict(OFFICIAL_SR.to_dict()), SRConfig)
    with torch.device("meta"):
        assert isinstance(OFFICIAL_SR.build(), SRUNet3D)
    with pytest.raises(MedSynError, match="unknown LowResConfig field"):
        LowResConfig.from_dict({**config.to_dict(), "heads": 3})
    with pytest.raises(MedSynError, match="up_order"):
        LowResConfig.from_dict({**config.to_dict(), "up_order": "both"})
    with pytest.raises(MedSynError, match="init_dim"):
        from_official_kwargs("lowres", {**manifest["models"]["lowres"]["constructor_kwargs"], "init_dim": 8})
