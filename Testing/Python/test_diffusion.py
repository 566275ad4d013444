"""Schedule, DDIM arithmetic, CFG combination and known-region replacement against the official trace.

These tests replay the recorded network outputs, so they pin the sampler independently of the networks.
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from medsyn.diffusion.ddim import ddim_sample, ddim_step, predict_x0
from medsyn.diffusion.known_region import KnownRegion
from medsyn.diffusion.schedule import alpha_cumprod, ddim_time_grid
from medsyn.errors import MedSynError
from medsyn.progress import CancelToken, Cancelled


@pytest.fixture(scope="module")
def trace(fixture_dir):
    return load_file(str(fixture_dir / "ddim_trace.safetensors"))


def test_time_grid_matches_official_range():
    assert ddim_time_grid(4) == [1000, 750, 500, 250, 0]
    assert ddim_time_grid(3) == [999, 666, 333, 0]
    assert len(ddim_time_grid(50)) == 51 and len(ddim_time_grid(300)) == 334
    with pytest.raises(MedSynError):
        ddim_time_grid(0)


def test_alpha_matches_manifest_values():
    got = alpha_cumprod(torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    want = torch.tensor([9.999999747378752e-05, 0.14424964785575867, 0.4937668740749359,
                         0.8468805551528931, 0.9998445510864258])
    assert torch.equal(got, want)


class _Replay:
    """A denoiser that returns the recorded network outputs of one run, in order."""

    def __init__(self, outputs: torch.Tensor, times: torch.Tensor) -> None:
        self.outputs, self.times, self.calls = outputs, times, 0

    def __call__(self, x_t, time):
        assert torch.equal(time, self.times[self.calls])
        out = self.outputs[self.calls]
        self.calls += 1
        return out


def test_ddim_free_running_reproduces_official_eval_run(trace):
    run = "eval_cs1"
    denoiser = _Replay(trace[f"{run}.net_out_cond"], trace[f"{run}.net_time"])
    sample = ddim_sample(denoiser, trace["noise"], steps=4)
    assert torch.allclose((sample + 1) * 0.5, trace[f"{run}.sample"], atol=1e-6)


def test_ddim_started_mid_grid_finishes_the_official_run(trace):
    """start=t (SDEdit, rendered low-res conditions): from the recorded state at grid time 750 the loop visits only
    the remaining times and ends on the official sample; a time off the grid is refused."""
    run = "eval_cs1"
    denoiser = _Replay(trace[f"{run}.net_out_cond"][1:], trace[f"{run}.net_time"][1:])
    sample = ddim_sample(denoiser, trace[f"{run}.x_t"][1], steps=4, start=750)
    assert denoiser.calls == 4
    assert torch.allclose((sample + 1) * 0.5, trace[f"{run}.sample"], atol=1e-6)
    with pytest.raises(ValueError, match="not a time of the 4-step DDIM grid"):
        ddim_sample(denoiser, trace[f"{run}.x_t"][1], steps=4, start=700)


def test_ddim_teacher_forced_steps(trace):
    run = "eval_cs1"
    grid = ddim_time_grid(4)
    for i, t in enumerate(grid[:-1]):
        x0 = trace[f"{run}.x0_hat"][i]
        nxt = ddim_step(trace[f"{run}.x_t"][i], x0, t, t - 250)
        assert torch.allclose(nxt, trace[f"{run}.x_t"][i + 1], atol=1e-5)


def test_channel_fixing_replaces_x0_before_clamp(trace):
    run = "cg_cs3_fix12"
    known = KnownRegion.channels(trace["known"], [1, 2])
    x_t = trace[f"{run}.x_t"][0]
    # The CFG-combined x̂0 is not stored, but channels 1 and 2 must equal the clamped known values at every step.
    for i in range(trace[f"{run}.x0_hat"].shape[0]):
        assert torch.equal(trace[f"{run}.x0_hat"][i][:, 1:3], trace["known"][:, 1:3].clamp(-1, 1))
    x0 = predict_x0(lambda x, t: torch.zeros_like(x) + 5.0, x_t, 1000, known)
    assert torch.equal(x0[:, 1:3], trace["known"][:, 1:3].clamp(-1, 1))
    assert torch.all(x0[:, 0] == 1.0) and torch.all(x0[:, 3] == 1.0)


def test_soft_mask_blends_and_bad_shapes_fail():
    values = torch.ones(1, 4, 2, 2, 2)
    mask = torch.full((1, 1, 2, 2, 2), 0.25)
    out = KnownRegion(mask, values).apply(torch.zeros(1, 4, 2, 2, 2))
    assert torch.allclose(out, torch.full_like(out, 0.25))
    with pytest.raises(MedSynError):
        KnownRegion(torch.ones(1, 1, 3, 3, 3, dtype=torch.bool), values)
    with pytest.raises(MedSynError):
        KnownRegion(torch.ones(1, 1, 2, 2, 2, dtype=torch.bool), torch.full((1, 4, 2, 2, 2), float("nan")))


def test_progress_and_cancel():
    events = []
    token = CancelToken()

    def callback(event):
        events.append(event)
        if event.step == 2:
            token.cancel()

    with pytest.raises(Cancelled):
        ddim_sample(lambda x, t: torch.zeros_like(x), torch.randn(1, 4, 2, 2, 2), steps=4, callback=callback,
                    cancel=token)
    assert [(e.stage, e.step, e.total) for e in events] == [("lowres", 1, 5), ("lowres", 2, 5)]
