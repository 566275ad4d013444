"""Small chest-like volumes on arbitrary geometry (LPS, RAS, oblique) for the editing tests.

Structures are defined in patient millimetres, so every orientation shows the same patient.
"""
from __future__ import annotations

import math

import numpy as np

from medsyn.geometry import Grid

LPS = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
RAS = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # i toward Right, j toward Anterior, as NIfTI RAS files store


def oblique(degrees_z: float = 20.0, degrees_x: float = 10.0) -> tuple[float, ...]:
    """Direction cosines rotated about S, then about L."""
    a, b = math.radians(degrees_z), math.radians(degrees_x)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return tuple((rx @ rz).flatten())


def centred_grid(shape_zyx, spacing_xyz, direction, centre_lps=(0.0, 0.0, 0.0)) -> Grid:
    """A grid of ``shape`` whose field-of-view centre lies at ``centre_lps``."""
    grid = Grid.centered(shape_zyx, spacing_xyz, direction)
    return Grid(grid.shape_zyx, grid.spacing_xyz, tuple(np.add(grid.origin_lps, centre_lps)), grid.direction_lps)


def voxel_lps(grid: Grid) -> np.ndarray:
    """(z, y, x, 3) LPS positions of the voxel centres."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in grid.shape_zyx), indexing="ij")
    ijk1 = np.stack([i, j, k, np.ones_like(i)], axis=-1).astype(np.float64)
    return (ijk1 @ grid.index_to_lps_affine().T)[..., :3]


def chest_ct(grid: Grid, dtype=np.int16, centre_lps=(0.0, 0.0, 0.0), seed: int = 0) -> np.ndarray:
    """Air around an elliptic body (soft tissue) holding two lungs, plus noise; HU in ``dtype``."""
    p = voxel_lps(grid) - np.asarray(centre_lps)
    body = (p[..., 0] / 22.0) ** 2 + (p[..., 1] / 17.0) ** 2 < 1.0
    lungs = ((np.abs(p[..., 0]) - 9.0) / 7.0) ** 2 + (p[..., 1] / 11.0) ** 2 + (p[..., 2] / 12.0) ** 2 < 1.0
    hu = np.where(body, 40.0, -1000.0)
    hu = np.where(body & lungs, -850.0, hu)
    hu = hu + np.random.default_rng(seed).normal(0.0, 20.0, hu.shape)
    if np.issubdtype(dtype, np.integer):
        return np.rint(hu).astype(dtype)
    return (hu + 0.25).astype(dtype)  # fractional values: a float round trip must keep them bit for bit


def ball(grid: Grid, centre_lps, radius_mm: float) -> np.ndarray:
    """Boolean sphere in patient space."""
    return np.linalg.norm(voxel_lps(grid) - np.asarray(centre_lps), axis=-1) < radius_mm
