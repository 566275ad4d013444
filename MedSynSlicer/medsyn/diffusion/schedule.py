"""MedSyn's continuous cosine schedule and DDIM time grid (reference §3), reproduced with the official float32 op order."""
from __future__ import annotations

import math

import torch

NUM_TIMESTEPS = 1000


def alpha_cumprod(t01: torch.Tensor) -> torch.Tensor:
    """ᾱ(t) for t in [0, 1]: cos²(((t+0.008)/1.008)·π/2), clamped to [1e-4, 1-1e-4]; negative t gives 1 (then clamped)."""
    t01 = torch.as_tensor(t01, dtype=torch.float32)
    value = torch.where(t01 >= 0, torch.cos((t01 + 0.008) / 1.008 * math.pi / 2) ** 2, torch.ones_like(t01))
    return value.clamp(1e-4, 1 - 1e-4)


def ddim_time_grid(steps: int, num_timesteps: int = NUM_TIMESTEPS) -> list[int]:
    """Raw timesteps visited by official DDIM: reversed(range(0, T+1, T//steps)); 50 → 1000, 980, …, 0 (51 evaluations)."""
    if steps < 1 or steps > num_timesteps:
        from ..errors import MedSynError

        raise MedSynError(f"steps must be between 1 and {num_timesteps}, got {steps}")
    delta = num_timesteps // steps
    return list(reversed(range(0, num_timesteps + 1, delta)))


def ddim_delta(steps: int, num_timesteps: int = NUM_TIMESTEPS) -> int:
    """Spacing between consecutive grid times; a step whose time is below it returns x̂0 directly."""
    return num_timesteps // steps


def q_sample(x0: torch.Tensor, t01: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Forward noising x_t = √ᾱ·x0 + √(1-ᾱ)·ε with one t per batch element (training, RePaint re-noising)."""
    alpha = alpha_cumprod(t01).view(-1, *([1] * (x0.dim() - 1))).to(x0)
    return alpha.sqrt() * x0 + (1 - alpha).sqrt() * noise
