"""Seam blending: the generated side of a kept/generated border loses its low-frequency step, fading to nothing at
the blend width; kept voxels, voxels beyond the width and voxels that are not free never change."""
from __future__ import annotations

import numpy as np
import pytest

from medsyn.editing.seam import blend_seam
from medsyn.errors import MedSynError

SPACING_XYZ = (2.0, 2.0, 2.5)


def _border_case(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Kept slices 10… at 100 HU, generated slices …9 at -50 HU, both with voxel noise of 20 HU."""
    rng = np.random.default_rng(seed)
    shape = (20, 16, 16)
    known = np.zeros(shape, dtype=bool)
    known[10:] = True
    values = (100 + 20 * rng.standard_normal(shape)).astype(np.int16)
    generated = (-50 + 20 * rng.standard_normal(shape)).astype(np.float32)
    return generated, known, values


def test_the_border_step_fades_out_over_the_blend_width():
    generated, known, values = _border_case()
    blended = blend_seam(generated, known, values, SPACING_XYZ, width_mm=10.0)
    correction = (blended - generated).mean(axis=(1, 2))
    assert np.abs(blended[9] - values[10]).mean() < 30  # was 150 HU apart; what is left is the voxel noise
    assert correction[9] == pytest.approx(150, abs=10)
    assert correction[9] > correction[8] > correction[7] > correction[6] > correction[5] > 0  # 10 mm = 5 voxels
    assert np.array_equal(blended[:5], generated[:5])  # beyond the width: untouched
    # Between slices the blended side changes smoothly: no new seam one voxel further in.
    assert np.abs(np.diff(correction[5:10])).max() < 40


def test_only_free_voxels_change_and_zero_width_is_off():
    generated, known, values = _border_case()
    free = np.ones(known.shape, dtype=bool)
    free[:, :, :4] = False  # e.g. air filled in beyond the model's field of view
    blended = blend_seam(generated, known, values, SPACING_XYZ, 10.0, free=free)
    assert np.array_equal(blended[:, :, :4], generated[:, :, :4])
    assert not np.array_equal(blended[:, :, 4:], generated[:, :, 4:])
    assert np.array_equal(blend_seam(generated, known, values, SPACING_XYZ, 0.0), generated)
    assert np.array_equal(blend_seam(generated, np.ones_like(known), values, SPACING_XYZ, 10.0), generated)
    with pytest.raises(MedSynError, match="seam blend width"):
        blend_seam(generated, known, values, SPACING_XYZ, -1.0)
