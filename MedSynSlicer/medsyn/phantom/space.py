"""Millimetre coordinates of phantom voxels: every structure is defined in mm, so any grid shows the same patient.

The phantom frame has x toward the patient's Left, y toward Anterior and z toward Superior, origin at the centre of the
field of view. That is the index direction of the official atlas (LAS, LPS direction diag(1, -1, 1)), so array axes
(z, y, x) grow with these coordinates: the spine lies at low j, the heart at high i, dependent fluid at low j.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from medsyn.errors import MedSynError
from medsyn.geometry import Grid

FOV_XYZ_MM: tuple[float, float, float] = (316.0, 316.0, 292.0)  # the official atlas grid at 1 mm
LAS_DIRECTION: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def phantom_grid(shape_zyx: Sequence[int], spacing_xyz: Optional[Sequence[float]] = None) -> Grid:
    """Grid centred on the FOV centre; the spacing defaults to the atlas field of view divided by the shape."""
    shape = tuple(int(n) for n in shape_zyx)
    if len(shape) != 3 or min(shape) < 8:
        raise MedSynError(f"phantom shape {tuple(shape_zyx)} must be three sizes of at least 8 voxels")
    if spacing_xyz is None:
        spacing_xyz = tuple(fov / n for fov, n in zip(FOV_XYZ_MM, shape[::-1]))
    return Grid.centered(shape, spacing_xyz, LAS_DIRECTION)


@dataclass(frozen=True)
class Coords:
    """Voxel-centre positions (mm) along x (Left), y (Anterior) and z (Superior) of an axis-aligned grid."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray

    @classmethod
    def from_grid(cls, grid: Grid) -> "Coords":
        """Positions of ``grid``'s voxel centres; the grid must use the phantom's LAS direction."""
        if not np.allclose(grid.direction_lps, LAS_DIRECTION):
            raise ValueError(f"phantom grids use direction {LAS_DIRECTION}, got {grid.direction_lps}")
        depth, height, width = grid.shape_zyx
        (sx, sy, sz), (ox, oy, oz) = grid.spacing_xyz, grid.origin_lps
        # LPS y = oy - sy * j, and anterior is -LPS y.
        return cls(x=(ox + sx * np.arange(width)).astype(np.float32),
                   y=(-oy + sy * np.arange(height)).astype(np.float32),
                   z=(oz + sz * np.arange(depth)).astype(np.float32))

    @classmethod
    def lattice(cls, step_mm: float, extent_xyz_mm: Sequence[float] = FOV_XYZ_MM) -> "Coords":
        """A centred lattice with ``step_mm`` spacing over ``extent``; independent of any output grid."""
        counts = [int(np.ceil(extent / step_mm)) for extent in extent_xyz_mm]
        return cls(*((np.arange(n) - (n - 1) / 2.0).astype(np.float32) * np.float32(step_mm) for n in counts))

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.z.size, self.y.size, self.x.size)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """(x, y, z) voxel size in mm."""
        return tuple(float(a[1] - a[0]) if a.size > 1 else 1.0 for a in (self.x, self.y, self.z))

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    @property
    def zz(self) -> np.ndarray:
        return self.z[:, None, None]

    @property
    def yy(self) -> np.ndarray:
        return self.y[None, :, None]

    @property
    def xx(self) -> np.ndarray:
        return self.x[None, None, :]

    def box(self, low_xyz: Sequence[float], high_xyz: Sequence[float]) -> tuple[tuple[slice, slice, slice], "Coords"]:
        """Array slices (z, y, x) of the voxels whose centres lie in the mm box, and their coordinates."""
        slices = tuple(_index_range(axis, low, high) for axis, low, high in
                       zip((self.z, self.y, self.x), low_xyz[::-1], high_xyz[::-1]))
        return slices, Coords(self.x[slices[2]], self.y[slices[1]], self.z[slices[0]])

    def bounding_box(self, mask: np.ndarray) -> tuple[tuple[slice, slice, slice], "Coords"]:
        """Slices and coordinates of the smallest box holding every true voxel of ``mask`` (empty box if none)."""
        slices = []
        for axis in range(3):
            hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
            slices.append(slice(int(hits[0]), int(hits[-1]) + 1) if hits.size else slice(0, 0))
        return tuple(slices), Coords(self.x[slices[2]], self.y[slices[1]], self.z[slices[0]])

    def points(self, mask: np.ndarray) -> np.ndarray:
        """(N, 3) xyz positions of the voxels where ``mask`` is true."""
        k, j, i = np.nonzero(mask)
        return np.stack([self.x[i], self.y[j], self.z[k]], axis=1)


def _index_range(axis: np.ndarray, low: float, high: float) -> slice:
    return slice(int(np.searchsorted(axis, low, side="left")), int(np.searchsorted(axis, high, side="right")))
