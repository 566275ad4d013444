"""The final composite on the user's grid: known voxels are the user's own values, untouched; the rest is generated.

Compositing on the output grid (not on the model's) is what keeps every voxel outside an edit byte-identical: those
voxels never go through resampling, encoding or a dtype change.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from medsyn.codec import DecodedVolume
from medsyn.geometry import Grid

from .known import KnownChannel
from .resample import field_of_view, resample
from .seam import blend_seam


def cast_like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Generated values in the dtype of the user's volume: rounded and saturated for integers, cast for floats."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def composite(channel: Optional[KnownChannel], generated: np.ndarray, default_dtype: np.dtype) -> np.ndarray:
    """``where(known, user values, generated)``; without user values the generated volume in ``default_dtype``."""
    if channel is None:
        return cast_like(generated, default_dtype)
    return np.where(channel.known, channel.values, cast_like(generated, channel.values.dtype))


def to_output_grid(decoded: DecodedVolume, canonical: Grid, grid: Grid, channels: dict[str, KnownChannel],
                   hu_window: tuple[float, float], seam_blend_mm: float = 0.0) -> dict[str, np.ndarray]:
    """CT (linear) and label maps (nearest) of a canonical result on ``grid``, composited with the known channels;
    the generated CT first has its step at the border with the kept CT faded out over ``seam_blend_mm``."""
    generated_ct = resample(decoded.ct_hu, canonical, grid, "linear", hu_window[0])
    known_ct = channels.get("ct")
    if known_ct is not None and seam_blend_mm:
        generated_ct = blend_seam(generated_ct, known_ct.known, known_ct.values, grid.spacing_xyz, seam_blend_mm,
                                  free=field_of_view(canonical, grid))
    arrays = {"ct": composite(known_ct, generated_ct, np.int16)}
    for role in ("lobes", "airway", "vessels"):
        generated = resample(getattr(decoded, role), canonical, grid, "nearest", 0)
        arrays[role] = composite(channels.get(role), generated, np.uint8)
    return arrays
