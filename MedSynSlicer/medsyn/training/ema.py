"""Exponential moving average of the weights, with the official schedule: copy the online weights until ``start``,
then ema ← decay·ema + (1−decay)·online every ``every`` steps. Sampling uses the EMA (reference §1)."""
from __future__ import annotations

import copy

import torch
from torch import nn

STAGE_DEFAULTS = {"lowres": (0.999, 1), "sr": (0.995, 10)}  # (decay, every) of the official training scripts


class EMA:
    """A frozen copy of the network that trails the online weights."""

    def __init__(self, online: nn.Module, decay: float, every: int, start: int) -> None:
        if not 0.0 <= decay < 1.0 or every < 1 or start < 0:
            raise ValueError(f"invalid EMA settings decay={decay}, every={every}, start={start}")
        self.decay, self.every, self.start = decay, every, start
        self.model = copy.deepcopy(online).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, online: nn.Module, step: int) -> None:
        """Call after optimizer step number ``step`` (0-based), as the official trainer does."""
        if step % self.every:
            return
        if step < self.start:
            self.model.load_state_dict(online.state_dict())
            return
        for averaged, current in zip(self.model.parameters(), online.parameters()):
            averaged.mul_(self.decay).add_(current.detach(), alpha=1.0 - self.decay)
        for averaged, current in zip(self.model.buffers(), online.buffers()):
            averaged.copy_(current)
