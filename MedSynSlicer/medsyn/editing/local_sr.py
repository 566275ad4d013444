"""The super-resolution stage of an edit, run on the edit's bounding box only when that box is small.

The SR network is convolutional except for GroupNorm statistics and one in-plane self-attention at its bottleneck, so
a box with a context margin gives nearly, not exactly, what the whole volume would inside the box. Outside the box the
result is the known values, else the nearest-upsampled low-res result: an edit's cost follows its size.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from medsyn.codec import lowres_to_sr_condition
from medsyn.diffusion.ddim import ddim_sample
from medsyn.diffusion.guidance import SRDenoiser
from medsyn.diffusion.known_region import KnownRegion
from medsyn.geometry import Grid
from medsyn.models.loaded import LoadedModel
from medsyn.progress import CancelToken, ProgressCallback

Box = tuple[slice, slice, slice]  # (z, y, x) on the SR grid
LOCAL_SR_MAX_FRACTION = 0.5  # above this share of the grid, the whole volume is cheaper to reason about
CONTEXT_MARGIN_MM = 16.0


def sr_box(region: np.ndarray, grid: Grid, factor: int, levels: int,
           margin_mm: float = CONTEXT_MARGIN_MM) -> Optional[Box]:
    """Bounding box of ``region`` (bool on the SR ``grid``) plus a margin, or None when the whole grid should be used.

    Box edges fall on low-res voxel borders (multiples of ``factor``) so the box sees whole low-res voxels, and its
    in-plane size is a multiple of 2^(levels-1) so the network's in-plane down-sampling divides it.
    """
    if not region.any():
        return None
    indices = np.argwhere(region)
    margins = [math.ceil(margin_mm / s) for s in grid.spacing_xyz[::-1]]
    in_plane = math.lcm(factor, 2 ** (levels - 1))
    box = tuple(_aligned(int(low) - margin, int(high) + 1 + margin, length, multiple, factor)
                for low, high, margin, length, multiple in zip(indices.min(axis=0), indices.max(axis=0), margins,
                                                                 grid.shape_zyx, (factor, in_plane, in_plane)))
    box_voxels = math.prod(s.stop - s.start for s in box)
    return box if box_voxels < LOCAL_SR_MAX_FRACTION * math.prod(grid.shape_zyx) else None


def sr_noise(seed: int, lowres_shape: tuple[int, ...], sr_shape: tuple[int, ...]) -> torch.Tensor:
    """The SR noise the pipeline draws for ``seed`` (right after the low-res noise, from one generator), so a box
    edit sees the same noise as a whole-volume run would."""
    generator = torch.Generator().manual_seed(int(seed))
    torch.randn(lowres_shape, generator=generator)
    return torch.randn(sr_shape, generator=generator)


def super_resolve(loaded: LoadedModel, x_low: torch.Tensor, known: Optional[KnownRegion], seed: int, steps: int,
                  box: Optional[Box] = None, callback: Optional[ProgressCallback] = None,
                  cancel: Optional[CancelToken] = None) -> torch.Tensor:
    """Full-resolution (1, 4, D, H, W) result in model space: SR DDIM on ``box`` (or everything), the rest filled in."""
    x_lr = lowres_to_sr_condition(x_low.cpu(), loaded.card.grid.sr_factor)
    noise = sr_noise(seed, tuple(x_low.shape), tuple(x_lr.shape))
    window = (slice(None), slice(None), *(box or (slice(None),) * 3))
    known_box = None if known is None else KnownRegion(known.mask[window], known.values[window]).to(loaded.device)
    with torch.inference_mode():
        x_box = ddim_sample(SRDenoiser(loaded.sr, x_lr[window].to(loaded.device)), noise[window].to(loaded.device),
                            steps, known=known_box, callback=callback, cancel=cancel, stage="sr")
    result = known.apply(x_lr) if known is not None else x_lr
    result[window] = x_box.cpu()
    return result


def _aligned(start: int, stop: int, length: int, multiple: int, factor: int) -> slice:
    """[start, stop) clipped to the axis, start on a multiple of ``factor``, size a multiple of ``multiple``."""
    start = max(start, 0) // factor * factor
    size = math.ceil((min(stop, length) - start) / multiple) * multiple
    if size >= length:
        return slice(0, length)
    start = min(start, length - size)
    return slice(start, start + size)
