"""The outpainting canvas: the field of view the result should have, as a reference volume's grid or the input's grid
grown by margins. Margins keep the input's lattice, so every input voxel is copied into the canvas, not interpolated."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from medsyn.errors import MedSynError
from medsyn.geometry import Grid

from .resample import index_to_lps


def canvas_from_margin(grid: Grid, margin_mm: Sequence[float]) -> Grid:
    """``grid`` grown on both sides by ``margin_mm`` along its i, j, k axes (x, y, z for axis-aligned volumes)."""
    margins = np.asarray(margin_mm, dtype=np.float64)
    if margins.shape != (3,) or not np.all(np.isfinite(margins)) or (margins < 0).any() or not margins.any():
        raise MedSynError(f"margin {tuple(margin_mm)} must be three non-negative millimetre values X,Y,Z, not all 0")
    pad_ijk = np.ceil(margins / np.asarray(grid.spacing_xyz) - 1e-6).astype(int)
    origin = index_to_lps(grid, -pad_ijk[np.newaxis].astype(np.float64))[0]
    shape = tuple(n + 2 * pad for n, pad in zip(grid.shape_zyx, pad_ijk[::-1]))
    return Grid(shape, grid.spacing_xyz, tuple(origin), grid.direction_lps)
