"""Sampler choice by name; every sampler has ``ddim_sample``'s signature and progress/cancel contract."""
from __future__ import annotations

from typing import Callable

from ..errors import MedSynError
from .ddim import ddim_sample
from .dpm_solver import dpmpp2m_sample

SAMPLERS: dict[str, Callable] = {"ddim": ddim_sample, "dpmpp2m": dpmpp2m_sample}
SAMPLER_DESCRIPTIONS = {"ddim": "ddim (eta=0)", "dpmpp2m": "dpm-solver++(2M), data prediction"}


def get_sampler(name: str) -> Callable:
    """The sampling loop called ``name`` ("ddim" = the official sampler, "dpmpp2m" = fewer steps for the same ODE)."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise MedSynError(f"unknown sampler {name!r}; use one of {', '.join(SAMPLERS)}") from None
