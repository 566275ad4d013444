"""Grid geometry (LPS/RAS, SimpleITK, nibabel, down-sampling) and the model-space encodings."""
from __future__ import annotations

import itertools
import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from safetensors.torch import load_file

from medsyn.codec import (
    DecodedVolume,
    decode_volume,
    encode_volume,
    hu_to_model,
    lobes_to_model,
    lowres_to_sr_condition,
    mask_to_model,
    model_to_hu,
    model_to_lobes,
    model_to_mask,
)
from medsyn.errors import MedSynError
from medsyn.geometry import Grid, to_lps_array
from medsyn.io.volumes import write_volume

LAS = (1, 0, 0, 0, -1, 0, 0, 0, 1)  # the official atlas: i -> Left, j -> Anterior, k -> Superior
PERMUTED = (0, 0, -1, -1, 0, 0, 0, 1, 0)  # i -> Anterior, j -> Superior, k -> Right


def _grid(direction=LAS) -> Grid:
    return Grid((5, 6, 7), (0.8, 1.25, 2.5), (12.0, -30.0, 40.5), direction)


def _world_lps(grid: Grid) -> np.ndarray:
    """LPS position of every voxel, shape (z, y, x, 3), computed by hand from the definition."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in grid.shape_zyx), indexing="ij")
    steps = grid.direction_matrix() * np.asarray(grid.spacing_xyz)
    return np.asarray(grid.origin_lps) + np.stack([i, j, k], axis=-1) @ steps.T


def test_index_to_lps_affine_places_voxels_like_simpleitk():
    grid = _grid(PERMUTED)
    image = sitk.Image(list(reversed(grid.shape_zyx)), sitk.sitkUInt8)
    grid.apply_to_sitk(image)
    affine = grid.index_to_lps_affine()
    for index in [(0, 0, 0), (6, 0, 0), (1, 5, 4), (6, 5, 4)]:
        np.testing.assert_allclose(affine @ (*index, 1), (*image.TransformIndexToPhysicalPoint(index), 1), atol=1e-9)
    assert Grid.from_sitk(image) == grid


def test_ras_affine_matches_nibabel_reading_of_written_nifti(tmp_path):
    grid = _grid(PERMUTED)
    write_volume(tmp_path / "v.nii.gz", np.zeros(grid.shape_zyx, np.int16), grid)
    nifti = nib.load(tmp_path / "v.nii.gz")
    assert nifti.shape == grid.shape_zyx[::-1]  # nibabel indexes (i, j, k)
    np.testing.assert_allclose(nifti.affine, grid.to_ras_affine(), atol=1e-5)
    lps_of_voxel = grid.index_to_lps_affine() @ (3, 2, 1, 1)
    np.testing.assert_allclose(nifti.affine @ (3, 2, 1, 1), lps_of_voxel * (-1, -1, 1, 1), atol=1e-5)


def test_dict_round_trip_is_json_ready():
    grid = _grid()
    assert Grid.from_dict(json.loads(json.dumps(grid.to_dict()))) == grid
    with pytest.raises(MedSynError, match="origin_lps"):
        Grid.from_dict({"shape_zyx": [1, 1, 1], "spacing_xyz": [1, 1, 1], "direction_lps": list(LAS)})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"direction_lps": (1, 0, 0, 0.5, 1, 0, 0, 0, 1)}, "orthonormal"),
        ({"direction_lps": (2, 0, 0, 0, 2, 0, 0, 0, 2)}, "orthonormal"),
        ({"spacing_xyz": (1.0, 0.0, 1.0)}, "spacing"),
        ({"spacing_xyz": (1.0, -1.0, 1.0)}, "spacing"),
        ({"shape_zyx": (4, 0, 4)}, "shape"),
        ({"origin_lps": (0.0, float("nan"), 0.0)}, "origin"),
        ({"direction_lps": (1, 0, 0, 0, 1, 0)}, "direction"),
    ],
)
def test_invalid_geometry_is_a_user_error(kwargs, message):
    fields = {"shape_zyx": (4, 4, 4), "spacing_xyz": (1, 1, 1), "origin_lps": (0, 0, 0), "direction_lps": LAS}
    with pytest.raises(MedSynError, match=message):
        Grid(**{**fields, **kwargs})


def test_downsampled_grid_holds_every_fourth_voxel():
    grid = Grid((8, 12, 16), (0.7, 0.9, 1.1), (5.0, 6.0, -7.0), PERMUTED)
    low = grid.downsampled(4)
    assert low.shape_zyx == (2, 3, 4)
    assert low.origin_lps == grid.origin_lps
    np.testing.assert_allclose(low.spacing_xyz, (2.8, 3.6, 4.4))
    np.testing.assert_allclose(_world_lps(low), _world_lps(grid)[::4, ::4, ::4], atol=1e-9)
    with pytest.raises(MedSynError, match="divisible"):
        Grid((8, 10, 16), (1, 1, 1), (0, 0, 0), LAS).downsampled(4)


def test_block_centre_grid_sits_at_the_mean_position_of_each_block():
    grid = Grid((8, 12, 16), (0.7, 0.9, 1.1), (5.0, 6.0, -7.0), PERMUTED)
    low = grid.downsampled(4, block_centres=True)
    assert low.spacing_xyz == grid.downsampled(4).spacing_xyz
    blocks = _world_lps(grid).reshape(2, 4, 3, 4, 4, 4, 3).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(_world_lps(low), blocks, atol=1e-9)


@pytest.mark.parametrize("block_centres", [False, True], ids=["subsample", "block_centres"])
def test_upsampled_grid_is_the_full_res_grid_a_low_res_grid_came_from(block_centres):
    grid = Grid((8, 12, 16), (0.7, 0.9, 1.1), (5.0, 6.0, -7.0), PERMUTED)
    low = grid.downsampled(4, block_centres=block_centres)
    fine = low.upsampled(4, block_centres=block_centres)
    assert fine.shape_zyx == grid.shape_zyx and fine.direction_lps == grid.direction_lps
    np.testing.assert_allclose(fine.spacing_xyz, grid.spacing_xyz, atol=1e-12)
    np.testing.assert_allclose(_world_lps(fine), _world_lps(grid), atol=1e-9)
    with pytest.raises(MedSynError, match="at least 1"):
        low.upsampled(0)


def test_centered_grid_has_its_field_of_view_centre_at_origin():
    grid = Grid.centered((4, 6, 9), (0.5, 1.5, 3.0), PERMUTED)
    world = _world_lps(grid)
    np.testing.assert_allclose((world.min(axis=(0, 1, 2)) + world.max(axis=(0, 1, 2))) / 2, 0.0, atol=1e-9)
    assert grid.direction_lps == tuple(float(v) for v in PERMUTED)


def test_almost_equal_and_with_shape():
    grid = _grid()
    nudged = Grid(grid.shape_zyx, grid.spacing_xyz, (12.0 + 5e-5, -30.0, 40.5), grid.direction_lps)
    assert grid.almost_equal(nudged) and not grid.almost_equal(nudged, tol=1e-6)
    assert not grid.almost_equal(grid.with_shape((5, 6, 8)))
    reshaped = grid.with_shape((1, 2, 3))
    assert reshaped.shape_zyx == (1, 2, 3) and reshaped.origin_lps == grid.origin_lps


@pytest.mark.parametrize("direction", [LAS, PERMUTED, (-1, 0, 0, 0, 0, 1, 0, -1, 0)])
def test_lps_array_runs_left_posterior_superior(direction):
    grid = _grid(direction)
    world = _world_lps(grid)
    for patient_axis, array_axis in [(0, 2), (1, 1), (2, 0)]:  # L on x, P on y, S on z
        view, spacing = to_lps_array(world[..., patient_axis], grid)
        assert np.all(np.diff(view, axis=array_axis) > 0)
        assert np.allclose(np.diff(view, axis=array_axis), spacing[patient_axis])
        for other in {0, 1, 2} - {array_axis}:
            assert np.allclose(np.diff(view, axis=other), 0)


def test_hu_window_round_trip_and_clipping():
    hu = np.arange(-1024, 601, dtype=np.int16)
    encoded = hu_to_model(hu)
    assert encoded.dtype == np.float32 and encoded[0] == -1.0 and encoded[-1] == 1.0
    np.testing.assert_array_equal(model_to_hu(encoded), hu)
    np.testing.assert_array_equal(hu_to_model(np.array([-3000, 3000])), [-1.0, 1.0])
    np.testing.assert_array_equal(model_to_hu(np.array([-1.5, 1.5])), [-1024, 600])
    np.testing.assert_array_equal(model_to_hu(np.array([0.0]), (-1000, 1000)), [0])


def test_lobe_and_mask_encodings():
    labels = np.arange(6, dtype=np.uint8)
    np.testing.assert_allclose(lobes_to_model(labels), [-1.0, -0.6, -0.2, 0.2, 0.6, 1.0], atol=1e-7)
    noisy = lobes_to_model(labels) + np.array([0.19, -0.19, 0.15, -0.1, 0.05, 0.0], dtype=np.float32)
    np.testing.assert_array_equal(model_to_lobes(noisy), labels)
    np.testing.assert_array_equal(model_to_lobes(np.array([-1.8, 1.9])), [0, 5])
    np.testing.assert_array_equal(mask_to_model(np.array([0, 1])), [-1.0, 1.0])
    np.testing.assert_array_equal(model_to_mask(np.array([-0.2, 0.0, 0.01])), [0, 0, 1])


def _anatomy(shape=(3, 4, 5), seed=0):
    rng = np.random.default_rng(seed)
    ct = rng.integers(-1024, 601, shape).astype(np.int16)
    return ct, rng.integers(0, 6, shape).astype(np.uint8), rng.integers(0, 2, shape), rng.integers(0, 2, shape)


def test_encode_decode_volume_round_trip():
    ct, lobes, airway, vessels = _anatomy()
    x4 = encode_volume(ct, lobes, airway, vessels)
    assert x4.shape == (4, 3, 4, 5) and x4.dtype == np.float32 and x4.min() >= -1 and x4.max() <= 1
    decoded = decode_volume(x4)
    for produced, original in zip((decoded.ct_hu, decoded.lobes, decoded.airway, decoded.vessels), _anatomy()):
        np.testing.assert_array_equal(produced, original)
    assert decoded.ct_hu.dtype == np.int16 and decoded.lobes.dtype == decoded.vessels.dtype == np.uint8


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda v: {**v, "lobes": v["lobes"][:, :, :4]}, "differ in shape"),
        (lambda v: {**v, "lobes": v["lobes"] + 1}, r"lobes labels must lie in 0\.\.5"),
        (lambda v: {**v, "airway": v["airway"] * 2}, r"airway labels must lie in 0\.\.1"),
        (lambda v: {**v, "vessels": v["vessels"] - 1}, r"vessels labels"),
        (lambda v: {**v, "lobes": v["lobes"] * 0.5}, "fractional"),
        (lambda v: {**v, "ct_hu": np.where(v["lobes"] == 5, np.nan, v["ct_hu"])}, "NaN"),
        (lambda v: {**v, "ct_hu": v["ct_hu"][0]}, "3-D"),
    ],
)
def test_encode_volume_rejects_bad_inputs(change, message):
    ct, lobes, airway, vessels = _anatomy()
    lobes[0, 0, 0] = 5  # guarantee the label shifts above leave the range
    volumes = change({"ct_hu": ct, "lobes": lobes, "airway": airway, "vessels": vessels})
    with pytest.raises(MedSynError, match=message):
        encode_volume(**volumes)


def test_decoded_volume_requires_writer_dtypes():
    ct, lobes, airway, vessels = _anatomy()
    with pytest.raises(ValueError, match="ct_hu must be int16"):
        DecodedVolume(ct.astype(np.float32), lobes, airway.astype(np.uint8), vessels.astype(np.uint8))


def test_sr_condition_matches_official_fixture(fixture_dir):
    tensors = load_file(str(fixture_dir / "sr_io.safetensors"))
    x_lowres = tensors["lowres01"] * 2 - 1  # the low-res stage's result in model space
    x_lr = lowres_to_sr_condition(x_lowres, 4)
    torch.testing.assert_close(x_lr, tensors["x_lr"], atol=1e-6, rtol=0)


def test_sr_condition_is_a_nearest_block_copy():
    x = torch.rand(2, 4, 2, 3, 4) * 2 - 1
    up = lowres_to_sr_condition(x, 2)
    assert up.shape == (2, 4, 4, 6, 8)
    for dz, dy, dx in itertools.product(range(2), repeat=3):
        torch.testing.assert_close(up[..., dz::2, dy::2, dx::2], x, atol=0, rtol=0)
