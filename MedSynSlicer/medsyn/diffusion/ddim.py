"""Deterministic DDIM (η=0) for x0-predicting networks, exactly as the official p_sample_loop, plus progress and cancel.

A denoiser is any callable ``(x_t, t_raw) -> x̂0`` (unclipped); CFG and network details live in ``guidance.py``.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..progress import CancelToken, ProgressCallback, report
from .known_region import KnownRegion
from .schedule import NUM_TIMESTEPS, alpha_cumprod, ddim_delta, ddim_time_grid

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ddim_step(x_t: torch.Tensor, x0_hat: torch.Tensor, t_raw: float, t_prev_raw: float,
              num_timesteps: int = NUM_TIMESTEPS) -> torch.Tensor:
    """One DDIM update from raw time t to t_prev (clipped at 0): √ᾱ'·x̂0 + √(1-ᾱ')·ε̂ with ε̂ from x_t and x̂0."""
    a_t = alpha_cumprod(torch.tensor(t_raw / num_timesteps)).to(x_t)
    a_prev = alpha_cumprod(torch.tensor(max(t_prev_raw, 0) / num_timesteps)).to(x_t)
    eps = (x_t - a_t.sqrt() * x0_hat) / (1 - a_t).sqrt()
    return a_prev.sqrt() * x0_hat + (1 - a_prev).sqrt() * eps


def predict_x0(denoiser: Denoiser, x_t: torch.Tensor, t_raw: int, known: Optional[KnownRegion]) -> torch.Tensor:
    """x̂0 at one grid time: network (with guidance) → known-region replacement → static clipping to [-1, 1]."""
    time = torch.full((x_t.shape[0],), float(t_raw), dtype=torch.float32, device=x_t.device)
    x0 = denoiser(x_t, time)
    if known is not None:
        x0 = known.apply(x0)
    return x0.clamp(-1.0, 1.0)


def ddim_sample(denoiser: Denoiser, noise: torch.Tensor, steps: int, known: Optional[KnownRegion] = None,
                callback: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
                stage: str = "lowres", num_timesteps: int = NUM_TIMESTEPS) -> torch.Tensor:
    """Run the official DDIM loop from ``noise``; returns the final state clamped to [-1, 1] (model space)."""
    grid = ddim_time_grid(steps, num_timesteps)
    delta = ddim_delta(steps, num_timesteps)
    x = noise
    for i, t in enumerate(grid):
        x0 = predict_x0(denoiser, x, t, known)
        x = x0 if t < delta else ddim_step(x, x0, t, t - delta, num_timesteps)
        report(callback, stage, i + 1, len(grid), cancel)
    return x.clamp(-1.0, 1.0)
