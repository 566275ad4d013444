"""Random fields: smooth tissue texture defined in mm (the same on every grid) and per-voxel CT noise."""
from __future__ import annotations

from typing import Union

import numpy as np
from scipy import ndimage

from medsyn.phantom.space import FOV_XYZ_MM, Coords

_FIELD_MARGIN_MM = 40.0  # the texture lattice overhangs the atlas FOV so slightly larger grids still get texture


def independent_streams(rng: Union[np.random.Generator, int], count: int) -> list[np.random.Generator]:
    """``count`` generators seeded from ``rng``, so drawing more from one never shifts the others."""
    return [np.random.default_rng(int(seed)) for seed in np.random.default_rng(rng).integers(2 ** 63, size=count)]


def smooth_field(rng: np.random.Generator, coords: Coords, correlation_mm: float) -> np.ndarray:
    """Zero-mean Gaussian field (std about 0.9) with blobs about ``correlation_mm`` across, sampled at ``coords``.

    The random numbers live on a fixed mm lattice, so one seed gives the same pattern at 64^3 and at 256^3.
    """
    lattice = Coords.lattice(correlation_mm / 2.0, [fov + 2 * _FIELD_MARGIN_MM for fov in FOV_XYZ_MM])
    coarse = ndimage.gaussian_filter(rng.standard_normal(lattice.shape), sigma=1.0, mode="wrap")
    coarse = (coarse / coarse.std()).astype(np.float32)
    # Separable linear interpolation as three small matrix products: much cheaper than gathers on a 256^3 grid.
    field = np.tensordot(_interpolation_matrix(lattice.z, coords.z), coarse, axes=(1, 0))
    field = np.matmul(_interpolation_matrix(lattice.y, coords.y), field)
    depth, height, columns = field.shape
    return (field.reshape(-1, columns) @ _interpolation_matrix(lattice.x, coords.x).T).reshape(depth, height, -1)


def ct_noise(rng: np.random.Generator, shape: tuple[int, int, int], sigma_hu: float) -> np.ndarray:
    """Slightly correlated noise of standard deviation ``sigma_hu``, as reconstruction kernels leave it.

    Each voxel sums a 2x2x2 block of uniform numbers: near-Gaussian, neighbour correlation 0.5 per axis, and several
    times cheaper than a Gaussian filter over a 256^3 volume.
    """
    depth, height, width = shape
    noise = rng.random((depth + 1, height + 1, width + 1), dtype=np.float32)
    noise = noise[1:] + noise[:-1]
    noise = noise[:, 1:] + noise[:, :-1]
    noise = noise[:, :, 1:] + noise[:, :, :-1]
    noise -= 4.0  # mean of 8 uniforms
    noise *= sigma_hu / np.sqrt(8.0 / 12.0)
    return noise


def _interpolation_matrix(lattice_mm: np.ndarray, positions_mm: np.ndarray) -> np.ndarray:
    """(len(positions), len(lattice)) weights of linear interpolation from lattice nodes to positions."""
    step = float(lattice_mm[1] - lattice_mm[0])
    where = np.clip((positions_mm - lattice_mm[0]) / step, 0.0, lattice_mm.size - 1.000001)
    low = np.floor(where).astype(np.intp)
    weight = (where - low).astype(np.float32)
    matrix = np.zeros((positions_mm.size, lattice_mm.size), dtype=np.float32)
    rows = np.arange(positions_mm.size)
    matrix[rows, low] = 1.0 - weight
    matrix[rows, low + 1] = weight
    return matrix
