"""Bad editing inputs end in one line on stderr, exit code 2, and no output folder, before any sampling; the editing
commands parse and run through ``medsyn``'s own entry point."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from editing_volumes import LPS, ball, centred_grid, chest_ct
from medsyn import cli
from medsyn.editing.cli import add_anatomy_arguments, add_editing_commands, anatomy_kwargs
from medsyn.io.segmentation import write_seg_nrrd
from medsyn.io.volumes import write_volume
from tiny_model import build_tiny_model

GRID = centred_grid((12, 22, 24), (2.5, 2.2, 1.8), LPS)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture
def medsyn_main():
    """``medsyn.cli.main``, the real entry point with every command group registered."""
    return lambda *args: cli.main([str(a) for a in args])


@pytest.fixture
def inputs(tmp_path):
    write_volume(tmp_path / "ct.nii.gz", chest_ct(GRID), GRID)
    write_volume(tmp_path / "mask.nii.gz", ball(GRID, (0.0, 0.0, 0.0), 6.0).astype(np.uint8), GRID)
    return tmp_path


def _bad_input(case: str, folder) -> list:
    """Arguments of one bad call; writes the offending file into ``folder``."""
    ct, mask = folder / "ct.nii.gz", folder / "mask.nii.gz"
    bad = folder / "bad.nii.gz"
    shape = GRID.shape_zyx
    if case == "empty_mask":
        write_volume(bad, np.zeros(shape, np.uint8), GRID)
        return ["inpaint", "--input", ct, "--mask", bad]
    if case == "full_mask":
        write_volume(bad, np.ones(shape, np.uint8), GRID)
        return ["inpaint", "--input", ct, "--mask", bad]
    if case == "mask_grid_mismatch":
        shifted = centred_grid(shape, (2.5, 2.2, 1.8), LPS, centre_lps=(1.1, 0.0, 0.0))
        write_volume(bad, ball(shifted, (0.0, 0.0, 0.0), 6.0).astype(np.uint8), shifted)
        return ["inpaint", "--input", ct, "--mask", bad]
    if case == "non_binary_mask":
        write_volume(bad, ball(GRID, (0.0, 0.0, 0.0), 6.0).astype(np.uint8) * 2, GRID)
        return ["inpaint", "--input", ct, "--mask", bad]
    if case == "unknown_segment":
        seg = folder / "anatomy.seg.nrrd"
        write_seg_nrrd(seg, np.ones(shape, np.uint8), np.zeros(shape, np.uint8), np.zeros(shape, np.uint8), GRID)
        seg.write_bytes(seg.read_bytes().replace(b"Segment0_Name:=left upper lobe", b"Segment0_Name:=heart"))
        return ["inpaint", "--input", ct, "--mask", mask, "--lobes", seg]
    if case == "lobe_label_7":
        write_volume(bad, np.full(shape, 7, np.uint8), GRID)
        return ["inpaint", "--input", ct, "--mask", mask, "--lobes", bad]
    if case == "input_2d":
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 20), np.int16)), str(bad))
        return ["segment", "--input", bad]
    if case == "input_4d":
        sitk.WriteImage(sitk.Image([6, 6, 6, 2], sitk.sitkInt16), str(bad))
        return ["segment", "--input", bad]
    if case == "nan_voxels":  # NRRD: SimpleITK's NIfTI reader turns NaN into 0 before anyone can see it
        values = chest_ct(GRID, np.float32)
        values[3, 4, 5] = np.nan
        write_volume(folder / "nan.nrrd", values, GRID)
        return ["outpaint", "--input", folder / "nan.nrrd", "--margin-mm", "4,4,4"]
    if case == "bad_segment_map":
        return ["inpaint", "--input", ct, "--mask", mask, "--lobes", mask, "--segment-map", "foo=lobe:XYZ"]
    if case == "negative_seam_blend":
        return ["outpaint", "--input", ct, "--margin-mm", "4,4,4", "--seam-blend", "-2"]
    if case == "mask_outside_model_fov":
        write_volume(bad, ball(GRID, (27.0, 0.0, 0.0), 4.0).astype(np.uint8), GRID)
        return ["inpaint", "--input", ct, "--mask", bad, "--center-lps=-20,0,0"]
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["empty_mask", "full_mask", "mask_grid_mismatch", "non_binary_mask",
                                  "unknown_segment", "lobe_label_7", "input_2d", "input_4d", "nan_voxels",
                                  "bad_segment_map", "mask_outside_model_fov", "negative_seam_blend"])
def test_bad_input_gives_one_line_and_writes_nothing(case, inputs, tiny_model, medsyn_main, capsys):
    out = inputs / "out"
    code = medsyn_main(*_bad_input(case, inputs), "--model", tiny_model, "--device", "cpu", "--out", out)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert not out.exists() and not [p for p in inputs.iterdir() if p.name.startswith(".")]


def test_editing_commands_run_from_the_cli(inputs, tiny_model, medsyn_main, capsys):
    out = inputs / "out"
    assert medsyn_main("inpaint", "--input", inputs / "ct.nii.gz", "--mask", inputs / "mask.nii.gz", "--report",
                       "Small left pleural effusion.", "--feather", "1", "--repaint", "2,2", "--seam-blend", "5", "--model", tiny_model,
                       "--device", "cpu", "--out", out) == 0
    assert f"ct: {out / 'ct.nii.gz'}" in capsys.readouterr().out
    assert medsyn_main("outpaint", "--input", inputs / "ct.nii.gz", "--canvas", inputs / "ct.nii.gz", "--model",
                       tiny_model, "--out", inputs / "o2") == 2  # canvas == input: nothing to fill
    assert "nothing to outpaint" in capsys.readouterr().err


def test_anatomy_options_for_generate():
    import argparse

    parser = argparse.ArgumentParser()
    add_anatomy_arguments(parser)
    assert anatomy_kwargs(parser.parse_args([])) == {}
    args = parser.parse_args(["--lobes", "l.seg.nrrd", "--segment-map", "My LUL=lobe:LUL", "--center-lps", "1,2,3"])
    assert anatomy_kwargs(args) == {"lobes": "l.seg.nrrd", "segment_map": "My LUL=lobe:LUL",
                                    "center_lps": (1.0, 2.0, 3.0)}
