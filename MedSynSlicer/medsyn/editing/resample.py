"""Moving volumes between grids in patient space: linear for CT, nearest for labels, exact copies on shared lattices.

Every grid is placed in LPS millimetres, so any orientation (LPS, RAS, oblique) and spacing maps onto any other.
When two grids share spacing and direction and are shifted by whole voxels (a previous output, a Slicer segmentation
cropped to its extent, an outpainting canvas), voxels are copied instead of interpolated, so nothing changes by a bit.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import SimpleITK as sitk

from medsyn.geometry import Grid

_INTERPOLATORS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}
_AXIS_TOL = 1e-5  # relative spacing / absolute direction tolerance: NIfTI stores float32
_SHIFT_TOL = 1e-3  # voxels


def same_axes(a: Grid, b: Grid) -> bool:
    """True when both grids have the same spacing and direction (their lattices differ at most by a shift)."""
    return bool(np.allclose(a.spacing_xyz, b.spacing_xyz, rtol=_AXIS_TOL, atol=0.0)
                and np.allclose(a.direction_lps, b.direction_lps, rtol=0.0, atol=_AXIS_TOL))


def lps_to_index(grid: Grid, points_lps: np.ndarray) -> np.ndarray:
    """Continuous (i, j, k) indices of (N, 3) LPS points on ``grid``."""
    inverse = np.linalg.inv(grid.index_to_lps_affine())
    return (np.c_[points_lps, np.ones(len(points_lps))] @ inverse.T)[:, :3]


def index_to_lps(grid: Grid, indices_ijk: np.ndarray) -> np.ndarray:
    """LPS points of (N, 3) continuous (i, j, k) indices on ``grid``."""
    return (np.c_[indices_ijk, np.ones(len(indices_ijk))] @ grid.index_to_lps_affine().T)[:, :3]


def lattice_offset(source: Grid, target: Grid) -> Optional[tuple[int, int, int]]:
    """(k, j, i) index on ``target`` of ``source``'s voxel 0 when the lattices differ by whole voxels, else None."""
    if not same_axes(source, target):
        return None
    ijk = lps_to_index(target, np.asarray([source.origin_lps]))[0]
    rounded = np.rint(ijk)
    if np.max(np.abs(ijk - rounded)) > _SHIFT_TOL:
        return None
    return tuple(int(v) for v in rounded[::-1])


def resample(array: np.ndarray, source: Grid, target: Grid, interpolation: str, default: float) -> np.ndarray:
    """``array`` (z, y, x on ``source``) seen on ``target``; voxels outside the source's field of view get ``default``.

    ``linear`` returns float32 (float64 for float64 input, so no value loses bits), ``nearest`` keeps the dtype.
    """
    values = _sitk_compatible(array, interpolation)
    offset = lattice_offset(source, target)
    if offset is not None:
        out = _copy_shifted(values, offset, target.shape_zyx, default)
    else:
        image = sitk.GetImageFromArray(values)
        source.apply_to_sitk(image)
        resampler = sitk.ResampleImageFilter()
        resampler.SetSize(tuple(reversed(target.shape_zyx)))
        resampler.SetOutputSpacing(target.spacing_xyz)
        resampler.SetOutputOrigin(target.origin_lps)
        resampler.SetOutputDirection(target.direction_lps)
        resampler.SetInterpolator(_INTERPOLATORS[interpolation])
        resampler.SetDefaultPixelValue(float(default))
        out = sitk.GetArrayFromImage(resampler.Execute(image))
    return out.astype(array.dtype, copy=False) if interpolation == "nearest" else out


def field_of_view(source: Grid, target: Grid) -> np.ndarray:
    """Boolean (z, y, x) on ``target``: voxels that lie inside ``source``'s field of view."""
    return resample(np.ones(source.shape_zyx, dtype=np.float32), source, target, "linear", 0.0) > 0.5


def covered(known: np.ndarray, source: Grid, target: Grid) -> np.ndarray:
    """Boolean on ``target``: voxels whose interpolation draws on known ``source`` voxels only (a conservative map)."""
    return resample(known.astype(np.float32), source, target, "linear", 0.0) > 1.0 - 1e-4


def touched(region: np.ndarray, source: Grid, target: Grid) -> np.ndarray:
    """Boolean on ``target``: voxels whose interpolation draws on any ``region`` voxel (a generous map)."""
    return resample(region.astype(np.float32), source, target, "linear", 0.0) > 1e-4


def _sitk_compatible(array: np.ndarray, interpolation: str) -> np.ndarray:
    if interpolation not in _INTERPOLATORS:
        raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATORS)}, got {interpolation!r}")
    if interpolation == "linear":
        return np.ascontiguousarray(array, dtype=np.float64 if array.dtype == np.float64 else np.float32)
    return np.ascontiguousarray(array.astype(np.uint8) if array.dtype == bool else array)


def _copy_shifted(array: np.ndarray, offset_kji: tuple[int, int, int], shape: tuple[int, int, int],
                  default: float) -> np.ndarray:
    """Place ``array`` with its voxel 0 at ``offset_kji`` of an otherwise ``default`` volume of ``shape``."""
    out = np.full(shape, default, dtype=array.dtype)
    target_slices, source_slices = [], []
    for start, size, length in zip(offset_kji, array.shape, shape):
        low, high = max(start, 0), min(start + size, length)
        if low >= high:
            return out
        target_slices.append(slice(low, high))
        source_slices.append(slice(low - start, high - start))
    out[tuple(target_slices)] = array[tuple(source_slices)]
    return out
