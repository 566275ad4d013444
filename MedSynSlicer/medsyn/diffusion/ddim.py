"""Deterministic DDIM (η=0) for x0-predicting networks, exactly as the official p_sample_loop, plus progress and cancel.

A denoiser is any callable ``(x_t, t_raw) -> x̂0`` (unclipped); CFG and network details live in ``guidance.py``.
A known region carrying a ``Resampling`` adds RePaint's up-jumps to the time sequence; without one the loop is the
official one, step for step.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..progress import CancelToken, ProgressCallback, report
from .known_region import KnownRegion, Resampling
from .schedule import NUM_TIMESTEPS, alpha_cumprod, ddim_delta, ddim_time_grid

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ddim_step(x_t: torch.Tensor, x0_hat: torch.Tensor, t_raw: float, t_prev_raw: float,
              num_timesteps: int = NUM_TIMESTEPS) -> torch.Tensor:
    """One DDIM update from raw time t to t_prev (clipped at 0): √ᾱ'·x̂0 + √(1-ᾱ')·ε̂ with ε̂ from x_t and x̂0."""
    a_t = alpha_cumprod(torch.tensor(t_raw / num_timesteps)).to(x_t)
    a_prev = alpha_cumprod(torch.tensor(max(t_prev_raw, 0) / num_timesteps)).to(x_t)
    eps = (x_t - a_t.sqrt() * x0_hat) / (1 - a_t).sqrt()
    return a_prev.sqrt() * x0_hat + (1 - a_prev).sqrt() * eps


def renoise(x_t: torch.Tensor, t_raw: int, t_up_raw: int, generator: torch.Generator,
            num_timesteps: int = NUM_TIMESTEPS) -> torch.Tensor:
    """Forward diffusion from time t up to t_up: q(x_up | x_t) = N(√(ᾱ_up/ᾱ_t)·x_t, (1 - ᾱ_up/ᾱ_t)·I)."""
    ratio = (alpha_cumprod(torch.tensor(t_up_raw / num_timesteps))
             / alpha_cumprod(torch.tensor(t_raw / num_timesteps))).to(x_t)
    noise = torch.randn(x_t.shape, generator=generator).to(x_t)
    return ratio.sqrt() * x_t + (1 - ratio).sqrt() * noise


def resampling_times(grid: list[int], resampling: Optional[Resampling]) -> list[int]:
    """Times the sampler visits: the DDIM grid, where with ``resampling`` every block of ``jump_length`` steps is
    walked ``repeats`` times (an increase in time is a re-noising jump). The final step is never revisited."""
    if resampling is None:
        return list(grid)
    jump, last = resampling.jump_length, len(grid) - 1
    times, passes, i = [grid[0]], {}, 0
    while i < last:
        i += 1
        times.append(grid[i])
        if i % jump == 0 and i < last and passes.get(i, 1) < resampling.repeats:
            passes[i] = passes.get(i, 1) + 1
            i -= jump
            times.append(grid[i])
    return times


def predict_x0(denoiser: Denoiser, x_t: torch.Tensor, t_raw: int, known: Optional[KnownRegion]) -> torch.Tensor:
    """x̂0 at one grid time: network (with guidance) → known-region replacement → static clipping to [-1, 1]."""
    time = torch.full((x_t.shape[0],), float(t_raw), dtype=torch.float32, device=x_t.device)
    x0 = denoiser(x_t, time)
    if known is not None:
        x0 = known.apply(x0)
    return x0.clamp(-1.0, 1.0)


def ddim_sample(denoiser: Denoiser, noise: torch.Tensor, steps: int, known: Optional[KnownRegion] = None,
                callback: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
                stage: str = "lowres", num_timesteps: int = NUM_TIMESTEPS, start: Optional[int] = None
                ) -> torch.Tensor:
    """Run the official DDIM loop from ``noise``; returns the final state clamped to [-1, 1] (model space).

    Each grid time t steps to the next grid time t - Δ; the last (t < Δ) returns x̂0 itself. Progress counts network
    evaluations; re-noising jumps cost none. With ``start`` (a raw grid time) ``noise`` is a volume already diffused
    to that time and the loop begins there (SDEdit: the network re-renders a given volume).
    """
    resampling = known.resampling if known is not None else None
    grid = ddim_time_grid(steps, num_timesteps)
    if start is not None:
        if start not in grid:
            raise ValueError(f"start {start} is not a time of the {steps}-step DDIM grid")
        grid = grid[grid.index(start):]
    times = resampling_times(grid, resampling)
    generator = torch.Generator().manual_seed(resampling.seed) if resampling is not None else None
    transitions = list(zip(times, times[1:] + [-1]))  # -1 marks the final evaluation
    evaluations = sum(1 for t, t_next in transitions if t_next < t)
    delta = ddim_delta(steps, num_timesteps)
    x, done = noise, 0
    for t, t_next in transitions:
        if t_next > t:
            x = renoise(x, t, t_next, generator, num_timesteps)
            continue
        x0 = predict_x0(denoiser, x, t, known)
        x = x0 if t < delta else ddim_step(x, x0, t, t_next, num_timesteps)
        done += 1
        report(callback, stage, done, evaluations, cancel)
    return x.clamp(-1.0, 1.0)
