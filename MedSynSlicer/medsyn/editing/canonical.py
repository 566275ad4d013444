"""Where the model's canonical grid goes on a user's volume: its shape, spacing and direction come from the model card,
its centre from the lungs (or the body) found by thresholding, from the given anatomy, or from a user's point.

The grid is only translated, never rotated or scaled to the patient: there is no registration to the training atlas.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from medsyn.geometry import Grid

from .resample import index_to_lps, lps_to_index, same_axes

BODY_MIN_HU = -500.0  # soft tissue and denser: the body
LUNG_MAX_HU = -400.0  # aerated lung and outside air
MIN_LUNG_VOXELS = 8


def canonical_grid(model_grid: Grid, reference: Grid, centre_lps: Sequence[float]) -> Grid:
    """The model grid with its centre at ``centre_lps``.

    A reference already on a model-shaped lattice (e.g. a previous output) is used as it is; otherwise, when the
    reference shares the model's spacing and direction, the centre snaps to whole reference voxels so that copying
    between the two grids needs no interpolation.
    """
    if reference.shape_zyx == model_grid.shape_zyx and same_axes(reference, model_grid):
        return reference
    placed = _centred_at(model_grid, np.asarray(centre_lps, dtype=np.float64))
    if not same_axes(placed, reference):
        return placed
    origin_ijk = np.rint(lps_to_index(reference, np.asarray([placed.origin_lps]))[0])
    return replace(placed, origin_lps=tuple(index_to_lps(reference, origin_ijk[np.newaxis])[0]))


def fov_centre_lps(grid: Grid) -> np.ndarray:
    """LPS position of the centre of the grid's field of view."""
    return index_to_lps(grid, ((np.asarray(grid.shape_zyx[::-1], dtype=np.float64) - 1.0) / 2.0)[np.newaxis])[0]


def centroid_lps(region: np.ndarray, grid: Grid) -> np.ndarray:
    """LPS centroid of the voxels of a non-empty boolean (z, y, x) region."""
    kji = np.argwhere(region).mean(axis=0)
    return index_to_lps(grid, kji[::-1][np.newaxis])[0]


def ct_centre_lps(ct_hu: np.ndarray, grid: Grid) -> np.ndarray:
    """Centre of the lungs of a CT, else of its body, else of its field of view."""
    lungs = _enclosed_air(ct_hu <= LUNG_MAX_HU, grid)
    if lungs.sum() >= MIN_LUNG_VOXELS:
        return centroid_lps(lungs, grid)
    body = _largest_component(ct_hu > BODY_MIN_HU)
    if body.any():
        return centroid_lps(body, grid)
    return fov_centre_lps(grid)


def anatomy_centre_lps(labels: np.ndarray, grid: Grid) -> np.ndarray:
    """Centre of the labelled voxels of an anatomy map, else of its field of view."""
    return centroid_lps(labels > 0, grid) if labels.any() else fov_centre_lps(grid)


def choose_centre(user_centre_lps: Optional[Sequence[float]], automatic: np.ndarray) -> np.ndarray:
    """A user's centre wins over the automatic one."""
    return automatic if user_centre_lps is None else np.asarray(user_centre_lps, dtype=np.float64)


def _centred_at(model_grid: Grid, centre_lps: np.ndarray) -> Grid:
    shift = centre_lps - fov_centre_lps(model_grid)
    return replace(model_grid, origin_lps=tuple(np.asarray(model_grid.origin_lps) + shift))


def _largest_component(region: np.ndarray) -> np.ndarray:
    if not region.any():
        return region
    labels = sitk.GetArrayFromImage(sitk.RelabelComponent(sitk.ConnectedComponent(
        sitk.GetImageFromArray(region.astype(np.uint8)))))
    return labels == 1


def _enclosed_air(air: np.ndarray, grid: Grid) -> np.ndarray:
    """Air not connected to the sides of the scan: the lungs (and airways), not the air around the patient.

    Only the sides count because the lungs and trachea often reach the top and bottom slices of a chest CT; the
    slice axis is the index axis closest to superior, which keeps oblique scans working.
    """
    if not air.any():
        return air
    components = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(air.astype(np.uint8))))
    slice_axis = 2 - int(np.argmax(np.abs(grid.direction_matrix()[2])))  # array axis of the most superior index axis
    outside: set[int] = set()
    for axis in range(3):
        if axis != slice_axis:
            outside.update(np.unique(np.take(components, [0, -1], axis=axis)).tolist())
    return (components > 0) & ~np.isin(components, list(outside))
