"""Seam blending: take the low-frequency intensity step out of the border between kept and generated CT voxels.

Known-region sampling fixes the kept voxels exactly, but a small model's generated side can still meet them at a
different mean intensity (a visible seam across an outpainting border). The step is measured on the generated
voxels that touch kept ones, smoothed along that border so noise does not count, and added to the generated side
with a weight falling linearly from 1 at the border to 0 at ``width_mm``: the same idea as feathered compositing in
image editors, applied only to generated voxels, so every kept voxel stays byte-identical.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage

from ..errors import MedSynError

SIX = ndimage.generate_binary_structure(3, 1).astype(np.float32)  # a voxel's 6 face neighbours (and itself: 0 there)
OUTPAINT_SEAM_BLEND_MM = 16.0  # outpainting's default: its border cuts straight through the body
BORDER_SMOOTHING_MM = 4.0  # Gaussian sigma along the border: averages out voxel noise, keeps the step's slow changes


def check_blend_width(width_mm: float) -> None:
    """A blend width is 0 (off) or a positive number of mm; NaN is neither."""
    if not width_mm >= 0:
        raise MedSynError(f"seam blend width must be 0 (off) or a positive number of mm, got {width_mm}")


def blend_seam(generated: np.ndarray, known: np.ndarray, known_values: np.ndarray,
               spacing_xyz: tuple[float, float, float], width_mm: float,
               free: Optional[np.ndarray] = None) -> np.ndarray:
    """``generated`` (float, same shape as ``known``) with the border step faded out over ``width_mm``.

    Only ``free`` voxels (default: every unknown one) change; fills that are not the model's (air beyond its field
    of view) stay as they are. Unchanged when ``width_mm`` is 0 or nothing (or everything) is known. Limits: a true
    edge that runs along the border (a lung surface exactly on it) is softened on the generated side.
    """
    check_blend_width(width_mm)
    if width_mm == 0 or not known.any() or known.all():
        return generated
    generated = np.asarray(generated, dtype=np.float32)
    free = ~known if free is None else free & ~known
    values = np.where(known, known_values, 0).astype(np.float32)
    neighbours = ndimage.convolve(known.astype(np.float32), SIX, mode="constant")
    border = free & (neighbours > 0)
    kept_mean = ndimage.convolve(values, SIX, mode="constant")[border] / neighbours[border]
    step = np.zeros_like(generated)
    step[border] = kept_mean - generated[border]
    sigma = [BORDER_SMOOTHING_MM / spacing for spacing in spacing_xyz[::-1]]
    weight_sum = ndimage.gaussian_filter(border.astype(np.float32), sigma)
    smooth = ndimage.gaussian_filter(step, sigma)
    reached = weight_sum > 1e-3 * weight_sum.max()
    smooth[reached] /= weight_sum[reached]
    smooth[~reached] = 0.0
    reach = max(1, int(round(width_mm / min(spacing_xyz))))
    distance = ndimage.distance_transform_cdt(~known, metric="chessboard").astype(np.float32)
    fade = np.clip(1.0 - (distance - 1.0) / reach, 0.0, 1.0)
    fade[~free] = 0.0
    return generated + fade * smooth
