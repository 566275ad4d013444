"""``check-fixture``: the shipped official fixture conforms; a copy with one perturbed tensor does not."""
from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from medsyn.errors import MedSynError
from medsyn.fixture_check import check_fixture, run_check_fixture


def _perturbed_copy(fixture_dir, tmp_path, file_name: str, key: str, delta: float):
    folder = tmp_path / "fixture"
    shutil.copytree(fixture_dir, folder)
    tensors = load_file(folder / file_name)
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] += delta
    save_file(tensors, str(folder / file_name))
    return folder


def test_official_fixture_conforms(fixture_dir, capsys):
    assert run_check_fixture(fixture_dir) == 0
    lines = capsys.readouterr().out.splitlines()
    assert not [line for line in lines if line.endswith("FAIL")]
    names = {line.split()[0] for line in lines}
    # forward outputs of both up orders, intermediates, and every DDIM run (teacher-forced and free-running)
    for name in ("lowres.out_eval_cfg3", "lowres.out_train_null", "sr.out_train", "lowres.eval_cond.mid_cross_attn3",
                 "cg_cs3_fix12.x0_hat", "sr_eval.sample", "eval_cs1.x_t"):
        assert name in names


def test_perturbed_forward_output_fails(fixture_dir, tmp_path, capsys):
    folder = _perturbed_copy(fixture_dir, tmp_path, "lowres_io.safetensors", "out_eval_cond", 1e-3)
    assert run_check_fixture(folder, verbose=False) != 0
    failing = [line for line in capsys.readouterr().out.splitlines() if line.endswith("FAIL")]
    assert len(failing) == 1 and failing[0].startswith("lowres.out_eval_cond ")


def test_perturbed_ddim_step_fails_teacher_forced_only(fixture_dir, tmp_path):
    folder = _perturbed_copy(fixture_dir, tmp_path, "ddim_trace.safetensors", "cg_cs3.x0_hat", 1e-3)
    report = check_fixture(folder)
    assert [r.name for r in report.failures] == ["cg_cs3.x0_hat (teacher-forced)"]


def test_folder_without_manifest_is_a_user_error(tmp_path):
    with pytest.raises(MedSynError, match="manifest.json"):
        check_fixture(tmp_path)


def test_incomplete_manifest_is_a_user_error(fixture_dir, tmp_path):
    folder = tmp_path / "fixture"
    shutil.copytree(fixture_dir, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["models"]["lowres"]["unique_parameter_count"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MedSynError, match="unique_parameter_count"):
        check_fixture(folder)
