"""Denoisers: wrap a network (and its conditioning) into the ``(x_t, t_raw) -> x̂0`` callable the samplers expect."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..errors import MedSynError
from .schedule import alpha_cumprod


class LowResDenoiser:
    """Text-conditioned low-res network with classifier-free guidance against the learned null embedding.

    ``combine="x0"`` is the eval script's x̂0 = null + s·(cond − null) with two separate forwards (one when s == 1);
    ``combine="eps_batched"`` is conditional_generalization's single 2B-batch forward combined in ε-space with ᾱ at the
    raw time (algebraically the same, kept to reproduce the official numbers). ``cond=None`` means unconditional.
    """

    def __init__(self, net: nn.Module, cond: Optional[torch.Tensor], guidance_scale: float = 1.0,
                 combine: str = "x0") -> None:
        if combine not in ("x0", "eps_batched"):
            raise MedSynError(f"unknown guidance combination {combine!r}; use 'x0' or 'eps_batched'")
        self.net, self.cond, self.scale, self.combine = net, cond, float(guidance_scale), combine
        self._paired: Optional[torch.Tensor] = None

    def __call__(self, x_t: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        # The net shares a (1, tokens, H) text across the batch; passing the same tensor every step lets it reuse k/v.
        if self.cond is None or self.scale == 1.0:
            return self.net(x_t, time, self.cond)
        if self.combine == "x0":
            x0_cond = self.net(x_t, time, self.cond)
            x0_null = self.net(x_t, time, None)
            return x0_null + (x0_cond - x0_null) * self.scale
        return self._eps_batched(x_t, time)

    def _paired_cond(self, batch: int) -> torch.Tensor:
        """cat([cond, null]) for the 2·batch forward, built once per batch size rather than at every step."""
        if self._paired is None or self._paired.shape[0] != 2 * batch:
            cond = self.cond.expand(batch, *self.cond.shape[1:])
            null = self.net.null_cond_emb.expand(batch, *self.net.null_cond_emb.shape[1:]).to(cond)
            self._paired = torch.cat([cond, null])
        return self._paired

    def _eps_batched(self, x_t: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        out = self.net(torch.cat([x_t, x_t]), torch.cat([time, time]), self._paired_cond(x_t.shape[0]))
        x0_cond, x0_null = out.chunk(2)
        alpha = alpha_cumprod(time).view(-1, 1, 1, 1, 1).to(x_t)
        eps_cond = (x_t - alpha.sqrt() * x0_cond) / (1 - alpha).sqrt()
        eps_null = (x_t - alpha.sqrt() * x0_null) / (1 - alpha).sqrt()
        eps = eps_null + (eps_cond - eps_null) * self.scale
        return (x_t - (1 - alpha).sqrt() * eps) / alpha.sqrt()


class SRDenoiser:
    """Super-resolution network conditioned on the fixed, nearest-upsampled low-res volume ``x_lr`` (model space)."""

    def __init__(self, net: nn.Module, x_lr: torch.Tensor) -> None:
        self.net, self.x_lr = net, x_lr

    def __call__(self, x_t: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        return self.net(x_t, time, self.x_lr)
