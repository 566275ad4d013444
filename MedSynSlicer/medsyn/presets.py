"""How to run a model in the memory a device has: precision, super-resolution tiles, low-res offload.

A plain memory model picks the plan: SR peak = activation bytes per tile voxel (by precision) + full-volume sampler
buffers + SR weights. Its constants were measured with ``benchmarks/run_benchmarks.py`` (official-size SR network,
peak resident memory on CPU, see benchmarks/RESULTS.md); a GPU holds the same tensors, and the caching allocator's
slack is covered by using only ``MEMORY_SAFETY`` of the free memory. A plan that still runs out of memory falls back
to the next, smaller one (``FallbackSRDenoiser``), so a wrong guess costs time, not the result.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from .diffusion.precision import resolve_precision
from .diffusion.tiled import DEFAULT_OVERLAP, Tile, TilePlan, clip_tile, tiled_cost
from .errors import MedSynError

# Measured peak activation bytes per voxel of one official-size SR forward (benchmarks/RESULTS.md, "memory model").
SR_ACTIVATION_BYTES_PER_VOXEL = {"fp32": 2300, "bf16": 1200, "fp16": 1200}
# Full-volume float32 tensors alive during SR sampling: noise, x_lr, x_t, x̂0, the step's temporaries, the previous
# x̂0 (DPM-Solver++) and the tiler's blended output and weight map (measured: 92 bytes per voxel).
VOLUME_BYTES_PER_VOXEL = 100
MEMORY_SAFETY = 0.85
PRESET_MEMORY_GB = (8, 12, 24, 80)
OFFICIAL_SR_SHAPE: Tile = (256, 256, 256)
_WINDOWS_PER_AXIS = (1, 2, 3, 4, 6, 8)


@dataclass(frozen=True)
class PerformanceOptions:
    """User choices; "auto"/None defer to the preset for the device's free memory."""

    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    sr_tile: Union[str, Tile] = "auto"  # auto | whole | (depth, height, width)
    offload: Optional[bool] = None  # move the low-res net off the GPU during SR


@dataclass(frozen=True)
class Preset:
    """A resolved way to run: ``sr_plans[0]`` is used, the rest are the out-of-memory fallbacks (None = whole).
    ``predicted_sr_peak_bytes`` covers the SR stage, including the low-res weights when they stay on the device."""

    precision: str
    sr_plans: tuple[TilePlan, ...]
    offload: bool
    predicted_sr_peak_bytes: int


def sr_peak_bytes(plan: TilePlan, shape: Sequence[int], precision: str, sr_weight_bytes: int) -> int:
    """Predicted peak memory of SR sampling with ``plan`` over a volume of ``shape``."""
    voxels = math.prod(shape)
    tile_voxels = voxels if plan is None else math.prod(clip_tile(plan, shape))
    return int(SR_ACTIVATION_BYTES_PER_VOXEL[precision] * tile_voxels + VOLUME_BYTES_PER_VOXEL * voxels
               + sr_weight_bytes)


def _axis_tile(size: int, windows: int, align: int, overlap: float) -> int:
    """Smallest aligned window that covers ``size`` in ``windows`` overlapping steps."""
    if windows == 1:
        return size
    roi = math.ceil(size / (windows - (windows - 1) * overlap) / align) * align
    return min(roi, size)


def candidate_plans(shape: Sequence[int], align: int, overlap: float = DEFAULT_OVERLAP) -> list[TilePlan]:
    """Whole volume and tiles of 1–8 windows per axis (in-plane sizes multiples of ``align``): full-depth tiles
    first, cheapest first. The official SR was trained on full-depth 256×72×72 crops, so in-plane tiles show it the
    context it learned from; depth tiles are the last resort."""
    plans: set[TilePlan] = {None}
    for depth_windows in _WINDOWS_PER_AXIS[:4]:
        for plane_windows in _WINDOWS_PER_AXIS:
            tile = (_axis_tile(shape[0], depth_windows, 1, overlap),
                    *(_axis_tile(size, plane_windows, align, overlap) for size in shape[1:]))
            plans.add(None if tuple(tile) == tuple(shape) else tile)
    return sorted(plans, key=lambda p: (p is not None and p[0] < shape[0], tiled_cost(shape, p, overlap),
                                        -math.prod(p or shape)))


def plan_chain(shape: Sequence[int], align: int, precision: str, sr_weight_bytes: int,
               budget_bytes: Optional[int], first: Union[str, Tile] = "auto") -> tuple[TilePlan, ...]:
    """The plan to use (cheapest that fits ``budget_bytes``, or ``first`` if given) followed by fallbacks, each
    predicted to need at most 60 % of the memory of the one before."""
    plans = candidate_plans(shape, align)
    peak = {p: sr_peak_bytes(p, shape, precision, sr_weight_bytes) for p in plans}
    if first == "whole":
        chosen: TilePlan = None
    elif first != "auto":
        chosen = _checked_tile(first, shape, align)
    elif budget_bytes is None:
        chosen = None
    else:
        fitting = [p for p in plans if peak[p] <= budget_bytes]
        chosen = fitting[0] if fitting else min(plans, key=peak.__getitem__)
    chain = [chosen]
    limit = sr_peak_bytes(chosen, shape, precision, sr_weight_bytes)
    while True:
        smaller = [p for p in plans if peak[p] <= 0.6 * limit]
        if not smaller:
            return tuple(chain)
        chain.append(smaller[0])
        limit = peak[smaller[0]]


def _checked_tile(tile: Tile, shape: Sequence[int], align: int) -> Tile:
    if len(tile) != 3 or min(tile) < 1 or any(t % align and t < s for t, s in zip(tile[1:], shape[1:])):
        raise MedSynError(f"SR tile {tuple(tile)} must be 3 positive sizes (depth, height, width) with height and "
                          f"width multiples of {align}")
    return tuple(tile)  # type: ignore[return-value]


def free_memory(device: torch.device) -> Optional[int]:
    """Free bytes on a CUDA device, counting blocks PyTorch has cached but not used; None on CPU, where the whole
    volume is planned first and the fallbacks remain."""
    if device.type != "cuda":
        return None
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return torch.cuda.mem_get_info(device)[0] + cached


def choose_preset(options: PerformanceOptions, device: torch.device, sr_shape: Sequence[int], align: int,
                  lowres_weight_bytes: int, sr_weight_bytes: int, free_bytes: Optional[int] = None) -> Preset:
    """Resolve ``options`` for a device with ``free_bytes`` free besides the model's own weights (default: measured
    now, so weights already on the device count as used) and an SR volume of ``sr_shape``.

    Offloading the low-res weights is chosen when the memory it frees lets a cheaper SR plan fit.
    """
    precision = resolve_precision(options.precision, device)
    free_bytes = free_memory(device) if free_bytes is None else free_bytes
    budget = None if free_bytes is None else int(free_bytes * MEMORY_SAFETY)
    resident_budget = None if budget is None else budget - lowres_weight_bytes
    offloaded = plan_chain(sr_shape, align, precision, sr_weight_bytes, budget, options.sr_tile)
    resident = plan_chain(sr_shape, align, precision, sr_weight_bytes, resident_budget, options.sr_tile)
    offload = options.offload
    if offload is None:
        offload = tiled_cost(sr_shape, offloaded[0]) < tiled_cost(sr_shape, resident[0])
    plans = offloaded if offload else resident
    peak = sr_peak_bytes(plans[0], sr_shape, precision, sr_weight_bytes) + (0 if offload else lowres_weight_bytes)
    return Preset(precision, plans, offload, peak)


def preset_table(lowres_weight_bytes: int, sr_weight_bytes: int, align: int,
                 sr_shape: Sequence[int] = OFFICIAL_SR_SHAPE,
                 memory_gb: Sequence[int] = PRESET_MEMORY_GB) -> list[tuple[int, Preset]]:
    """The documented presets: what ``choose_preset`` picks on a CUDA GPU with that much free memory."""
    device = torch.device("cuda")
    options = PerformanceOptions(precision="bf16")
    return [(gb, choose_preset(options, device, sr_shape, align, lowres_weight_bytes, sr_weight_bytes,
                               free_bytes=gb * 2**30)) for gb in memory_gb]
