"""Where an edit is super-resolved: its bounding box plus a context margin when that box is small.

``MedSynPipeline.super_resolve`` samples the box. The SR network is convolutional except for GroupNorm statistics and
one in-plane self-attention at its bottleneck, so a box with a context margin gives nearly, not exactly, what the whole
volume would inside the box; outside it the result is the known values, else the nearest-upsampled low-res result, so
an edit's cost follows its size.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from medsyn.geometry import Grid
from medsyn.pipeline import Box

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


def _aligned(start: int, stop: int, length: int, multiple: int, factor: int) -> slice:
    """[start, stop) clipped to the axis, start on a multiple of ``factor``, size a multiple of ``multiple``."""
    start = max(start, 0) // factor * factor
    size = math.ceil((min(stop, length) - start) / multiple) * multiple
    if size >= length:
        return slice(0, length)
    start = min(start, length - size)
    return slice(start, start + size)
