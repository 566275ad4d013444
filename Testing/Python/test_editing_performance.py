"""Editing with the generation pipeline's sampling and performance options: the sampler, precision and SR tiles reach
both stages of an edit, no report means the unconditional model (one forward per step), and the CLI passes the options
through. Tiny random-weight model, CPU."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from editing_volumes import LPS, ball, centred_grid, chest_ct
from medsyn import api
from medsyn.cli import main
from medsyn.diffusion.samplers import SAMPLERS
from medsyn.editing.engine import model_grid_for
from medsyn.errors import MedSynError
from medsyn.io.volumes import read_volume, write_volume
from medsyn.models.loaded import load_model
from medsyn.pipeline import MedSynPipeline
from tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def loaded(tiny):
    return load_model(str(tiny), device="cpu")


@pytest.fixture
def inpaint_case(tmp_path):
    grid = centred_grid((12, 22, 24), (2.5, 2.2, 1.8), LPS)
    ct, mask = chest_ct(grid), ball(grid, (0.0, 0.0, 0.0), 6.0)
    write_volume(tmp_path / "ct.nii.gz", ct, grid)
    write_volume(tmp_path / "mask.nii.gz", mask.astype(np.uint8), grid)
    return tmp_path / "ct.nii.gz", tmp_path / "mask.nii.gz", ct, mask


def _provenance(paths: dict[str, Path]) -> dict:
    return json.loads(paths["provenance"].read_text())


def test_sampler_reaches_both_stages_of_an_edit(loaded, inpaint_case, tmp_path, monkeypatch):
    ct_path, mask_path, ct, mask = inpaint_case
    calls = []
    for name, sample in list(SAMPLERS.items()):
        def recording(*args, stage, _name=name, _sample=sample, **kwargs):
            calls.append((_name, stage))
            return _sample(*args, stage=stage, **kwargs)
        monkeypatch.setitem(SAMPLERS, name, recording)

    def inpaint(out: str, sampler: str) -> np.ndarray:
        calls.clear()
        paths = api.inpaint(ct_path, mask_path, tmp_path / out, report="Nodule.", loaded=loaded, seed=3,
                            sampler=sampler)
        assert calls == [(sampler, "lowres"), (sampler, "sr")]
        assert _provenance(paths)["sampler"].startswith("dpm-solver++" if sampler == "dpmpp2m" else "ddim")
        return read_volume(paths["ct"])[0]

    ddim, dpm, dpm_again = inpaint("ddim", "ddim"), inpaint("dpm", "dpmpp2m"), inpaint("dpm2", "dpmpp2m")
    assert dpm.tobytes() == dpm_again.tobytes()
    assert (dpm[mask] != ddim[mask]).mean() > 0.5
    assert dpm[~mask].tobytes() == ct[~mask].tobytes()


def test_precision_and_tiles_reach_both_stages(loaded, tmp_path):
    grid = centred_grid((10, 20, 20), (2.6, 2.4, 1.7), LPS)
    write_volume(tmp_path / "ct.nii.gz", chest_ct(grid), grid)
    forwards = []
    hooks = [net.register_forward_pre_hook(lambda module, args, _stage=stage: forwards.append(
                 (_stage, torch.is_autocast_enabled("cpu"), tuple(args[0].shape[2:]))))
             for stage, net in (("lowres", loaded.lowres), ("sr", loaded.sr))]
    try:
        paths = api.segment(tmp_path / "ct.nii.gz", tmp_path / "bf16", loaded=loaded, precision="bf16",
                            sr_tile=(8, 8, 8))
        assert {stage for stage, _, _ in forwards} == {"lowres", "sr"}
        assert all(autocast for _, autocast, _ in forwards)
        assert {shape for stage, _, shape in forwards if stage == "sr"} == {(8, 8, 8)}  # the SR grid is 8x16x16
        provenance = _provenance(paths)
        assert provenance["precision"] == "bf16" and provenance["sr_tile"] == [8, 8, 8]
        forwards.clear()
        paths = api.segment(tmp_path / "ct.nii.gz", tmp_path / "fp32", loaded=loaded, precision="fp32")
        assert not any(autocast for _, autocast, _ in forwards)
        assert {shape for stage, _, shape in forwards if stage == "sr"} == {(8, 16, 16)}
        assert _provenance(paths)["sr_tile"] == "whole"
    finally:
        for hook in hooks:
            hook.remove()


def test_no_report_samples_the_null_embedding_with_one_forward_per_step(loaded, tmp_path):
    pipeline = MedSynPipeline(loaded)
    counts = []
    hook = loaded.lowres.register_forward_pre_hook(lambda module, args: counts.append(args[0].shape[0]))
    try:
        unconditional = pipeline.generate(None, seed=2, guidance=3.0, low_res_only=True)
        unconditional_forwards = len(counts)
        counts.clear()
        pipeline.generate("Emphysema.", seed=2, guidance=3.0, low_res_only=True)
        assert len(counts) == 2 * unconditional_forwards  # guidance needs a text and a null forward per step
    finally:
        hook.remove()
    # x̂0_null + 0·(x̂0_text − x̂0_null) is exactly x̂0_null: the text was multiplied away, as the null embedding alone.
    null_only = pipeline.generate("Any text.", seed=2, guidance=0.0, low_res_only=True)
    assert torch.equal(unconditional.lowres_tensor, null_only.lowres_tensor)
    assert unconditional.settings["prompt"] is None and unconditional.settings["guidance"] is None
    assert pipeline.generate("", seed=2, low_res_only=True).lowres_tensor.equal(unconditional.lowres_tensor)
    with pytest.raises(MedSynError, match="mixes empty and non-empty"):
        pipeline.generate_batch(["Emphysema.", ""], [0, 1], low_res_only=True)
    with pytest.raises(MedSynError, match="report is empty"):
        api.generate(" ", tmp_path / "out", loaded=loaded)


def test_cli_passes_sampling_options_to_conditioned_generation_and_edits(tiny, loaded, inpaint_case, tmp_path):
    grid, _ = model_grid_for(loaded, low_res_only=False)
    lobes = np.random.default_rng(1).integers(0, 6, size=grid.shape_zyx).astype(np.uint8)
    write_volume(tmp_path / "lobes.nii.gz", lobes, grid)
    shared = ["--model", str(tiny), "--device", "cpu", "--sampler", "dpmpp2m", "--precision", "bf16"]
    assert main(["generate", "--report", "Cardiomegaly.", "--lobes", str(tmp_path / "lobes.nii.gz"), *shared,
                 "--sr-tile", "8,8,8", "--out", str(tmp_path / "cond")]) == 0
    provenance = json.loads((tmp_path / "cond" / "provenance.json").read_text())
    assert provenance["mode"] == "generate" and provenance["sampler"].startswith("dpm-solver++")
    assert provenance["precision"] == "bf16" and provenance["sr_tile"] == [8, 8, 8]
    assert np.array_equal(read_volume(tmp_path / "cond" / "lobes.nii.gz")[0], lobes)

    ct_path, mask_path, _, _ = inpaint_case
    assert main(["inpaint", "--input", str(ct_path), "--mask", str(mask_path), *shared, "--steps", "3",
                 "--sr-steps", "1", "--seed", "4", "--out", str(tmp_path / "edit")]) == 0
    provenance = json.loads((tmp_path / "edit" / "provenance.json").read_text())
    assert provenance["sampler"].startswith("dpm-solver++") and provenance["precision"] == "bf16"
    assert (provenance["steps"], provenance["sr_steps"], provenance["seed"]) == (3, 1, 4)
    assert provenance["prompt"] is None
