"""Volume, segmentation, preview and provenance files, and the all-or-nothing output folder."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
from PIL import Image

from medsyn.codec import DecodedVolume
from medsyn.errors import MedSynError
from medsyn.geometry import Grid, to_lps_array
from medsyn.io.outputs import SYNTHETIC_DESCRIPTION, AtomicOutputDir, check_output_dir, write_generation_outputs
from medsyn.io.preview import PREVIEW_SIZE_PX, VIEWS, pixel_aspect, radiological_slice, write_preview
from medsyn.io.provenance import build_provenance, write_json_atomic
from medsyn.io.segmentation import SEGMENTS, read_seg_nrrd, write_seg_nrrd
from medsyn.io.volumes import read_volume, write_volume
from output_writer import killed_writer_staging, start_writer

GRID = Grid((8, 12, 16), (0.9, 1.1, 1.7), (-20.0, 35.5, -110.0), (1, 0, 0, 0, -1, 0, 0, 0, 1))


def _volume(grid: Grid = GRID, seed: int = 0) -> DecodedVolume:
    """Two box 'lungs' split into lobes, random airway and vessel voxels inside them, air-density CT in the lungs."""
    rng = np.random.default_rng(seed)
    lobes = np.zeros(grid.shape_zyx, np.uint8)
    depth, _, width = grid.shape_zyx
    lobes[: depth // 2, 2:-2, 1 : width // 2 - 1] = 1
    lobes[depth // 2 :, 2:-2, 1 : width // 2 - 1] = 2
    lobes[: depth // 3, 2:-2, width // 2 + 1 : -1] = 3
    lobes[depth // 3 : 2 * depth // 3, 2:-2, width // 2 + 1 : -1] = 4
    lobes[2 * depth // 3 :, 2:-2, width // 2 + 1 : -1] = 5
    airway = ((rng.random(grid.shape_zyx) < 0.1) & (lobes > 0)).astype(np.uint8)
    vessels = ((rng.random(grid.shape_zyx) < 0.1) & (lobes > 0)).astype(np.uint8)
    ct = np.where(lobes > 0, -850, 40).astype(np.int16) + rng.integers(-20, 20, grid.shape_zyx).astype(np.int16)
    return DecodedVolume(ct, lobes, airway, vessels)


@pytest.mark.parametrize("name", ["v.nii.gz", "v.nii", "v.nrrd"])
@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32])
def test_volume_round_trip_keeps_dtype_values_and_geometry(tmp_path, name, dtype):
    array = np.random.default_rng(1).integers(0, 100, GRID.shape_zyx).astype(dtype)
    write_volume(tmp_path / name, array, GRID, description="SYNTHETIC test")
    read_back, grid = read_volume(tmp_path / name)
    assert read_back.dtype == dtype
    np.testing.assert_array_equal(read_back, array)
    assert grid.almost_equal(GRID, tol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left beside it


def test_volume_headers_say_synthetic(tmp_path):
    write_volume(tmp_path / "v.nii.gz", np.zeros(GRID.shape_zyx, np.int16), GRID, description=SYNTHETIC_DESCRIPTION)
    write_volume(tmp_path / "v.nrrd", np.zeros(GRID.shape_zyx, np.int16), GRID, description=SYNTHETIC_DESCRIPTION)
    assert nib.load(tmp_path / "v.nii.gz").header["descrip"].item().decode() == SYNTHETIC_DESCRIPTION
    assert nrrd.read_header(str(tmp_path / "v.nrrd"))["content"] == SYNTHETIC_DESCRIPTION


def test_write_volume_rejects_unknown_format(tmp_path):
    with pytest.raises(MedSynError, match=".nii.gz"):
        write_volume(tmp_path / "v.png", np.zeros(GRID.shape_zyx, np.int16), GRID)


def _bad_volume_file(folder: Path, problem: str) -> Path:
    """A file that read_volume must refuse because of ``problem``."""
    images = {
        "2-D": sitk.Image([5, 6], sitk.sitkInt16),
        "4-D": sitk.Image([5, 6, 7, 2], sitk.sitkInt16),
        "values per voxel": sitk.Image([5, 6, 7], sitk.sitkVectorFloat32, 3),
        "NaN": sitk.GetImageFromArray(np.full((3, 4, 5), np.nan, np.float32)),
    }
    path = folder / ("bad.nii.gz" if problem in ("cannot read", "4-D") else "bad.nrrd")
    if problem == "cannot read":
        path.write_bytes(b"\x1f\x8b not really gzip" * 20)
    elif problem in images:
        sitk.WriteImage(images[problem], str(path))
    return path


@pytest.mark.parametrize("problem", ["does not exist", "cannot read", "2-D", "4-D", "values per voxel", "NaN"])
def test_read_volume_errors_name_the_problem(tmp_path, problem):
    with pytest.raises(MedSynError, match=problem):
        read_volume(_bad_volume_file(tmp_path, problem))


def test_seg_nrrd_is_read_by_slicerio_with_seven_named_segments(tmp_path):
    volume = _volume()
    write_seg_nrrd(tmp_path / "s.seg.nrrd", volume.lobes, volume.airway, volume.vessels, GRID)
    segmentation = slicerio.read_segmentation(str(tmp_path / "s.seg.nrrd"))
    assert slicerio.segment_names(segmentation) == [segment.name for segment in SEGMENTS]
    np.testing.assert_allclose(segmentation["ijkToLPS"], GRID.index_to_lps_affine(), atol=1e-9)
    for segment in SEGMENTS:
        expected = (getattr(volume, segment.layer) == segment.label).transpose(2, 1, 0)  # slicerio indexes (i, j, k)
        assert expected.any()
        np.testing.assert_array_equal(slicerio.segment_mask(segmentation, segment.name), expected)
        found = slicerio.segment_from_name(segmentation, segment.name)
        assert found["terminology"]["type"][2] in segment.terminology and found["color"] == list(segment.color)


def test_seg_nrrd_round_trip_and_case_insensitive_names(tmp_path):
    volume = _volume()
    path = write_seg_nrrd(tmp_path / "s.seg.nrrd", volume.lobes, volume.airway, volume.vessels, GRID)
    voxels, header = nrrd.read(str(path))
    header["Segment0_Name"] = "Left Upper LOBE"
    nrrd.write(str(path), voxels, header)
    masks, grid = read_seg_nrrd(path)
    assert grid.almost_equal(GRID, tol=1e-9)
    assert set(masks) == {segment.name for segment in SEGMENTS}
    for segment in SEGMENTS:
        np.testing.assert_array_equal(masks[segment.name], getattr(volume, segment.layer) == segment.label)


def test_read_seg_nrrd_errors(tmp_path):
    with pytest.raises(MedSynError, match="does not exist"):
        read_seg_nrrd(tmp_path / "none.seg.nrrd")
    (tmp_path / "junk.seg.nrrd").write_text("not a nrrd")
    with pytest.raises(MedSynError, match="cannot read"):
        read_seg_nrrd(tmp_path / "junk.seg.nrrd")


def test_seg_nrrd_loads_in_slicer_storage_node(tmp_path):
    slicer = pytest.importorskip("slicer")
    volume = _volume()
    write_seg_nrrd(tmp_path / "s.seg.nrrd", volume.lobes, volume.airway, volume.vessels, GRID)
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(tmp_path / "s.seg.nrrd"))
    assert storage.ReadData(node)
    segmentation = node.GetSegmentation()
    names = [segmentation.GetNthSegment(n).GetName() for n in range(segmentation.GetNumberOfSegments())]
    assert names == [segment.name for segment in SEGMENTS]


def _red_pixels(png: Path, rows: slice) -> int:
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)[rows]
    return int(((rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)).sum())


def test_preview_png_has_expected_size_and_synthetic_banner(tmp_path):
    volume = _volume()
    edit = np.zeros(GRID.shape_zyx, np.uint8)
    edit[2:6, 3:9, 4:12] = 1
    path = write_preview(tmp_path / "p.png", volume.ct_hu, volume.lobes, volume.airway, volume.vessels, GRID,
                         edit_mask=edit, title="right lower lobe nodule")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == PREVIEW_SIZE_PX
    assert _red_pixels(path, slice(0, PREVIEW_SIZE_PX[1] // 10)) > 500  # the red "SYNTHETIC" line at the top
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, -1, 0, 0, 0, 1), (0, 0, -1, -1, 0, 0, 0, 1, 0)])
def test_preview_planes_follow_radiological_convention(direction):
    """Rows/columns of each plane run along the patient axes radiologists expect, whatever the grid's direction."""
    grid = Grid((6, 7, 8), (0.5, 1.0, 2.0), (3.0, -4.0, 5.0), direction)
    k, j, i = np.meshgrid(*(np.arange(n) for n in grid.shape_zyx), indexing="ij")
    lps = np.einsum("ab,zyxb->zyxa", grid.index_to_lps_affine()[:3, :3], np.stack([i, j, k], axis=-1))
    right, anterior, superior = -lps[..., 0], -lps[..., 1], lps[..., 2]
    expected = {  # (coordinate falling down the rows, coordinate falling along the columns)
        "axial": (anterior, right),
        "coronal": (superior, right),
        "sagittal": (superior, anterior),
    }
    aligned_spacing = to_lps_array(right, grid)[1]
    for view in VIEWS:
        down_rows, along_columns = (
            radiological_slice(to_lps_array(c, grid)[0], view, (1, 2, 3)) for c in expected[view]
        )
        assert np.all(np.diff(down_rows, axis=0) < 0) and np.allclose(np.diff(down_rows, axis=1), 0)
        assert np.all(np.diff(along_columns, axis=1) < 0) and np.allclose(np.diff(along_columns, axis=0), 0)
        row_mm, column_mm = -np.diff(down_rows, axis=0)[0, 0], -np.diff(along_columns, axis=1)[0, 0]
        assert pixel_aspect(aligned_spacing, view) == pytest.approx(row_mm / column_mm)


def test_provenance_is_marked_synthetic_and_serialises_paths(tmp_path):
    record = build_provenance(prompt="clear lungs", seed=3, weights=Path("/m/w.safetensors"), seconds=np.float32(1.5))
    assert record["synthetic"] is True and record["software"]["version"] and record["created_utc"].endswith("+00:00")
    write_json_atomic(tmp_path / "p.json", record)
    loaded = json.loads((tmp_path / "p.json").read_text())
    assert loaded["weights"] == "/m/w.safetensors" and loaded["seconds"] == 1.5 and loaded["seed"] == 3
    assert build_provenance(software="medsyn 9")["software"] == "medsyn 9"
    with pytest.raises(ValueError, match="synthetic"):
        build_provenance(synthetic=False)


def _write_outputs(out_dir: Path, **kwargs) -> dict[str, Path]:
    low_grid = GRID.downsampled(2)
    full = _volume()
    low = DecodedVolume(*(a[::2, ::2, ::2].copy() for a in (full.ct_hu, full.lobes, full.airway, full.vessels)))
    provenance = build_provenance(prompt="bilateral effusion", seed=7, steps=2)
    return write_generation_outputs(out_dir, full, GRID, low, low_grid, provenance, **kwargs)


def test_generation_outputs_overlay_in_simpleitk_and_nibabel(tmp_path):
    paths = _write_outputs(tmp_path / "run")
    expected = {"ct", "lobes", "airway", "vessels", "segmentation", "provenance", "preview"}
    expected |= {f"lowres_{role}" for role in ("ct", "lobes", "airway", "vessels", "segmentation")}
    assert set(paths) == expected
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(p.name for p in paths.values())
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    full = _volume()
    for prefix, grid, stride in (("", GRID, 1), ("lowres_", GRID.downsampled(2), 2)):
        for role, dtype in (("ct", np.int16), ("lobes", np.uint8), ("airway", np.uint8), ("vessels", np.uint8)):
            path = paths[prefix + role]
            image = sitk.ReadImage(str(path))
            assert Grid.from_sitk(image).almost_equal(grid, tol=1e-5)
            original = getattr(full, "ct_hu" if role == "ct" else role)
            np.testing.assert_array_equal(sitk.GetArrayFromImage(image), original[::stride, ::stride, ::stride])
            nifti = nib.load(path)
            assert nifti.get_data_dtype() == dtype
            np.testing.assert_allclose(nifti.affine, grid.to_ras_affine(), atol=1e-5)
        masks, seg_grid = read_seg_nrrd(paths[prefix + "segmentation"])
        assert seg_grid.almost_equal(grid, tol=1e-9) and len(masks) == 7
    provenance = json.loads(paths["provenance"].read_text())
    assert provenance["synthetic"] is True and provenance["seed"] == 7
    assert Grid.from_dict(provenance["grid"]) == GRID
    assert Grid.from_dict(provenance["lowres_grid"]) == GRID.downsampled(2)
    assert Image.open(paths["preview"]).size == PREVIEW_SIZE_PX


def test_identical_inputs_give_identical_bytes(tmp_path):
    first = _write_outputs(tmp_path / "a")
    time.sleep(1.1)  # any wall-clock stamp (gzip mtime, NRRD comment, PNG metadata) would now differ
    second = _write_outputs(tmp_path / "b")
    for role in ("ct", "lobes", "vessels", "segmentation", "lowres_ct", "preview"):
        assert first[role].read_bytes() == second[role].read_bytes(), role
    assert first["ct"].read_bytes()[4:8] == b"\0\0\0\0"  # gzip header carries no modification time


def test_existing_folder_needs_overwrite(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "old.txt").write_text("previous run")
    with pytest.raises(MedSynError, match="not empty"):
        _write_outputs(out)
    assert (out / "old.txt").exists()
    _write_outputs(out, overwrite=True)
    assert not (out / "old.txt").exists() and (out / "ct.nii.gz").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_failure_leaves_nothing_behind(tmp_path):
    with pytest.raises(RuntimeError, match="cancelled"):
        with AtomicOutputDir(tmp_path / "run") as staging:
            (staging / "ct.nii.gz").write_bytes(b"partial")
            raise RuntimeError("cancelled")
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_the_previous_result(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "ct.nii.gz").write_text("previous")
    with pytest.raises(RuntimeError):
        with AtomicOutputDir(out, overwrite=True):
            raise RuntimeError("cancelled")
    assert (out / "ct.nii.gz").read_text() == "previous" and [p.name for p in tmp_path.iterdir()] == ["run"]


def test_concurrent_writers_keep_each_others_staging_and_the_late_one_fails_clearly(tmp_path):
    out, go = tmp_path / "run", tmp_path / "go"
    writer, their_staging = start_writer(out, go)
    try:
        with AtomicOutputDir(out) as staging:
            assert (their_staging / "first.txt").exists(), "a live writer's staging folder was deleted"
            (staging / "second.txt").write_text("second writer")
    finally:
        go.touch()
        message = writer.communicate(timeout=60)[0]
    assert "another run wrote" in message and "own output folder" in message
    assert sorted(p.name for p in out.iterdir()) == ["second.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["go", "run"]


def test_a_killed_writers_staging_is_cleaned_up_by_the_next_run(tmp_path):
    out = tmp_path / "run"
    their_staging = killed_writer_staging(out)
    elsewhere = tmp_path / ".run.partial-otherhost-1-0123abcd"  # another machine's writer cannot be checked
    elsewhere.mkdir()
    assert their_staging.exists()
    with AtomicOutputDir(out) as staging:
        (staging / "ct.nii.gz").write_bytes(b"new")
    assert not their_staging.exists() and elsewhere.exists()
    assert [p.name for p in out.iterdir()] == ["ct.nii.gz"]


def test_output_below_a_file_is_not_writable(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(MedSynError, match="is not writable"):
        check_output_dir(tmp_path / "file" / "run")
    with pytest.raises(MedSynError, match="is not writable"):
        _write_outputs(tmp_path / "file" / "run")
    with pytest.raises(MedSynError, match="is a file"):
        check_output_dir(tmp_path / "file")
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_check_output_dir_creates_nothing(tmp_path):
    check_output_dir(tmp_path / "a" / "b" / "run")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(MedSynError, match="not empty"):
        check_output_dir(tmp_path / "full")
    check_output_dir(tmp_path / "full", overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["full"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="permission bits do not stop root")
def test_read_only_parent_is_not_writable(tmp_path):
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        with pytest.raises(MedSynError, match="is not writable"):
            _write_outputs(parent / "run")
    finally:
        parent.chmod(0o700)
