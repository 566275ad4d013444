"""End-to-end generation through the CLI and Python API with a tiny random-weight model: outputs, geometry,
determinism, provenance, and one-line errors that leave nothing behind."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medsyn import api
from medsyn.cli import main
from medsyn.models.card import load_card
from tiny_model import build_tiny_model

OUTPUTS = {"ct.nii.gz", "lobes.nii.gz", "airway.nii.gz", "vessels.nii.gz", "segmentation.seg.nrrd",
           "provenance.json", "preview.png", "lowres.nii.gz", "lowres_lobes.nii.gz"}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-random-test")


def _run(*args: str) -> int:
    return main([str(a) for a in args])


def test_generate_writes_aligned_outputs(tiny_model, tmp_path):
    out = tmp_path / "case"
    assert _run("generate", "--report", "Large right pleural effusion.", "--model", tiny_model, "--seed", 3,
                "--device", "cpu", "--out", out) == 0
    assert OUTPUTS <= {p.name for p in out.iterdir()}
    card = load_card(tiny_model)
    ct = sitk.ReadImage(str(out / "ct.nii.gz"))
    assert ct.GetPixelID() == sitk.sitkInt16
    assert list(ct.GetSize()[::-1]) == card.grid.shape_zyx
    np.testing.assert_allclose(ct.GetSpacing(), card.grid.spacing_xyz, atol=1e-5)
    np.testing.assert_allclose(ct.GetDirection(), card.grid.direction_lps, atol=1e-6)
    np.testing.assert_allclose(ct.GetOrigin(), card.grid.origin_lps, atol=1e-4)
    for name in ("lobes", "airway", "vessels"):
        mask = sitk.ReadImage(str(out / f"{name}.nii.gz"))
        assert mask.GetPixelID() == sitk.sitkUInt8
        assert mask.GetSize() == ct.GetSize()
        np.testing.assert_allclose(mask.GetOrigin(), ct.GetOrigin(), atol=1e-5)
        np.testing.assert_allclose(mask.GetDirection(), ct.GetDirection(), atol=1e-6)
    lobes = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "lobes.nii.gz")))
    assert lobes.max() <= 5
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["synthetic"] is True and prov["seed"] == 3 and prov["prompt"] == "Large right pleural effusion."
    assert prov["model"] == "tiny-random-test" and prov["weights_sha256"]["lowres"] == card.lowres.sha256


def test_same_seed_is_byte_identical(tiny_model, tmp_path):
    for name in ("a", "b"):
        api.generate("No pleural effusion.", tmp_path / name, model=str(tiny_model), seed=7, device="cpu")
    assert (tmp_path / "a" / "ct.nii.gz").read_bytes() == (tmp_path / "b" / "ct.nii.gz").read_bytes()
    api.generate("No pleural effusion.", tmp_path / "c", model=str(tiny_model), seed=8, device="cpu")
    assert (tmp_path / "a" / "ct.nii.gz").read_bytes() != (tmp_path / "c" / "ct.nii.gz").read_bytes()


def test_low_res_only_and_progress(tiny_model, tmp_path):
    events = []
    api.generate("Cardiomegaly.", tmp_path / "low", model=str(tiny_model), device="cpu", low_res_only=True,
                 callback=events.append)
    card = load_card(tiny_model)
    ct = sitk.ReadImage(str(tmp_path / "low" / "ct.nii.gz"))
    assert list(ct.GetSize()[::-1]) == card.grid.lowres_shape_zyx
    assert {e.stage for e in events} == {"lowres"} and events[-1].step == events[-1].total == 5


def test_batch_generation_is_resumable(tiny_model, tmp_path):
    loaded = api.load_model(str(tiny_model), device="cpu")
    rows = api.generate_batch(["No effusion.", "Large left pleural effusion."], [0, 1], tmp_path / "batch",
                              loaded=loaded)
    assert len(rows) == 4 and len(list((tmp_path / "batch").glob("*/ct.nii.gz"))) == 4
    before = (tmp_path / "batch" / "0000_seed0" / "ct.nii.gz").stat().st_mtime_ns
    api.generate_batch(["No effusion.", "Large left pleural effusion."], [0, 1], tmp_path / "batch", loaded=loaded)
    assert (tmp_path / "batch" / "0000_seed0" / "ct.nii.gz").stat().st_mtime_ns == before
    assert len((tmp_path / "batch" / "summary.jsonl").read_text().splitlines()) == 4


@pytest.mark.parametrize("case", ["empty_report", "unknown_model", "cuda", "not_writable", "missing_weights",
                                  "corrupt_weights", "wrong_shapes", "bad_card"])
def test_bad_inputs_one_line_error_and_nothing_written(case, tiny_model, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    out = tmp_path / "out"
    report = "Small left pleural effusion."
    device = "cpu"
    if case == "empty_report":
        report = "   "
    elif case == "unknown_model":
        model = "no-such-model"
    elif case == "cuda":
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        device = "cuda"
    elif case == "not_writable":
        blocker = tmp_path / "file"
        blocker.write_text("x")
        out = blocker / "sub"
    elif case == "missing_weights":
        (model / "sr.safetensors").unlink()
    elif case == "corrupt_weights":
        data = bytearray((model / "lowres.safetensors").read_bytes())
        data[-10:] = b"\x00" * 10
        (model / "lowres.safetensors").write_bytes(bytes(data))
    elif case == "wrong_shapes":
        card = json.loads((model / "model_card.json").read_text())
        card["lowres"]["network"]["dim"] = 8
        (model / "model_card.json").write_text(json.dumps(card))
    elif case == "bad_card":
        card = json.loads((model / "model_card.json").read_text())
        card["lowres"]["steps"] = 0
        (model / "model_card.json").write_text(json.dumps(card))
    assert _run("generate", "--report", report, "--model", model, "--device", device, "--out", out) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert not out.exists()
    if case == "wrong_shapes":
        assert "init_conv.weight" in err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") or "tmp" in p.name]
