"""Training data and trainer: manifest validation, MONAI loading, deterministic samples, bit-exact resume, DDP, export.

Everything runs on tiny synthetic cases (16³ SR grid, 8³ low-res) written as real NIfTI files, with dim=4 networks.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from medsyn.cli import main
from medsyn.codec import encode_volume, hu_to_model
from medsyn.data.dataset import PreparedDataset
from medsyn.data.manifest import read_manifest
from medsyn.data.prepare import prepare_dataset
from medsyn.data.transforms import load_case, lowres_of
from medsyn.diffusion.schedule import alpha_cumprod, q_sample
from medsyn.errors import MedSynError
from medsyn.geometry import Grid
from medsyn.io.volumes import read_volume, write_volume
from medsyn.models.card import GridCard, load_card
from medsyn.models.loaded import load_model
from medsyn.models.weights import sha256_file
from medsyn.networks.config import LowResConfig
from medsyn.phantom.cli import run_phantom
from medsyn.text.encoder import TextEncoder
from medsyn.training.checkpoint import latest_checkpoint, read_trainer_state
from medsyn.training.config import TrainConfig
from medsyn.training.ema import EMA
from medsyn.training.export import export_model
from medsyn.training.init_weights import init_weight_file
from medsyn.training.loss_log import read_loss_log
from medsyn.training.objective import ct_voxel_weights, min_snr_weights, x0_loss
from medsyn.training.rendered_lowres import RenderedLowres, render_lowres
from medsyn.training.samples import BatchLayout, TrainingSamples
from medsyn.training.trainer import autocast_dtype, train
from output_writer import killed_writer_staging
from tiny_model import build_tiny_text_encoder

GRID = GridCard(lowres_shape_zyx=[8, 8, 8], sr_factor=2, spacing_xyz=[3.0, 2.5, 2.0],
                direction_lps=[1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0], origin_lps=[-24.0, 20.0, -16.0])
SR_GRID = Grid(GRID.shape_zyx, GRID.spacing_xyz, GRID.origin_lps, GRID.direction_lps)
HU_WINDOW = [-1024.0, 600.0]
NETWORKS = {"lowres": {"dim": 4, "cond_dim": 8, "dim_mults": [1, 2], "attn_heads": 1, "resnet_groups": 2},
            "sr": {"dim": 4, "dim_mults": [1, 2], "attn_heads": 1, "resnet_groups": 2}}
REPORTS = ["large right pleural effusion .", "no effusion . lungs are clear .", "small nodule in the left lobe ."]


def _case_arrays(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A lung-like ellipsoid with lobes split by position, an airway tube and a vessel tube, at a random place."""
    z, y, x = np.meshgrid(*(np.arange(16),) * 3, indexing="ij")
    cx, cy, radius = rng.uniform(5, 11), rng.uniform(5, 11), rng.uniform(3, 6)
    lung = (x - cx) ** 2 + (y - cy) ** 2 + ((z - 8) / 1.5) ** 2 < radius ** 2
    return {"ct": np.where(lung, -850, 40).astype(np.int16),
            "lobes": (lung * (1 + 2 * (x > cx) + (z > 8))).astype(np.uint8),
            "airway": ((x - cx) ** 2 + (y - cy) ** 2 < 1.5).astype(np.uint8),
            "vessels": ((x - cx - 2) ** 2 + (z - 8) ** 2 < 1.5).astype(np.uint8)}


def _write_dataset(folder: Path, cases: int = 4, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(cases):
        case = folder / f"case_{index}"
        case.mkdir(parents=True)
        row = {"id": f"case_{index}", "report": REPORTS[index % 3]}  # cases 0 and 3 share a report
        for name, array in _case_arrays(rng).items():
            write_volume(case / f"{name}.nii.gz", array, SR_GRID)
            row[name] = f"case_{index}/{name}.nii.gz"
        rows.append(row)
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return manifest


def _model_config(folder: Path, stage: str) -> Path:
    path = folder / f"{stage}_model.json"
    path.write_text(json.dumps({"grid": asdict(GRID), "network": NETWORKS[stage]}), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("training")
    return {"root": root, "manifest": _write_dataset(root / "data"),
            "encoder": build_tiny_text_encoder(root / "encoder", hidden=8)}


def _config(workspace, out: Path, stage: str = "sr", **overrides) -> TrainConfig:
    values = dict(stage=stage, data=workspace["manifest"], out=out,
                  model_config=_model_config(workspace["root"], stage), steps=6, checkpoint_every=3, lr=3e-3,
                  ema_start=2, data_cache=workspace["root"] / f"prepared_{stage}")
    if stage == "sr":
        values["crop"] = "8x8"
    else:
        values["text_encoder"] = workspace["encoder"]
    values.update(overrides)
    return TrainConfig.from_cli_args(**values)


def _losses(run: Path) -> list[float]:
    return [row["loss"] for row in read_loss_log(run / "loss.jsonl")]


def _weights(checkpoint: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {name: load_file(str(checkpoint / name)) for name in ("model.safetensors", "ema.safetensors")}


def _assert_same_weights(left: Path, right: Path) -> None:
    for name, tensors in _weights(left).items():
        other = _weights(right)[name]
        assert tensors.keys() == other.keys()
        assert all(torch.equal(tensors[key], other[key]) for key in tensors), name


@pytest.fixture(scope="module")
def uninterrupted_sr(workspace) -> Path:
    """Reference run: 6 SR steps in one go, checkpoints at 3 and 6."""
    return train(_config(workspace, workspace["root"] / "sr_full")).run_dir


# --- manifest -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("problem, message", [
    ("missing_file", "manifest row 2 (case_1): file case_1/airway.nii.gz not found"),
    ("missing_report", "manifest row 2 (case_1): missing report"),
    ("empty_report", "manifest row 2 (case_1): empty report"),
    ("shape_mismatch", "manifest row 2 (case_1): lobes"),
])
def test_manifest_errors_name_the_row(tmp_path, problem, message):
    manifest = _write_dataset(tmp_path, cases=2)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    if problem == "missing_file":
        (tmp_path / rows[1]["airway"]).unlink()
    elif problem == "missing_report":
        del rows[1]["report"]
    elif problem == "empty_report":
        rows[1]["report"] = "   "
    else:
        write_volume(tmp_path / rows[1]["lobes"], np.zeros((16, 16, 8), np.uint8), SR_GRID.with_shape((16, 16, 8)))
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(MedSynError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_manifest(manifest)


def test_csv_manifest_with_report_files_and_optional_masks(tmp_path):
    _write_dataset(tmp_path, cases=2)
    (tmp_path / "report0.txt").write_text("no effusion .\n")
    (tmp_path / "manifest.csv").write_text(
        "id,ct,lobes,airway,vessels,report,report_file\n"
        "a,case_0/ct.nii.gz,case_0/lobes.nii.gz,,,,report0.txt\n"
        "b,case_1/ct.nii.gz,,case_1/airway.nii.gz,case_1/vessels.nii.gz,cardiomegaly .,\n")
    first, second = read_manifest(tmp_path / "manifest.csv")
    assert first.report == "no effusion ." and first.masks["airway"] is None and first.masks["lobes"] is not None
    assert second.report == "cardiomegaly ." and second.masks["lobes"] is None and second.row == 2


# --- loading ----------------------------------------------------------------------------------------------------------

def test_loader_encodes_like_the_codec_in_any_orientation(tmp_path):
    arrays = _case_arrays(np.random.default_rng(1))
    expected = encode_volume(arrays["ct"], arrays["lobes"], arrays["airway"], arrays["vessels"], HU_WINDOW)
    # The same anatomy stored with an identity (LPS) direction: j runs posterior, so the array is flipped along y.
    lps_grid = Grid(SR_GRID.shape_zyx, SR_GRID.spacing_xyz, (-24.0, 20.0 - 2.5 * 15, -16.0),
                    (1, 0, 0, 0, 1, 0, 0, 0, 1))
    for grid, flip in ((SR_GRID, False), (lps_grid, True)):
        folder = tmp_path / ("lps" if flip else "las")
        folder.mkdir()
        rows = {"id": "c", "report": "cardiomegaly ."}
        for name, array in arrays.items():
            write_volume(folder / f"{name}.nii.gz", np.ascontiguousarray(array[:, ::-1] if flip else array), grid)
            rows[name] = f"{name}.nii.gz"
        rows["vessels"] = ""  # unknown for this case
        (folder / "m.jsonl").write_text(json.dumps(rows))
        for resample in ("spacing", "resize"):
            image, loss_mask = load_case(read_manifest(folder / "m.jsonl")[0], GRID, HU_WINDOW, resample)
            assert image.shape == (4, 16, 16, 16) and type(image) is torch.Tensor
            np.testing.assert_allclose(image[:3].numpy(), expected[:3], atol=1e-6)
            assert torch.equal(loss_mask, torch.tensor([1.0, 1.0, 1.0, 0.0])) and torch.all(image[3] == 0)


def test_loader_rejects_multilabel_airway_naming_the_row(tmp_path):
    manifest = _write_dataset(tmp_path, cases=1)
    write_volume(tmp_path / "case_0/airway.nii.gz", np.full((16, 16, 16), 7, np.uint8), SR_GRID)
    with pytest.raises(MedSynError, match=r"manifest row 1 \(case_0\): airway labels must lie in 0..1, found 7..7"):
        load_case(read_manifest(manifest)[0], GRID, HU_WINDOW)


def test_phantom_dataset_prepares_unchanged_on_its_own_grid(tmp_path):
    """medsyn phantom output is a valid manifest (report files) and passes the loader untouched on its own grid."""
    run_phantom(2, seed=0, size=16, spacing=None, out_dir=tmp_path / "phantoms")
    manifest = tmp_path / "phantoms" / "manifest.jsonl"
    rows = read_manifest(manifest)
    assert [row.case_id for row in rows] == ["case_0000", "case_0001"] and all(row.report for row in rows)
    _, phantom_grid = read_volume(rows[0].ct)
    grid = GridCard(lowres_shape_zyx=[8, 8, 8], sr_factor=2, spacing_xyz=list(phantom_grid.spacing_xyz),
                    direction_lps=list(phantom_grid.direction_lps), origin_lps=list(phantom_grid.origin_lps))
    data = PreparedDataset(prepare_dataset(manifest, grid, HU_WINDOW, tmp_path / "prepared", show_progress=False))
    volumes = {name: read_volume(path)[0] for name, path in [("ct", rows[1].ct), *rows[1].masks.items()]}
    expected = encode_volume(volumes["ct"], volumes["lobes"], volumes["airway"], volumes["vessels"], HU_WINDOW)
    image = data.image_crop(1, (0, 0, 0), (16, 16, 16))
    np.testing.assert_allclose(image.numpy(), expected, atol=1e-3)  # float16 storage
    assert torch.equal(data.lowres(1), image[:, ::2, ::2, ::2]) and torch.equal(data.loss_mask(1), torch.ones(4))


def test_samples_are_deterministic_crops_with_official_lowres(workspace):
    folder = prepare_dataset(workspace["manifest"], GRID, HU_WINDOW, workspace["root"] / "prepared_samples",
                             show_progress=False)
    data = PreparedDataset(folder)
    clean = TrainingSamples(data, "sr", seed=5, crop=(8, 8), lr_noise_max=0.0)
    sample = clean[11]
    assert sample["x0"].shape == (4, 16, 8, 8)
    # x_lr without noise is the nearest up-sampling of every 2nd voxel, on the global low-res grid (aligned crop).
    assert torch.equal(sample["x_lr"], sample["x0"][:, ::2, ::2, ::2].repeat_interleave(2, 1).repeat_interleave(2, 2)
                       .repeat_interleave(2, 3))
    lowres = data.lowres(int(sample["case"]))
    assert any(torch.equal(sample["x0"][:, ::2, ::2, ::2], lowres[:, :, y:y + 4, x:x + 4])
               for y in range(5) for x in range(5))
    slab = TrainingSamples(data, "sr", seed=5, crop=(4, 16, 16), lr_noise_max=0.0)[3]  # whole axial planes
    assert slab["x0"].shape == (4, 4, 16, 16)
    assert any(torch.equal(slab["x0"][:, ::2, ::2, ::2], data.lowres(int(slab["case"]))[:, z:z + 2])
               for z in range(7))
    with pytest.raises(MedSynError, match="depth 3 must be a multiple"):
        TrainingSamples(data, "sr", seed=5, crop=(3, 16, 16))
    noisy = TrainingSamples(data, "sr", seed=5, crop=(8, 8))
    assert torch.equal(noisy[11]["x0"], sample["x0"]) and not torch.equal(noisy[11]["x_lr"], sample["x_lr"])
    assert all(torch.equal(noisy[11][key], noisy[11][key]) for key in ("x_lr", "noise", "t"))
    # One epoch of positions visits every case once; two ranks' positions never overlap.
    assert sorted(int(clean[p]["case"]) for p in range(4, 8)) == [0, 1, 2, 3]
    layout = BatchLayout(batch_size=2, grad_accum=2, world_size=2)
    rank0, rank1 = (set(layout.rank_positions(rank, 0, 3)) for rank in (0, 1))
    assert not rank0 & rank1 and rank0 | rank1 == set(range(24))



def test_block_mean_lowres_averages_the_ct_and_keeps_labels_subsampled(workspace):
    """A card with grid.lowres_ct = "block_mean" prepares (and conditions SR training on) block-averaged CT."""
    grid = GridCard(**{**asdict(GRID), "lowres_ct": "block_mean"})
    assert grid.to_lowres_grid() == grid.to_grid().downsampled(2, block_centres=True) != GRID.to_lowres_grid()
    data = PreparedDataset(prepare_dataset(workspace["manifest"], grid, HU_WINDOW, workspace["root"] / "prepared_mean",
                                           show_progress=False))
    image = data.image_crop(0, (0, 0, 0), (16, 16, 16))
    lowres = data.lowres(0)
    blocks = image[0].reshape(8, 2, 8, 2, 8, 2).mean(dim=(1, 3, 5))
    torch.testing.assert_close(lowres[0], blocks, atol=2e-3, rtol=0)  # float16 storage
    assert not torch.equal(lowres[0], image[0, ::2, ::2, ::2])  # the lung edge is partial-volumed, not aliased
    assert torch.equal(lowres[1:], image[1:, ::2, ::2, ::2])
    sample = TrainingSamples(data, "sr", seed=5, crop=(8, 8), lr_noise_max=0.0)[11]
    ct_blocks = sample["x0"][0].reshape(8, 2, 4, 2, 4, 2).mean(dim=(1, 3, 5))
    torch.testing.assert_close(sample["x_lr"][0, ::2, ::2, ::2], ct_blocks)
    with pytest.raises(MedSynError, match="unknown low-res CT reduction"):
        lowres_of(image, 2, "median")

def test_block_max_lowres_keeps_thin_trees_connected_and_the_rest_subsampled(workspace):
    """grid.lowres_masks = "block_max": an airway/vessel low-res voxel is inside when any voxel of its block is, in the
    prepared data and in the SR stage's conditioning; CT and lobes stay subsampled."""
    grid = GridCard(**{**asdict(GRID), "lowres_masks": "block_max"})
    assert grid.to_lowres_grid() == GRID.to_lowres_grid()  # the CT still samples every f-th voxel
    data = PreparedDataset(prepare_dataset(workspace["manifest"], grid, HU_WINDOW, workspace["root"] / "prepared_max",
                                           show_progress=False))
    image, lowres = data.image_crop(0, (0, 0, 0), (16, 16, 16)), data.lowres(0)
    for channel in (2, 3):
        inside = (image[channel] > 0).reshape(8, 2, 8, 2, 8, 2).any(dim=5).any(dim=3).any(dim=1)
        assert torch.equal(lowres[channel] > 0, inside)
    assert (lowres[2:] > 0).sum() > (image[2:, ::2, ::2, ::2] > 0).sum()  # more of the trees than subsampled
    assert torch.equal(lowres[:2], image[:2, ::2, ::2, ::2])
    sample = TrainingSamples(data, "sr", seed=5, crop=(8, 8), lr_noise_max=0.0)[11]
    tree_blocks = sample["x0"][2:].reshape(2, 8, 2, 4, 2, 4, 2).amax(dim=(2, 4, 6))
    torch.testing.assert_close(sample["x_lr"][2:, ::2, ::2, ::2], tree_blocks)
    torch.testing.assert_close(sample["x_lr"][:2, ::2, ::2, ::2], sample["x0"][:2, ::2, ::2, ::2])
    with pytest.raises(MedSynError, match="unknown low-res mask reduction"):
        lowres_of(image, 2, masks="any")


def test_block_max_airway_takes_the_block_max_of_the_airway_only():
    """lowres_masks = "block_max_airway": the airway as block maxima, the vessels (and CT, lobes) subsampled."""
    torch.manual_seed(0)
    volume = torch.rand(4, 8, 8, 8) * 2 - 1
    volume[2:] = -1.0
    volume[2:, 1, 2, 3] = 1.0  # one airway and one vessel voxel, both off the subsampling lattice
    low = lowres_of(volume, 2, masks="block_max_airway")
    assert low[2, 0, 1, 1] == 1.0 and (low[2] > 0).sum() == 1  # the airway voxel's block
    assert (low[3] > 0).sum() == 0  # the vessel voxel is missed, as subsampling misses it
    torch.testing.assert_close(low[:2], volume[:2, ::2, ::2, ::2])
    torch.testing.assert_close(low[3], volume[3, ::2, ::2, ::2])


def test_tree_thinning_conditions_sr_on_thinner_block_max_trees(workspace):
    """--tree-thinning keeps a low-res tree voxel only when more than a random share of its block is inside: never a
    voxel the block max lacks, sometimes fewer; CT and lobes untouched; 0 is the block max; subsample grids refuse it."""
    grid = GridCard(**{**asdict(GRID), "lowres_masks": "block_max"})
    data = PreparedDataset(prepare_dataset(workspace["manifest"], grid, HU_WINDOW, workspace["root"] / "prepared_max",
                                           show_progress=False))
    plain = TrainingSamples(data, "sr", seed=5, crop=(8, 8), lr_noise_max=0.0)
    thinned = TrainingSamples(data, "sr", seed=5, crop=(8, 8), lr_noise_max=0.0, tree_thinning=1.0)
    fewer = 0
    for position in range(8):
        full, thin = plain[position], thinned[position]
        assert torch.equal(full["x0"], thin["x0"]) and torch.equal(full["x_lr"][:2], thin["x_lr"][:2])
        full_tree, thin_tree = full["x_lr"][2:] > 0, thin["x_lr"][2:] > 0
        assert not (thin_tree & ~full_tree).any()
        fewer += int(thin_tree.sum() < full_tree.sum())
    assert fewer > 0
    with pytest.raises(MedSynError, match="lowres_masks = block_max"):
        subsampled = prepare_dataset(workspace["manifest"], GRID, HU_WINDOW, workspace["root"] / "prepared_plain",
                                     show_progress=False)
        TrainingSamples(PreparedDataset(subsampled), "sr", seed=5, crop=(8, 8), tree_thinning=0.5)
    with pytest.raises(MedSynError, match="tree_thinning and rendered_share must lie in"):
        _config(workspace, workspace["root"] / "unused", tree_thinning=1.5)

def test_lowres_mask_dropout_blanks_a_share_of_the_sr_condition(workspace, tmp_path):
    """--lowres-mask-dropout blanks a mask channel of the SR stage's low-res condition to background at its chance
    (so the SR stage must draw that structure from the CT); targets and the other channels stay; only SR runs."""
    data = PreparedDataset(prepare_dataset(workspace["manifest"], GRID, HU_WINDOW, workspace["root"] / "prepared_drop",
                                           show_progress=False))
    plain = TrainingSamples(data, "sr", seed=5, crop=(8, 8), lr_noise_max=0.0)
    always = TrainingSamples(data, "sr", seed=5, crop=(8, 8), lr_noise_max=0.0, mask_dropout=(0.0, 1.0, 0.0))
    half = TrainingSamples(data, "sr", seed=5, crop=(8, 8), lr_noise_max=0.0, mask_dropout=(0.0, 0.5, 0.0))
    blanked = []
    for position in range(12):
        full, dropped, maybe = plain[position], always[position], half[position]
        assert torch.equal(full["x0"], dropped["x0"]) and torch.equal(full["x0"], maybe["x0"])
        assert torch.all(dropped["x_lr"][2] == -1.0)
        kept = [0, 1, 3]
        assert torch.equal(full["x_lr"][kept], dropped["x_lr"][kept])
        assert torch.equal(full["x_lr"][kept], maybe["x_lr"][kept])
        blanked.append(bool(torch.all(maybe["x_lr"][2] == -1.0)))
        assert blanked[-1] or torch.equal(full["x_lr"][2], maybe["x_lr"][2])
    assert any((plain[position]["x_lr"][2] > 0).any() for position in range(12))  # the crops hold airway to blank
    assert 0 < sum(blanked) < len(blanked)
    assert _config(workspace, tmp_path / "ok", lowres_mask_dropout="0,0.5,0").lowres_mask_dropout == (0.0, 0.5, 0.0)
    with pytest.raises(MedSynError, match="3 numbers"):
        _config(workspace, tmp_path / "bad", lowres_mask_dropout="0.5")
    with pytest.raises(MedSynError, match=r"3 chances in \[0, 1\]"):
        _config(workspace, tmp_path / "bad", lowres_mask_dropout="0,1.5,0")
    with pytest.raises(MedSynError, match="drop it for the low-res stage"):
        _config(workspace, tmp_path / "bad", stage="lowres", lowres_mask_dropout="0,0.5,0")


def test_rendered_lowres_conditions_a_share_of_sr_samples(workspace, uninterrupted_sr, tmp_path):
    """render-lowres writes the low-res network's SDEdit rendering of every case (deterministic per seed); SR samples
    then take their condition from it for the asked share, cut at the crop's window; a run records the folder."""
    lowres_run = train(_config(workspace, tmp_path / "lowres", stage="lowres", steps=1, checkpoint_every=1)).run_dir
    model = export_model(lowres_run, tmp_path / "model", sr=uninterrupted_sr, name="tiny", license="Apache-2.0",
                         lowres_steps=10, guidance_scale=2.0)
    data = PreparedDataset(prepare_dataset(workspace["manifest"], GRID, HU_WINDOW, tmp_path / "prepared_text",
                                           text_encoder=workspace["encoder"], show_progress=False))
    folder = render_lowres(model, data.folder, tmp_path / "rendered", (0.3, 0.5), seed=3, batch_size=3,
                           device="cpu", show_progress=False)
    again = tmp_path / "again"  # the CLI gives the same files
    assert main(["render-lowres", "--model", str(model), "--data-cache", str(data.folder), "--out", str(again),
                 "--noise-range", "0.3,0.5", "--seed", "3", "--batch-size", "3", "--device", "cpu"]) == 0
    rendered = RenderedLowres(folder, GRID)
    whole = ((0, 0, 0), (8, 8, 8))
    for index in range(len(data)):
        volume = rendered.crop(data.case_id(index), *whole)
        assert volume.shape == (4, 8, 8, 8) and volume.abs().max() <= 1
        assert not torch.equal(volume, data.lowres(index))  # the network's rendering, not the truth
        assert torch.equal(volume, RenderedLowres(again, GRID).crop(data.case_id(index), *whole))
    starts = {entry["start_time"] for entry in json.loads((folder / "rendered.json").read_text())["cases"].values()}
    assert starts <= {300, 400, 500}  # the 10-step grid's times inside the noise range
    torch.testing.assert_close(rendered.crop("case_1", (2, 0, 4), (4, 8, 2)),
                               rendered.crop("case_1", *whole)[:, 2:6, :, 4:6])

    sr_data = PreparedDataset(workspace["root"] / "prepared_sr")  # made by the reference run
    always = TrainingSamples(sr_data, "sr", seed=5, crop=(16, 16), lr_noise_max=0.0, rendered=rendered,
                             rendered_share=1.0)
    half = TrainingSamples(sr_data, "sr", seed=5, crop=(16, 16), lr_noise_max=0.0, rendered=rendered,
                           rendered_share=0.5)
    kinds = set()
    for position in range(12):
        index = int(always[position]["case"])
        own = half.order.case_at(position)
        assert torch.equal(always[position]["x_lr"][:, ::2, ::2, ::2], rendered.crop(sr_data.case_id(index), *whole))
        x_lr = half[position]["x_lr"][:, ::2, ::2, ::2]
        kinds.add("rendered" if torch.equal(x_lr, rendered.crop(sr_data.case_id(own), *whole)) else
                  "truth" if torch.equal(x_lr, sr_data.lowres(own)) else "neither")
    assert kinds == {"rendered", "truth"}

    run = train(_config(workspace, tmp_path / "sr", steps=2, checkpoint_every=2, rendered_lowres=folder))
    assert read_trainer_state(run.checkpoint)["config"]["rendered_lowres"] == str(folder)
    with pytest.raises(MedSynError, match="another grid"):
        RenderedLowres(folder, GridCard(**{**asdict(GRID), "lowres_masks": "block_max"}))
    with pytest.raises(MedSynError, match="case 'case_9' has no rendered low-res volume"):
        rendered.crop("case_9", *whole)
    with pytest.raises(MedSynError, match="rendered_lowres conditions the SR stage"):
        _config(workspace, tmp_path / "unused", stage="lowres", rendered_lowres=folder)
    with pytest.raises(MedSynError, match="without text features"):
        render_lowres(model, sr_data.folder, tmp_path / "no_text", device="cpu", show_progress=False)


# --- objective and EMA ------------------------------------------------------------------------------------------------

def test_text_dropout_uses_the_null_embedding_and_unknown_channels_leave_the_loss():
    torch.manual_seed(0)
    net = LowResConfig.from_dict(NETWORKS["lowres"]).build()
    x0, noise, cond = torch.rand(2, 4, 8, 8, 8) * 2 - 1, torch.randn(2, 4, 8, 8, 8), torch.randn(2, 192, 8)
    t = torch.tensor([0.3, 0.7])
    batch = {"x0": x0, "noise": noise, "t": t, "cond": cond, "loss_mask": torch.ones(2, 4),
             "drop_text": torch.tensor([True, False])}
    x_t = q_sample(x0, t, noise)
    # Sample 0 dropped its text: it must see the learned null embedding (cond=None), sample 1 its own report.
    prediction = torch.cat([net(x_t[:1], t[:1] * 1000, None), net(x_t[1:], t[1:] * 1000, cond[1:])])
    torch.testing.assert_close(x0_loss(net, net.null_cond_emb, batch, "lowres"), ((prediction - x0) ** 2).mean())
    batch["loss_mask"] = torch.tensor([[1.0, 1.0, 0.0, 1.0]] * 2)  # airway unknown in both cases
    torch.testing.assert_close(x0_loss(net, net.null_cond_emb, batch, "lowres"),
                               ((prediction - x0) ** 2)[:, [0, 1, 3]].mean())
    # Channel weights: a weighted mean over the known channels (airway still unknown, so its weight 4 is unused).
    per_channel = ((prediction - x0) ** 2).mean(dim=(0, 2, 3, 4))
    torch.testing.assert_close(x0_loss(net, net.null_cond_emb, batch, "lowres", (1.0, 2.0, 4.0, 4.0)),
                               (per_channel[0] + 2 * per_channel[1] + 4 * per_channel[3]) / 7)
    # Min-SNR: each sample scaled by min(SNR, γ)/γ, without renormalising (t = 0.7 is noise-dominated: SNR < 1).
    batch["loss_mask"] = torch.ones(2, 4)
    alpha = alpha_cumprod(t)
    weights = (alpha / (1 - alpha)).clamp(max=5.0) / 5.0
    assert weights[1] < weights[0] <= 1.0
    per_sample = ((prediction - x0) ** 2).mean(dim=(1, 2, 3, 4))
    torch.testing.assert_close(x0_loss(net, net.null_cond_emb, batch, "lowres", None, 5.0),
                               (weights * per_sample).mean())
    torch.testing.assert_close(min_snr_weights(torch.tensor([0.0, 1.0]), 5.0), torch.tensor([1.0, 1e-4 / 0.9999 / 5]))


def test_anchor_share_moves_each_channel_target_towards_the_anchor_prediction():
    """With an anchor network, a channel's target is share·anchor x̂0 + (1 − share)·data for the same noisy input;
    an anchor equal to the trained network gives zero loss on every fully anchored channel."""
    torch.manual_seed(0)
    net, anchor = (LowResConfig.from_dict(NETWORKS["lowres"]).build() for _ in range(2))
    x0, noise, cond = torch.rand(2, 4, 8, 8, 8) * 2 - 1, torch.randn(2, 4, 8, 8, 8), torch.randn(2, 192, 8)
    t = torch.tensor([0.3, 0.7])
    batch = {"x0": x0, "noise": noise, "t": t, "cond": cond, "loss_mask": torch.ones(2, 4),
             "drop_text": torch.tensor([True, False])}
    x_t = q_sample(x0, t, noise)
    with torch.no_grad():  # the anchor uses its own null embedding for the sample that dropped its text
        anchored = torch.cat([anchor(x_t[:1], t[:1] * 1000, None), anchor(x_t[1:], t[1:] * 1000, cond[1:])])
        prediction = torch.cat([net(x_t[:1], t[:1] * 1000, None), net(x_t[1:], t[1:] * 1000, cond[1:])])
    share = torch.tensor([0.5, 1.0, 0.0, 1.0])[None, :, None, None, None]
    target = x0 + share * (anchored - x0)
    torch.testing.assert_close(x0_loss(net, net.null_cond_emb, batch, "lowres", anchor=anchor,
                                       anchor_share=(0.5, 1.0, 0.0, 1.0)), ((prediction - target) ** 2).mean())
    anchor.load_state_dict(net.state_dict())
    airway_only = x0_loss(net, net.null_cond_emb, batch, "lowres", anchor=anchor, anchor_share=(1.0, 1.0, 0.0, 1.0))
    torch.testing.assert_close(airway_only, ((prediction - x0) ** 2)[:, 2].mean() / 4)
    assert x0_loss(net, net.null_cond_emb, batch, "lowres", anchor=anchor, anchor_share=(1.0,) * 4) == 0.0


def test_structure_weights_scale_the_ct_error_inside_the_target_airway_and_vessels():
    torch.manual_seed(0)
    net = LowResConfig.from_dict(NETWORKS["lowres"]).build()
    x0, noise, cond = torch.rand(1, 4, 8, 8, 8) * 2 - 1, torch.randn(1, 4, 8, 8, 8), torch.randn(1, 192, 8)
    x0[:, 2:] = -1.0
    x0[:, 2, 2:4, 2:4, 2:4] = 1.0  # airway lumen
    x0[:, 3, 5:7, 5:7, 5:7] = 1.0  # vessel
    x0[:, 3, 3, 3, 3] = 1.0  # a voxel in both: the larger weight applies
    t = torch.tensor([0.2])
    batch = {"x0": x0, "noise": noise, "t": t, "cond": cond, "loss_mask": torch.ones(1, 4),
             "drop_text": torch.tensor([False])}
    squared = (net(q_sample(x0, t, noise), t * 1000, cond) - x0) ** 2
    voxel = torch.ones(1, 1, 8, 8, 8)
    voxel[:, :, 5:7, 5:7, 5:7] = 3.0
    voxel[:, :, 2:4, 2:4, 2:4] = 10.0
    expected = ((squared[:, :1] * voxel).sum() + squared[:, 1:].sum()) / squared.numel()
    torch.testing.assert_close(x0_loss(net, net.null_cond_emb, batch, "lowres", structure_weights=(10.0, 3.0)),
                               expected)
    torch.testing.assert_close(x0_loss(net, net.null_cond_emb, batch, "lowres", structure_weights=(1.0, 1.0)),
                               squared.mean())


def test_fluid_weight_scales_the_ct_error_where_the_target_is_fluid_outside_the_lungs():
    torch.manual_seed(0)
    net = LowResConfig.from_dict(NETWORKS["lowres"]).build()
    fluid, muscle = (float(hu_to_model(hu)) for hu in (8.0, 50.0))
    x0, noise, cond = torch.full((1, 4, 8, 8, 8), -1.0), torch.randn(1, 4, 8, 8, 8), torch.randn(1, 192, 8)
    x0[:, 0] = muscle
    x0[:, 0, :, :, :4] = fluid  # fluid-dense half ...
    x0[:, 1, :, :4] = 0.2  # ... of which the front half is inside a lobe (consolidation, not pleural fluid)
    t = torch.tensor([0.2])
    batch = {"x0": x0, "noise": noise, "t": t, "cond": cond, "loss_mask": torch.ones(1, 4),
             "drop_text": torch.tensor([False])}
    squared = (net(q_sample(x0, t, noise), t * 1000, cond) - x0) ** 2
    voxel = torch.ones(1, 1, 8, 8, 8)
    voxel[:, :, :, 4:, :4] = 5.0  # fluid density, outside the lobes
    expected = ((squared[:, :1] * voxel).sum() + squared[:, 1:].sum()) / squared.numel()
    torch.testing.assert_close(x0_loss(net, net.null_cond_emb, batch, "lowres", fluid_weight=5.0), expected)
    torch.testing.assert_close(x0_loss(net, net.null_cond_emb, batch, "lowres"), squared.mean())
    # The band follows the model's HU window: under a window where 8 HU maps elsewhere, nothing is fluid.
    assert ct_voxel_weights(x0, (1.0, 1.0), 5.0, (0.0, 1000.0)).eq(1.0).all()


def test_fluid_ct_weight_must_be_positive(workspace, tmp_path):
    assert _config(workspace, tmp_path / "ok", fluid_ct_weight=10.0).fluid_ct_weight == 10.0
    with pytest.raises(MedSynError, match="fluid_ct_weight must be positive"):
        _config(workspace, tmp_path / "bad", fluid_ct_weight=0.0)


@pytest.mark.parametrize("text, message", [("10", "2 numbers"), ("0,1", "2 positive numbers"),
                                           ("ten,1", "look like")])
def test_structure_ct_weights_are_parsed_and_validated(workspace, tmp_path, text, message):
    assert _config(workspace, tmp_path / "ok", structure_ct_weights="10,1").structure_ct_weights == (10.0, 1.0)
    with pytest.raises(MedSynError, match=message):
        _config(workspace, tmp_path / "bad", structure_ct_weights=text)


@pytest.mark.parametrize("text, message", [("1,1,4", "4 numbers"), ("1,a,1,1", "look like"),
                                           ("0,0,0,0", "not all 0"), ("1,-1,1,1", "non-negative")])
def test_channel_weights_are_parsed_and_validated(workspace, tmp_path, text, message):
    assert _config(workspace, tmp_path / "ok", channel_weights="1,1,4,4").channel_weights == (1.0, 1.0, 4.0, 4.0)
    with pytest.raises(MedSynError, match=message):
        _config(workspace, tmp_path / "bad", channel_weights=text)


@pytest.mark.parametrize("options, message", [
    ({"anchor_share": "1,1,0,1"}, "go together"), ({"anchor_model": "anchor"}, "go together"),
    ({"anchor_model": "anchor", "anchor_share": "1,1,0,2"}, r"shares in \[0, 1\]"),
    ({"anchor_model": "anchor", "anchor_share": "1,1,0"}, "4 numbers")])
def test_anchor_model_and_share_are_validated(workspace, tmp_path, options, message):
    ok = _config(workspace, tmp_path / "ok", anchor_model=tmp_path / "anchor", anchor_share="1,1,0,1")
    assert ok.anchor_share == (1.0, 1.0, 0.0, 1.0)
    with pytest.raises(MedSynError, match=message):
        _config(workspace, tmp_path / "bad", **options)


def test_min_snr_gamma_must_be_positive(workspace, tmp_path):
    assert _config(workspace, tmp_path / "ok", min_snr_gamma=5.0).min_snr_gamma == 5.0
    with pytest.raises(MedSynError, match="min_snr_gamma must be positive"):
        _config(workspace, tmp_path / "bad", min_snr_gamma=0.0)


def test_ema_copies_until_start_then_averages():
    online = torch.nn.Linear(2, 1)
    ema = EMA(online, decay=0.9, every=2, start=4)
    with torch.no_grad():
        online.weight.fill_(1.0)
    ema.update(online, 1)  # not an update step
    assert not torch.equal(ema.model.weight, online.weight)
    ema.update(online, 2)  # before start: copy
    assert torch.equal(ema.model.weight, online.weight)
    with torch.no_grad():
        online.weight.fill_(3.0)
    ema.update(online, 4)
    torch.testing.assert_close(ema.model.weight, torch.full((1, 2), 0.9 * 1.0 + 0.1 * 3.0))


def test_mixed_precision_is_cuda_only():
    assert autocast_dtype("auto", torch.device("cpu")) is None
    with pytest.raises(MedSynError, match="needs a CUDA GPU"):
        autocast_dtype("bf16", torch.device("cpu"))


# --- trainer ----------------------------------------------------------------------------------------------------------

def test_lowres_loss_decreases_and_export_loads(workspace, uninterrupted_sr, tmp_path):
    result = train(_config(workspace, tmp_path / "lowres", stage="lowres", steps=30, checkpoint_every=30))
    losses = _losses(result.run_dir)
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert (result.run_dir / "loss.png").stat().st_size > 0
    prepared = PreparedDataset(workspace["root"] / "prepared_lowres")
    assert len(list((prepared.folder / "text").iterdir())) == len(REPORTS)  # one encoding per unique report
    encoder = TextEncoder.from_folder(workspace["encoder"])
    assert torch.equal(prepared.text_features(3), encoder.encode(REPORTS[0])[0])

    model_dir = export_model(result.run_dir, tmp_path / "model", sr=uninterrupted_sr, name="tiny-trained",
                             license="Apache-2.0")
    card = load_card(model_dir)
    for stage, run in (("lowres", result.run_dir), ("sr", uninterrupted_sr)):
        stage_card = getattr(card, stage)
        assert stage_card.sha256 == sha256_file(model_dir / stage_card.weights)
        assert sha256_file(model_dir / stage_card.weights) == sha256_file(latest_checkpoint(run) / "ema.safetensors")
        assert card.training[stage]["steps"] == (30 if stage == "lowres" else 6)
        assert card.training[stage]["loss_weights"]["fluid_ct_weight"] == 1.0  # the loss it was trained with
    assert card.grid == GRID and card.text_encoder == "text_encoder"
    loaded = load_model(str(model_dir), device="cpu")  # the pipeline's own loader accepts the folder
    assert loaded.lowres.null_cond_emb.shape == (1, 192, 8)


def test_resume_continues_bit_exactly(workspace, uninterrupted_sr, tmp_path):
    first = train(_config(workspace, tmp_path / "run", steps=3))
    assert first.checkpoint.name == "step_3"
    with pytest.raises(MedSynError, match="pass --resume"):
        train(_config(workspace, tmp_path / "run"))
    # A checkpoint written before the grid had a lowres_ct field, and the SR network a residual field, resumes with
    # their defaults ("subsample", plain x0).
    state_file = first.checkpoint / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert state["grid"].pop("lowres_ct") == "subsample"
    assert state["network"].pop("residual") is False
    state_file.write_text(json.dumps(state))
    resumed = train(_config(workspace, tmp_path / "run", resume=True))
    assert _losses(resumed.run_dir) == _losses(uninterrupted_sr)
    _assert_same_weights(resumed.checkpoint, uninterrupted_sr / "checkpoints" / "step_6")


def test_fine_tune_starts_from_init_weights_with_a_new_grid_encoding(workspace, uninterrupted_sr, repo_root, tmp_path):
    """--init-weights: a run whose data encoding differs (so it cannot resume) starts from trained weights, keeps their
    sha256 in its checkpoints across a resume, and says clearly when the weights do not fit the network."""
    source = uninterrupted_sr / "checkpoints" / "step_6" / "ema.safetensors"
    config = _model_config(workspace["root"], "sr")
    block_max = tmp_path / "block_max.json"
    block_max.write_text(json.dumps({**json.loads(config.read_text()),
                                     "grid": {**asdict(GRID), "lowres_masks": "block_max"}}), encoding="utf-8")
    options = dict(model_config=block_max, init_weights=source, lr=1e-12, data_cache=tmp_path / "prepared")
    tuned = train(_config(workspace, tmp_path / "tuned", steps=1, checkpoint_every=1, **options))
    start = load_file(str(source))
    for tensors in _weights(tuned.checkpoint).values():  # online and EMA weights both start from the source
        for key, value in tensors.items():
            torch.testing.assert_close(value, start[key], atol=1e-9, rtol=0)
    assert read_trainer_state(tuned.checkpoint)["init_weights_sha256"] == sha256_file(source)
    resumed = train(_config(workspace, tmp_path / "tuned", steps=2, checkpoint_every=1, resume=True, **options))
    assert read_trainer_state(resumed.checkpoint)["init_weights_sha256"] == sha256_file(source)

    demo = repo_root / "Resources" / "Models" / "medsyn-demo-phantom"
    assert init_weight_file(demo, "sr") == demo / "sr.safetensors"
    with pytest.raises(MedSynError, match="sr.safetensors"):  # the demo SR network is deeper than this one
        train(_config(workspace, tmp_path / "mismatch", **{**options, "init_weights": demo}))
    with pytest.raises(MedSynError, match="model_card.json"):
        train(_config(workspace, tmp_path / "not_a_model", **{**options, "init_weights": tmp_path}))


def test_anchored_fine_tune_trains_only_the_unanchored_channels(workspace, uninterrupted_sr, tmp_path):
    """--anchor-model end to end: anchored to the weights it starts from, a run whose every channel is anchored has
    nothing to learn (zero loss), one that leaves the airway to the data learns from it; both record the anchor."""
    source = uninterrupted_sr / "checkpoints" / "step_6" / "ema.safetensors"
    options = dict(init_weights=source, anchor_model=source, lr=1e-12, steps=2, checkpoint_every=2)
    frozen = train(_config(workspace, tmp_path / "all_anchored", anchor_share="1,1,1,1", **options))
    assert max(_losses(frozen.run_dir)) < 1e-12
    assert read_trainer_state(frozen.checkpoint)["anchor_sha256"] == sha256_file(source)
    airway = train(_config(workspace, tmp_path / "airway_free", anchor_share="1,1,0,1", **options))
    assert min(_losses(airway.run_dir)) > 1e-6


def test_killed_run_resumes_from_its_last_checkpoint(workspace, uninterrupted_sr, tmp_path):
    def crash_at_step_5(event):
        if event.step == 5:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(_config(workspace, tmp_path / "run"), callback=crash_at_step_5)
    run = tmp_path / "run"
    assert latest_checkpoint(run).name == "step_3" and len(_losses(run)) == 3
    # A kill while writing step 6 leaves a hidden partial folder and possibly log rows past the checkpoint.
    assert killed_writer_staging(run / "checkpoints" / "step_6").exists()
    with (run / "loss.jsonl").open("a") as log:
        log.write(json.dumps({"step": 4, "loss": 99.0, "cases": []}) + "\n")
    resumed = train(_config(workspace, run, resume=True))
    assert _losses(run) == _losses(uninterrupted_sr)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_3", "step_6"]
    _assert_same_weights(resumed.checkpoint, uninterrupted_sr / "checkpoints" / "step_6")


def test_ddp_two_gloo_processes_split_the_data(workspace, tmp_path):
    """torchrun with 2 CPU ranks; equals one process with the same global batch, ranks read disjoint cases."""
    config = _config(workspace, tmp_path / "ddp", steps=4, checkpoint_every=2)
    prepare_dataset(config.data, GRID, HU_WINDOW, config.data_folder, show_progress=False)  # ranks reuse it
    entry = tmp_path / "entry.py"
    entry.write_text("import json, sys\nfrom medsyn.training.config import TrainConfig\n"
                     "from medsyn.training.trainer import train\n"
                     "train(TrainConfig.from_cli_args(**json.loads(sys.argv[1])))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                                str(entry), json.dumps(config.to_dict())], env=env, capture_output=True, text=True,
                               timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    run = tmp_path / "ddp"
    assert latest_checkpoint(run).name == "step_4"
    rows = read_loss_log(run / "loss.jsonl")
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    for row in rows:
        assert len(row["cases"]) == 2 and not set(row["cases"][0]) & set(row["cases"][1])
    assert {case for row in rows[:2] for rank in row["cases"] for case in rank} == {f"case_{i}" for i in range(4)}
    single = train(_config(workspace, tmp_path / "single", steps=4, checkpoint_every=4, batch_size=2))
    np.testing.assert_allclose([row["loss"] for row in rows], _losses(single.run_dir), rtol=1e-5)
