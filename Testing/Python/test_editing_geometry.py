"""Editing geometry and the sampler extensions, without a model: resampling between orientations, exact copies on
shared lattices, placing the canonical grid, finding the lungs, canvases, feathering and the RePaint schedule."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from editing_volumes import LPS, RAS, ball, centred_grid, chest_ct, oblique
from medsyn.diffusion.ddim import ddim_sample, resampling_times
from medsyn.diffusion.known_region import KnownRegion, Resampling, feather
from medsyn.editing.canonical import canonical_grid, ct_centre_lps, fov_centre_lps
from medsyn.editing.canvas import canvas_from_margin
from medsyn.editing.known import KnownChannel, KnownVolume, encode_known, known_regions
from medsyn.editing.edit_window import lowres_window, sr_box
from medsyn.editing.resample import field_of_view, lattice_offset, resample
from medsyn.errors import MedSynError
from medsyn.geometry import Grid

MODEL_GRID = Grid((8, 16, 16), (3.0, 2.5, 2.0), (-24.0, 20.0, -8.0), (1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))


@pytest.mark.parametrize("direction", [RAS, oblique()], ids=["ras", "oblique"])
def test_labels_survive_a_round_trip_through_another_orientation(direction):
    source = centred_grid((10, 20, 20), (2.0, 2.0, 2.0), LPS)
    labels = (ball(source, (3.0, -2.0, 1.0), 9.0) * 3).astype(np.uint8)
    other = centred_grid((14, 26, 26), (2.0, 2.0, 2.0), direction)
    moved = resample(labels, source, other, "nearest", 0)
    assert moved.dtype == np.uint8 and set(np.unique(moved)) == {0, 3}
    back = resample(moved, other, source, "nearest", 0)
    assert (back != labels).mean() < 0.03  # only voxels on the sphere's surface may flip


def test_shared_lattice_copies_exactly_and_fills_outside():
    source = centred_grid((4, 5, 6), (1.5, 1.5, 2.0), oblique())
    shifted_origin = tuple(source.index_to_lps_affine() @ np.array([-2.0, -1.0, -3.0, 1.0]))[:3]
    target = Grid((10, 9, 12), source.spacing_xyz, shifted_origin, source.direction_lps)
    assert lattice_offset(source, target) == (3, 1, 2)
    values = np.random.default_rng(0).normal(size=source.shape_zyx)  # float64: no bit may be lost
    moved = resample(values, source, target, "linear", -7.0)
    assert moved.dtype == np.float64
    assert np.array_equal(moved[3:7, 1:6, 2:8], values) and np.all(moved[:3] == -7.0)
    half_voxel = Grid(target.shape_zyx, target.spacing_xyz, tuple(np.add(shifted_origin, (0.75, 0, 0))),
                      target.direction_lps)
    assert lattice_offset(source, half_voxel) is None


def test_canonical_grid_is_centred_and_snapped_to_the_reference_lattice():
    reference = Grid((30, 40, 40), (3.0, 2.5, 2.0), (-50.3, 61.1, -30.7), MODEL_GRID.direction_lps)
    placed = canonical_grid(MODEL_GRID, reference, (1.0, 2.0, 3.0))
    assert placed.shape_zyx == MODEL_GRID.shape_zyx and lattice_offset(placed, reference) is not None
    assert np.all(np.abs(fov_centre_lps(placed) - (1.0, 2.0, 3.0)) <= np.asarray(reference.spacing_xyz) / 2)
    tilted = canonical_grid(MODEL_GRID, centred_grid((30, 40, 40), (1.0, 1.0, 1.0), oblique()), (1.0, 2.0, 3.0))
    assert np.allclose(fov_centre_lps(tilted), (1.0, 2.0, 3.0))
    assert canonical_grid(MODEL_GRID, MODEL_GRID, (50.0, 50.0, 50.0)) == MODEL_GRID  # already canonical: kept


@pytest.mark.parametrize("direction", [LPS, RAS, oblique()], ids=["lps", "ras", "oblique"])
def test_lungs_are_found_whatever_the_orientation_and_fov(direction):
    patient_centre = np.array([-12.0, 7.0, 5.0])
    grid = centred_grid((18, 36, 40), (1.5, 1.5, 1.6), direction)  # FOV centre is not the patient's
    centre = ct_centre_lps(chest_ct(grid, centre_lps=patient_centre), grid)
    assert np.linalg.norm(centre - patient_centre) < 2.0


def test_margin_canvas_keeps_the_input_lattice():
    grid = centred_grid((6, 12, 12), (3.0, 2.5, 2.0), oblique())
    canvas = canvas_from_margin(grid, (6.0, 5.0, 2.0))
    assert canvas.shape_zyx == (8, 16, 16) and lattice_offset(grid, canvas) == (1, 2, 2)
    assert field_of_view(grid, canvas).sum() == np.prod(grid.shape_zyx)
    with pytest.raises(MedSynError):
        canvas_from_margin(grid, (0.0, 0.0, 0.0))


def test_known_region_is_coarsened_conservatively_and_feathered_inward():
    known = np.ones((4, 4, 8, 8), dtype=bool)
    known[0, 1, 3, 3] = False  # one unknown CT voxel: its whole 2x2x2 block must be free at low res
    values = np.zeros((4, 4, 8, 8), dtype=np.float32)
    low, full = known_regions(KnownVolume(values, known), factor=2)
    assert torch.equal(full.mask[0], torch.from_numpy(known))
    assert low.mask.shape == (1, 4, 2, 4, 4) and (~low.mask).sum() == 1 and not low.mask[0, 0, 0, 1, 1]
    mask = torch.ones(1, 1, 1, 1, 7, dtype=torch.bool)
    mask[..., 0] = False
    weights = feather(mask, 3)[0, 0, 0, 0]
    assert torch.allclose(weights, torch.tensor([0.0, 1 / 3, 2 / 3, 1.0, 1.0, 1.0, 1.0]))


def test_ct_known_outside_an_edit_maps_onto_the_canonical_grid():
    grid = centred_grid((10, 20, 20), (2.0, 2.0, 1.8), RAS)
    ct = chest_ct(grid)
    edit = ball(grid, (0.0, 0.0, 0.0), 5.0)
    volume = encode_known({"ct": KnownChannel(ct, ~edit)}, grid, MODEL_GRID, (-1024.0, 600.0))
    assert not volume.known[1:].any()  # anatomy free
    freed = ~volume.known[0] & field_of_view(grid, MODEL_GRID)
    assert ball(MODEL_GRID, (0.0, 0.0, 0.0), 5.0)[freed].mean() > 0.5  # the edit, slightly grown, is free
    assert volume.values[0][volume.known[0]].min() >= -1.0 and volume.values[0].max() <= 1.0


def test_resampling_schedule_walks_each_block_repeatedly_and_keeps_known_values():
    grid = [1000, 750, 500, 250, 0]
    assert resampling_times(grid, None) == grid
    assert resampling_times(grid, Resampling(2, 2)) == [1000, 750, 500, 1000, 750, 500, 250, 0]
    seen, events = [], []

    def denoiser(x, t):
        seen.append(int(t[0]))
        return torch.zeros_like(x)

    values = torch.full((1, 4, 2, 2, 2), 0.5)
    channel_1 = torch.tensor([False, True, False, False]).view(1, 4, 1, 1, 1)
    known = KnownRegion(channel_1, values, Resampling(2, 2, seed=1))
    out = ddim_sample(denoiser, torch.randn(1, 4, 2, 2, 2), 4, known=known, callback=events.append)
    assert seen == [1000, 750, 1000, 750, 500, 250, 0]
    assert [e.step for e in events] == list(range(1, 8)) and events[-1].total == 7
    assert torch.all(out[:, 1] == 0.5) and torch.all(out[:, 0] == 0.0)


def test_sr_box_is_aligned_divisible_and_only_used_when_small():
    grid = Grid((8, 32, 32), (3.0, 2.5, 2.0), (0.0, 0.0, 0.0), LPS)
    region = np.zeros(grid.shape_zyx, dtype=bool)
    region[3:5, 14:17, 15:18] = True
    box = sr_box(region, grid, factor=2, levels=3, margin_mm=6.0)
    for axis, (s, multiple) in enumerate(zip(box, (2, 4, 4))):
        assert s.start % 2 == 0 and (s.stop - s.start) % multiple == 0
        covered = np.argwhere(region)[:, axis]
        assert s.start <= covered.min() - 2 and covered.max() + 2 < s.stop  # at least a 6 mm margin
    region[:, 2:30, 2:30] = True
    assert sr_box(region, grid, factor=2, levels=3) is None


def test_lowres_window_covers_the_edit_with_context_and_divides_the_network():
    grid = Grid((16, 64, 64), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), LPS)  # low-res grid (4, 16, 16) at 8 mm
    region = np.zeros(grid.shape_zyx, dtype=bool)
    region[5:7, 30:35, 20:23] = True  # low-res blocks z 1, y 7-8, x 5
    window = lowres_window(region, grid, factor=4, levels=3, margin_mm=8.0)
    assert window[0] == slice(0, 3)  # block 1 ± 1 voxel of context, clipped at 0
    for s, covered in zip(window[1:], ((7, 8), (5, 5))):
        assert (s.stop - s.start) % 4 == 0 and s.start <= covered[0] - 1 and covered[1] + 1 < s.stop
    region[:, 4:60, 4:60] = True
    assert lowres_window(region, grid, factor=4, levels=3) is None
