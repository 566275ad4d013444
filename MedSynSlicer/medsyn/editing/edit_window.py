"""Where a local edit is sampled: a window around the edit at each stage, so that an edit's cost follows its size.

The low-res stage samples a window holding the edit plus ``LOWRES_CONTEXT_MM`` of context (the known voxels there
anchor the new content; the rest of the low-res grid is left as it is known), the SR stage the edit's bounding box
plus ``SR_CONTEXT_MM``; ``MedSynPipeline`` samples both from the same noise a whole-grid run would see there. The
networks are convolutional except for GroupNorm statistics and attention, so a window gives nearly, not exactly, what
the whole volume would inside it. Anatomy channels nobody gave are therefore generated inside the low-res window only.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from medsyn.geometry import Grid
from medsyn.pipeline import Box

LOCAL_MAX_FRACTION = 0.5  # above this share of the grid, the whole volume is cheaper to reason about
SR_CONTEXT_MM = 16.0
LOWRES_CONTEXT_MM = 32.0  # a low-res voxel is ~4× an SR one: 3-4 voxels of context, as "only masked" inpainting pads


def sr_box(region: np.ndarray, grid: Grid, factor: int, levels: int, margin_mm: float = SR_CONTEXT_MM
           ) -> Optional[Box]:
    """SR box of ``region`` (bool on the SR ``grid``), or None when the whole grid should be used.

    Box edges fall on low-res voxel borders (multiples of ``factor``) so the box sees whole low-res voxels, and its
    in-plane size is a multiple of 2^(levels-1) so the network's in-plane down-sampling divides it.
    """
    in_plane = math.lcm(factor, 2 ** (levels - 1))
    return _window(region, grid, factor, (factor, in_plane, in_plane), margin_mm)


def lowres_window(region: np.ndarray, grid: Grid, factor: int, levels: int,
                  margin_mm: float = LOWRES_CONTEXT_MM) -> Optional[Box]:
    """Low-res window of ``region`` (bool on the SR ``grid``, ``factor`` × the low-res one), or None for the whole
    low-res grid; its in-plane size is a multiple of 2^(levels-1) for the low-res network's down-sampling."""
    depth, height, width = (n // factor for n in region.shape)
    blocks = region.reshape(depth, factor, height, factor, width, factor).any(axis=(1, 3, 5))
    lowres = grid.downsampled(factor)
    return _window(blocks, lowres, 1, (1, 2 ** (levels - 1), 2 ** (levels - 1)), margin_mm)


def _window(region: np.ndarray, grid: Grid, start_multiple: int, size_multiples: Sequence[int],
            margin_mm: float) -> Optional[Box]:
    """Bounding box of ``region`` plus ``margin_mm``, aligned; None when empty or not small enough to pay off."""
    if not region.any():
        return None
    indices = np.argwhere(region)
    margins = [math.ceil(margin_mm / s) for s in grid.spacing_xyz[::-1]]
    box = tuple(_aligned(int(low) - margin, int(high) + 1 + margin, length, multiple, start_multiple)
                for low, high, margin, length, multiple in zip(indices.min(axis=0), indices.max(axis=0), margins,
                                                                 grid.shape_zyx, size_multiples))
    box_voxels = math.prod(s.stop - s.start for s in box)
    return box if box_voxels < LOCAL_MAX_FRACTION * math.prod(grid.shape_zyx) else None


def _aligned(start: int, stop: int, length: int, multiple: int, start_multiple: int) -> slice:
    """[start, stop) clipped to the axis, start on a multiple of ``start_multiple``, size a multiple of
    ``multiple``."""
    start = max(start, 0) // start_multiple * start_multiple
    size = math.ceil((min(stop, length) - start) / multiple) * multiple
    if size >= length:
        return slice(0, length)
    start = min(start, length - size)
    return slice(start, start + size)
