"""Inpainting, outpainting, segmentation and anatomy-conditioned generation end to end with a tiny random model, on
LPS, RAS and oblique inputs: what must be kept is kept bit for bit, what must be generated is, on the input's grid."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from editing_volumes import LPS, RAS, ball, centred_grid, chest_ct, oblique
from medsyn.codec import decode_volume
from medsyn.diffusion.known_region import Resampling
from medsyn.editing import api
from medsyn.editing.canonical import fov_centre_lps
from medsyn.editing.engine import SamplingOptions, model_grid_for, run_edit
from medsyn.editing.known import KnownVolume, encode_known, known_regions
from medsyn.editing.masks import LabelVolume, load_anatomy
from medsyn.editing.modes import conditioned_request, inpaint_request
from medsyn.io.segmentation import read_seg_nrrd, write_seg_nrrd
from medsyn.io.volumes import read_volume, write_volume
from medsyn.models.loaded import load_model
from medsyn.pipeline import MedSynPipeline, seed_noise
from medsyn.progress import CancelToken, Cancelled
from tiny_model import build_tiny_model

OUTPUT_VOLUMES = ("ct", "lobes", "airway", "vessels")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return load_model(str(build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")), device="cpu")


def _assert_on_grid(paths: dict[str, Path], grid) -> None:
    for role in OUTPUT_VOLUMES:
        assert read_volume(paths[role])[1].almost_equal(grid), role
    assert read_seg_nrrd(paths["segmentation"])[1].almost_equal(grid)


@pytest.mark.parametrize("dtype", [np.int16, np.float32], ids=["int16", "float32"])
@pytest.mark.parametrize("direction", [LPS, RAS, oblique()], ids=["lps", "ras", "oblique"])
def test_inpaint_keeps_every_voxel_outside_the_mask(direction, dtype, loaded, tmp_path):
    grid = centred_grid((12, 22, 24), (2.5, 2.2, 1.8), direction, centre_lps=(3.0, -2.0, 4.0))
    ct = chest_ct(grid, dtype, centre_lps=(3.0, -2.0, 4.0))
    mask = ball(grid, (6.0, -2.0, 4.0), 6.0)
    write_volume(tmp_path / "ct.nii.gz", ct, grid)
    write_volume(tmp_path / "mask.nii.gz", mask.astype(np.uint8), grid)
    paths = api.inpaint(tmp_path / "ct.nii.gz", tmp_path / "mask.nii.gz", tmp_path / "out", report="Right effusion.",
                        loaded=loaded, seed=1)
    out, _ = read_volume(paths["ct"])
    assert out.dtype == ct.dtype
    assert out[~mask].tobytes() == ct[~mask].tobytes()
    assert (out[mask] != ct[mask]).mean() > 0.9
    _assert_on_grid(paths, grid)
    provenance = json.loads(paths["provenance"].read_text())
    assert provenance["mode"] == "inpaint" and provenance["known_channels"] == ["ct"]
    assert provenance["edit_region_ml"] == pytest.approx(mask.sum() * 2.5 * 2.2 * 1.8 / 1000, abs=1e-3)
    assert set(provenance["inputs"]) == {"input", "mask"} and len(provenance["inputs"]["mask"]["sha256"]) == 64


def test_outpaint_keeps_the_input_and_fills_the_canvas(loaded, tmp_path):
    grid = centred_grid((6, 12, 12), (3.0, 2.5, 2.0), RAS)
    ct = chest_ct(grid)
    write_volume(tmp_path / "ct.nii.gz", ct, grid)
    paths = api.outpaint(tmp_path / "ct.nii.gz", tmp_path / "out", margin_mm=(6.0, 5.0, 2.0), loaded=loaded,
                         report="Normal chest.")
    out, canvas = read_volume(paths["ct"])
    assert out.shape == (8, 16, 16) and out.dtype == np.int16
    inner = out[1:7, 2:14, 2:14]
    assert inner.tobytes() == ct.tobytes()
    margin = np.ones(out.shape, dtype=bool)
    margin[1:7, 2:14, 2:14] = False
    assert np.unique(out[margin]).size > 20  # generated, not a constant fill
    _assert_on_grid(paths, canvas)


def test_outpaint_blends_the_border_step_on_the_generated_side_only(loaded, tmp_path):
    grid = centred_grid((6, 12, 12), (3.0, 2.5, 2.0), RAS)
    ct = chest_ct(grid)
    write_volume(tmp_path / "ct.nii.gz", ct, grid)
    outputs = {blend: read_volume(api.outpaint(tmp_path / "ct.nii.gz", tmp_path / f"out{blend}", margin_mm=(0, 0, 8.0),
                                               loaded=loaded, seed=3, seam_blend_mm=blend)["ct"])[0].astype(float)
               for blend in (0.0, 6.0)}
    plain, blended = outputs[0.0], outputs[6.0]
    assert blended[4:10].tobytes() == plain[4:10].tobytes() == ct.astype(float).tobytes()  # the input, untouched
    assert np.array_equal(blended[[0, -1]], plain[[0, -1]])  # 4 slices (8 mm) from the border: beyond the fade
    assert not np.array_equal(blended[[3, -4]], plain[[3, -4]])
    # The tiny random model's voxels are noise; what the blend removes is the step of the slices' local means.
    means = {name: ndimage.uniform_filter(out, (1, 5, 5)) for name, out in outputs.items()}
    step = {name: np.abs(mean[3] - mean[4]).mean() + np.abs(mean[-4] - mean[-5]).mean()
            for name, mean in means.items()}
    assert step[6.0] < 0.5 * step[0.0]
    provenance = json.loads((tmp_path / "out6.0" / "provenance.json").read_text())
    assert provenance["seam_blend_mm"] == 6.0


def test_outpaint_canvas_wider_than_the_model_gets_air_beyond_it(loaded, tmp_path):
    grid = centred_grid((6, 12, 12), (3.0, 2.5, 2.0), LPS)
    ct = chest_ct(grid)
    write_volume(tmp_path / "ct.nii.gz", ct, grid)
    paths = api.outpaint(tmp_path / "ct.nii.gz", tmp_path / "out", margin_mm=(12.0, 5.0, 2.0), loaded=loaded)
    out = read_volume(paths["ct"])[0]
    assert out.shape == (8, 16, 20) and out[1:7, 2:14, 4:16].tobytes() == ct.tobytes()
    beyond = json.loads(paths["provenance"].read_text())["air_voxels_beyond_model"]
    assert beyond == 2 * 2 * 8 * 16  # the model is 48 mm wide, the canvas 60 mm: two columns per side
    assert np.all(out[:, :, :2] == -1024) and np.all(out[:, :, -2:] == -1024)


@pytest.mark.parametrize("report", [None, "No effusion."], ids=["no-report", "report"])
def test_segmentation_keeps_the_ct_and_generates_anatomy_on_its_grid(report, loaded, tmp_path):
    grid = centred_grid((10, 20, 20), (2.6, 2.4, 1.7), oblique())
    ct = chest_ct(grid, np.float32)
    write_volume(tmp_path / "ct.nii.gz", ct, grid)
    paths = api.segment(tmp_path / "ct.nii.gz", tmp_path / "out", report=report, loaded=loaded)
    out, _ = read_volume(paths["ct"])
    assert out.tobytes() == ct.tobytes()
    lobes = read_volume(paths["lobes"])[0]
    assert lobes.dtype == np.uint8 and lobes.max() <= 5 and lobes.any()
    _assert_on_grid(paths, grid)
    provenance = json.loads(paths["provenance"].read_text())
    assert provenance["prompt"] == report and provenance["guidance"] == (None if report is None else 1.0)
    assert provenance["sampler"].endswith("unconditional") == (report is None)


def _anatomy_on_model_grid(loaded, folder: Path):
    """Lobes (labelmap), airway (.seg.nrrd with synonym names) and vessels (custom name via the segment map)."""
    grid, _ = model_grid_for(loaded, low_res_only=False)
    rng = np.random.default_rng(3)
    lobes = rng.integers(0, 6, size=grid.shape_zyx).astype(np.uint8)
    airway = (rng.random(grid.shape_zyx) < 0.2).astype(np.uint8)
    vessels = (rng.random(grid.shape_zyx) < 0.3).astype(np.uint8)
    write_volume(folder / "lobes.nii.gz", lobes, grid)
    write_seg_nrrd(folder / "airway.seg.nrrd", np.zeros_like(lobes), airway, np.zeros_like(lobes), grid)
    write_seg_nrrd(folder / "vessels.seg.nrrd", np.zeros_like(lobes), np.zeros_like(lobes), vessels, grid)
    return grid, lobes, airway, vessels


def test_conditioned_generation_reproduces_the_given_anatomy_exactly(loaded, tmp_path):
    grid, lobes, airway, vessels = _anatomy_on_model_grid(loaded, tmp_path)
    paths = api.generate_conditioned("Cardiomegaly.", tmp_path / "out", lobes=tmp_path / "lobes.nii.gz",
                                     airway=tmp_path / "airway.seg.nrrd", vessels=tmp_path / "vessels.seg.nrrd",
                                     loaded=loaded, seed=2)
    for role, given in (("lobes", lobes), ("airway", airway), ("vessels", vessels)):
        assert np.array_equal(read_volume(paths[role])[0], given), role
    _assert_on_grid(paths, grid)
    assert json.loads(paths["provenance"].read_text())["known_channels"] == ["airway", "lobes", "vessels"]


def test_fixing_is_exact_in_the_sampler_at_both_stages(loaded, tmp_path):
    """Not the composite: the sampled tensors themselves carry the given anatomy at low res and at full res."""
    grid, lobes, airway, vessels = _anatomy_on_model_grid(loaded, tmp_path)
    anatomy = load_anatomy(tmp_path / "lobes.nii.gz", tmp_path / "airway.seg.nrrd", tmp_path / "vessels.seg.nrrd")
    request = conditioned_request(anatomy, grid)
    known_low, known_full = known_regions(encode_known(request.channels, request.grid, grid, (-1024.0, 600.0)), 2)
    low = MedSynPipeline(loaded).generate("Cardiomegaly.", seed=4, low_res_only=True, known_lowres=known_low)
    assert np.array_equal(low.lowres.lobes, lobes[::2, ::2, ::2])
    _, noise = seed_noise([4], low.lowres_grid.shape_zyx, grid.shape_zyx)
    full = decode_volume(MedSynPipeline(loaded).super_resolve(low.lowres_tensor, noise, 2, known=known_full)[0][0]
                         .numpy())
    for given, sampled in ((lobes, full.lobes), (airway, full.airway), (vessels, full.vessels)):
        assert np.array_equal(sampled, given)


def test_block_mean_models_get_block_mean_ct_as_low_res_known_values():
    """A model trained on block-mean low-res CT must be conditioned on block means too; labels stay subsampled."""
    rng = np.random.default_rng(1)
    values = rng.uniform(-1, 1, size=(4, 8, 8, 8)).astype(np.float32)
    known = np.ones(values.shape, dtype=bool)
    known[0, :2, :2, :2] = False  # one CT block not wholly known
    low, _ = known_regions(KnownVolume(values, known), 2, lowres_ct="block_mean")
    blocks = values[0].reshape(4, 2, 4, 2, 4, 2).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(low.values[0, 0].numpy(), blocks, rtol=0, atol=1e-6)
    assert np.array_equal(low.values[0, 1:].numpy(), values[1:, ::2, ::2, ::2])
    assert not low.mask[0, 0, 0, 0, 0] and low.mask[0, 0, 1, 1, 1]
    subsampled, _ = known_regions(KnownVolume(values, known), 2)
    assert np.array_equal(subsampled.values[0, 0].numpy(), values[0, ::2, ::2, ::2])


def test_block_max_models_get_block_maxima_of_the_given_trees_as_low_res_known_values():
    """Anatomy conditioning must show a block_max model its airway/vessels as it was trained: the block maximum."""
    airway = np.full((8, 8, 8), -1.0, dtype=np.float32)
    airway[1, 3, 5] = 1.0  # one voxel of a thin bronchus, off every subsampled voxel
    values = np.stack([np.zeros_like(airway), np.zeros_like(airway), airway, airway])
    volume = KnownVolume(values, np.ones(values.shape, dtype=bool))
    low, _ = known_regions(volume, 2, lowres_masks="block_max")
    for channel in (2, 3):
        assert np.flatnonzero(low.values[0, channel].numpy() > 0).tolist() == [0 * 16 + 1 * 4 + 2]
    subsampled, _ = known_regions(volume, 2)
    assert not (subsampled.values[0, 2:].numpy() > 0).any()


@pytest.mark.parametrize("lowres_ct, lowres_masks", [("subsample", "subsample"), ("block_mean", "block_max")])
def test_low_res_only_edits_reduce_the_given_ct_and_trees_as_the_model_was_trained(lowres_ct, lowres_masks, tmp_path):
    """A low-res-only edit runs on the low-res grid, but a block-mean/block-max model must still be shown block means
    of the given CT and block maxima of the given trees, not the values at its voxel centres (4³ blocks: trilinear
    interpolation at a block centre averages only its central 2³ voxels, and nearest misses a corner voxel)."""
    plain = load_model(str(build_tiny_model(tmp_path / "tiny4", sr_factor=4)), device="cpu")
    grid_card = replace(plain.card.grid, lowres_ct=lowres_ct, lowres_masks=lowres_masks)
    model = replace(plain, card=replace(plain.card, grid=grid_card))
    grid, factor = model_grid_for(model, low_res_only=False)
    rng = np.random.default_rng(5)
    ct = rng.integers(-1000, 400, size=grid.shape_zyx).astype(np.int16)
    airway = np.zeros(grid.shape_zyx, dtype=np.uint8)
    airway[5, 9, 14] = 1  # one voxel of a thin bronchus, off every subsampled voxel and every block centre
    edit = np.zeros(grid.shape_zyx, dtype=bool)
    edit[:factor, :factor, :factor] = True  # the first low-res voxel is regenerated, the rest is given
    low_grid = grid.downsampled(factor, block_centres=lowres_ct == "block_mean")  # centred on it: blocks align
    request = inpaint_request(ct, grid, edit, {"airway": LabelVolume(airway, grid, Path("airway.nii.gz"))},
                              centre_lps=fov_centre_lps(low_grid))
    result = run_edit(model, request, SamplingOptions("Cardiomegaly.", seed=1, steps=2, low_res_only=True,
                                                      local=False))
    blocks = ct.reshape(grid.shape_zyx[0] // factor, factor, grid.shape_zyx[1] // factor, factor,
                        grid.shape_zyx[2] // factor, factor)
    expected = blocks.mean(axis=(1, 3, 5)) if lowres_ct == "block_mean" else ct[::factor, ::factor, ::factor]
    sampled = result.sampled.ct_hu.astype(np.float64)
    np.testing.assert_allclose(sampled.ravel()[1:], expected.ravel()[1:], atol=1.0)  # int16 rounding
    bronchus_block = (5 // factor, 9 // factor, 14 // factor)
    assert result.sampled.airway[bronchus_block] == (lowres_masks == "block_max")
    assert result.sampled.airway.sum() == int(lowres_masks == "block_max")


def test_whole_volume_super_resolution_matches_the_pipeline(loaded):
    """Same noise and known region as MedSynPipeline's own SR stage, so a box edit differs from it only by its box."""
    grid, _ = model_grid_for(loaded, low_res_only=False)
    rng = np.random.default_rng(0)
    known = np.zeros((4, *grid.shape_zyx), dtype=bool)
    known[0, :, :8] = True
    volume = KnownVolume(rng.uniform(-1, 1, size=known.shape).astype(np.float32), known)
    known_low, known_full = known_regions(volume, 2)
    pipeline = MedSynPipeline(loaded)
    whole = pipeline.generate("Emphysema.", seed=5, known_lowres=known_low, known_sr=known_full)
    _, noise = seed_noise([5], whole.lowres_grid.shape_zyx, grid.shape_zyx)
    everything = tuple(slice(0, n) for n in grid.shape_zyx)  # a box covering the grid takes the box path
    for box in (None, everything):
        ours, _ = pipeline.super_resolve(whole.lowres_tensor, noise, 2, known=known_full, box=box)
        assert torch.equal(ours, whole.volume_tensor)


def test_local_edit_samples_only_its_windows(tmp_path):
    model = build_tiny_model(tmp_path / "wide", lowres_shape=(4, 32, 32))
    loaded = load_model(str(model), device="cpu")
    low_shapes, shapes = [], []
    loaded.lowres.register_forward_pre_hook(lambda module, args: low_shapes.append(tuple(args[0].shape[2:])))
    loaded.sr.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape[2:])))
    grid = centred_grid((8, 34, 30), (3.0, 2.5, 2.0), LPS)
    ct = chest_ct(grid)
    mask = ball(grid, (5.0, 0.0, 0.0), 4.0)
    write_volume(tmp_path / "ct.nii.gz", ct, grid)
    write_volume(tmp_path / "mask.nii.gz", mask.astype(np.uint8), grid)
    paths = api.inpaint(tmp_path / "ct.nii.gz", tmp_path / "mask.nii.gz", tmp_path / "out", loaded=loaded,
                        report="Nodule in the left lower lobe.")
    provenance = json.loads(paths["provenance"].read_text())
    low_shape, box_shape = (tuple(stop - start for start, stop in provenance[key])
                            for key in ("lowres_box_zyx", "sr_box_zyx"))
    assert set(low_shapes) == {low_shape} and np.prod(low_shape) < 0.5 * 4 * 32 * 32
    assert len(shapes) == 3 and set(shapes) == {box_shape}  # 2 SR steps + the final x̂0, all on the box
    assert np.prod(box_shape) < 0.5 * 8 * 64 * 64 and box_shape[1] % 2 == 0 and box_shape[2] % 2 == 0
    out = read_volume(paths["ct"])[0]
    assert out[~mask].tobytes() == ct[~mask].tobytes() and (out[mask] != ct[mask]).mean() > 0.9
    low_shapes.clear(), shapes.clear()
    api.inpaint(tmp_path / "ct.nii.gz", tmp_path / "mask.nii.gz", tmp_path / "whole", loaded=loaded, local=False)
    assert set(low_shapes) == {(4, 32, 32)} and set(shapes) == {(8, 64, 64)}


def test_options_reach_the_sampler_and_progress_covers_both_stages(loaded, tmp_path):
    grid = centred_grid((12, 22, 24), (2.5, 2.2, 1.8), LPS)
    write_volume(tmp_path / "ct.nii.gz", chest_ct(grid), grid)
    write_volume(tmp_path / "mask.nii.gz", ball(grid, (0.0, 0.0, 0.0), 6.0).astype(np.uint8), grid)
    events = []
    paths = api.inpaint(tmp_path / "ct.nii.gz", tmp_path / "mask.nii.gz", tmp_path / "out", loaded=loaded,
                        feather_voxels=1, resampling=Resampling(2, 2), callback=events.append)
    low = [e for e in events if e.stage == "lowres"]
    assert low[-1].step == low[-1].total == 7  # 5 DDIM evaluations + one re-walked block of 2
    assert [e.stage for e in events][-1] == "sr"
    provenance = json.loads(paths["provenance"].read_text())
    assert provenance["feather_voxels"] == 1 and provenance["resampling"]["repeats"] == 2


def test_cancel_stops_at_the_next_step_and_writes_nothing(loaded, tmp_path):
    grid = centred_grid((10, 20, 20), (2.6, 2.4, 1.7), LPS)
    write_volume(tmp_path / "ct.nii.gz", chest_ct(grid), grid)
    token, events = CancelToken(), []

    def cancel_after_first_step(event):
        events.append(event)
        token.cancel()

    with pytest.raises(Cancelled):
        api.segment(tmp_path / "ct.nii.gz", tmp_path / "out", loaded=loaded, callback=cancel_after_first_step,
                    cancel=token)
    assert len(events) == 1 and not (tmp_path / "out").exists()
