"""Slicer-side logic against a real MRML scene (slicer-core): scene <-> files, segment mapping, ROI -> IJK, result
import, provenance attributes and subject hierarchy. No worker here; the worker tests run the whole chain."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk

from medsyn.codec import DecodedVolume
from medsyn.errors import MedSynError
from medsyn.geometry import Grid
from medsyn.io.outputs import write_generation_outputs
from medsyn.io.provenance import build_provenance
from MedSynSlicerLib import roi, scene_io, segment_mapping
from MedSynSlicerLib.runner import MODES, RunInputs, RunSettings, build_request, check_inputs, import_result
from slicer_mrml import add_segment, add_volume, in_study, new_scene

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
ROTATION_Z30 = np.array([[np.cos(np.pi / 6), -np.sin(np.pi / 6), 0.0], [np.sin(np.pi / 6), np.cos(np.pi / 6), 0.0],
                         [0.0, 0.0, 1.0]])


@pytest.fixture
def scene():
    return new_scene()


def ijk_to_ras(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def sitk_ijk_to_ras(image) -> np.ndarray:
    """IJK -> RAS of a file read by SimpleITK (which reports LPS)."""
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    affine[:3, 3] = LPS_TO_RAS @ np.asarray(image.GetOrigin())
    return affine


def oblique_ct(scene, shape=(6, 7, 8)):
    values = np.arange(np.prod(shape), dtype=np.int16).reshape(shape) - 1000
    return add_volume(scene, values, "patient CT", origin=(10.0, -20.0, 30.0), spacing=(0.8, 0.9, 2.5),
                      directions=ROTATION_Z30 @ np.diag([1.0, -1.0, 1.0]))


# -- scene <-> files ---------------------------------------------------------------------------------------------


def test_volume_is_written_with_its_lps_geometry_and_the_input_is_untouched(scene, tmp_path):
    volume = oblique_ct(scene)
    mtime, nodes = volume.GetMTime(), scene.GetNumberOfNodes()

    path = scene_io.write_volume(volume, tmp_path / "input.nrrd")

    image = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), slicer.util.arrayFromVolume(volume))
    np.testing.assert_allclose(sitk_ijk_to_ras(image), ijk_to_ras(volume), atol=1e-5)
    np.testing.assert_allclose(image.GetOrigin(), (-10.0, 20.0, 30.0), atol=1e-6)  # RAS (10,-20,30) in LPS
    assert volume.GetMTime() == mtime and volume.GetStorageNode() is None and scene.GetNumberOfNodes() == nodes


def test_labelmap_array_lands_on_the_reference_voxels(scene, tmp_path):
    volume = oblique_ct(scene)
    mask = np.zeros((6, 7, 8), np.uint8)
    mask[2, 3, 5] = 1

    image = sitk.ReadImage(str(scene_io.write_labelmap_array(mask, volume, tmp_path / "mask.nrrd")))

    assert image.GetPixelID() == sitk.sitkUInt8
    point_lps = image.TransformIndexToPhysicalPoint((5, 3, 2))
    expected_ras = ijk_to_ras(volume) @ [5, 3, 2, 1]
    np.testing.assert_allclose(LPS_TO_RAS @ point_lps, expected_ras[:3], atol=1e-5)
    assert sitk.GetArrayFromImage(image)[2, 3, 5] == 1 and sitk.GetArrayFromImage(image).sum() == 1
    with pytest.raises(ValueError, match="does not match"):
        scene_io.write_labelmap_array(mask[:-1], volume, tmp_path / "bad.nrrd")


# -- segment mapping ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, structure", [
    ("Lung_Upper_Lobe_Left", "left upper lobe"), ("LUL", "left upper lobe"),
    ("lower lobe of left lung", "left lower lobe"), ("Right-Middle-Lobe", "right middle lobe"),
    ("rll", "right lower lobe"), ("  Right  upper lobe ", "right upper lobe"),
    ("Trachea and bronchi", "airway"), ("Airways", "airway"), ("Pulmonary vessels", "vessels"),
    ("left upper lobe nodule", None), ("Segment_1", None)])
def test_segment_names_map_to_structures(name, structure):
    assert segment_mapping.structure_for(name) == structure


def test_overrides_win_over_names_and_unknown_ids_are_refused():
    segments = {"a": "LUL", "b": "Segment_3", "c": "airway", "d": "LUL"}
    mapping = segment_mapping.resolve_mapping(segments, {"vessels": "b", "airway": segment_mapping.NOT_MAPPED})
    assert mapping == {"left upper lobe": "a", "vessels": "b"}
    with pytest.raises(ValueError, match="not in the segmentation"):
        segment_mapping.resolve_mapping(segments, {"vessels": "zz"})
    with pytest.raises(ValueError, match="unknown structure"):
        segment_mapping.resolve_mapping(segments, {"heart": "a"})


def test_anatomy_exports_as_lobe_labelmap_and_binary_masks_on_the_reference_grid(scene, tmp_path):
    volume = oblique_ct(scene)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    lul, rll, airway, vessel = (np.zeros((6, 7, 8), bool) for _ in range(4))
    lul[:3, :, :4], rll[3:, :, 4:], airway[:, 3, 3], vessel[1, :, 6] = True, True, True, True
    ids = {name: add_segment(segmentation, name, mask, volume)
           for name, mask in (("Lung_Upper_Lobe_Left", lul), ("RLL", rll), ("Airway", airway), ("drawn", vessel))}
    mapping = segment_mapping.resolve_mapping(segment_mapping.segment_names(segmentation), {"vessels": ids["drawn"]})

    files = segment_mapping.export_anatomy(segmentation, mapping, volume, tmp_path)

    assert set(files) == {"lobes", "airway", "vessels"}
    lobes = sitk.ReadImage(str(files["lobes"]))
    expected = np.zeros((6, 7, 8), np.uint8)
    expected[lul], expected[rll] = 1, 5
    np.testing.assert_array_equal(sitk.GetArrayFromImage(lobes), expected)
    np.testing.assert_allclose(sitk_ijk_to_ras(lobes), ijk_to_ras(volume), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(files["airway"]))), airway)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(files["vessels"]))), vessel)


# -- ROI -> voxels -----------------------------------------------------------------------------------------------


def roi_node(scene, centre, size, rotation=np.eye(3)):
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    node.SetSize(*size)
    matrix = vtk.vtkMatrix4x4()
    for r, c in itertools.product(range(3), range(3)):
        matrix.SetElement(r, c, rotation[r][c])
    for r in range(3):
        matrix.SetElement(r, 3, centre[r])
    node.SetAndObserveObjectToNodeMatrix(matrix)
    return node


def brute_force_box(node, volume, search=24):
    """Index bounds of the voxel centres that lie inside the ROI, by testing every voxel of a large grid."""
    world_to_object = np.linalg.inv(np.array([[node.GetObjectToWorldMatrix().GetElement(r, c) for c in range(4)]
                                              for r in range(4)]))
    world_to_ras = np.eye(4)
    if volume.GetParentTransformNode() is not None:
        matrix = vtk.vtkMatrix4x4()
        volume.GetParentTransformNode().GetMatrixTransformToWorld(matrix)
        world_to_ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    grid = np.stack(np.meshgrid(*[np.arange(-search, search)] * 3, indexing="ij"), -1).reshape(-1, 3)
    ras = (np.c_[grid, np.ones(len(grid))] @ ijk_to_ras(volume).T)
    local = ras @ world_to_ras.T @ world_to_object.T
    inside = grid[np.all(np.abs(local[:, :3]) <= np.asarray(node.GetSize()) / 2 + 1e-9, axis=1)]
    return tuple(inside.min(axis=0)), tuple(inside.max(axis=0) + 1)


@pytest.mark.parametrize("directions", [np.eye(3), np.diag([-1.0, -1.0, 1.0]), np.diag([1.0, -1.0, -1.0])[[1, 0, 2]]])
def test_roi_voxel_box_is_the_voxel_centres_inside_an_aligned_roi(scene, directions):
    """RAS-ordered, LPS-ordered and axis-permuted voxel axes: the box is exactly the voxels whose centres are inside."""
    volume = add_volume(scene, np.zeros((10, 10, 10), np.int16), "ct", origin=(5.0, -3.0, 2.0), spacing=(2.0, 1.5, 3.0),
                        directions=directions)
    node = roi_node(scene, centre=(9.0, 4.0, 12.0), size=(17.0, 11.0, 20.0))

    box = roi.roi_voxel_box(node, volume)

    assert (box.lower, box.upper) == brute_force_box(node, volume)


@pytest.mark.parametrize("directions, rotation", [(ROTATION_Z30 @ np.diag([1.0, -1.0, 1.0]), np.eye(3)),
                                                  (np.eye(3), ROTATION_Z30)])
def test_roi_voxel_box_covers_an_oblique_roi(scene, directions, rotation):
    """Oblique volume or rotated ROI: the IJK box holds every voxel centre inside the ROI and at most the one
    extra voxel per side that a slanted corner can reach."""
    volume = add_volume(scene, np.zeros((10, 10, 10), np.int16), "ct", origin=(5.0, -3.0, 2.0), spacing=(2.0, 1.5, 3.0),
                        directions=directions)
    node = roi_node(scene, centre=(9.0, 4.0, 12.0), size=(17.0, 11.0, 20.0), rotation=rotation)

    box = roi.roi_voxel_box(node, volume)

    inside_lower, inside_upper = brute_force_box(node, volume)
    assert all(lo - 1 <= b <= lo for b, lo in zip(box.lower, inside_lower))
    assert all(up <= b <= up + 1 for b, up in zip(box.upper, inside_upper))


def test_roi_box_follows_the_volume_parent_transform(scene):
    volume = add_volume(scene, np.zeros((10, 10, 10), np.int16), "ct", spacing=(2.0, 2.0, 2.0))
    node = roi_node(scene, centre=(10.0, 10.0, 10.0), size=(6.0, 6.0, 6.0))
    before = roi.roi_voxel_box(node, volume)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 4.0)  # the volume moves 4 mm (2 voxels) to the right, the ROI stays
    transform.SetMatrixTransformToParent(shift)
    volume.SetAndObserveTransformNodeID(transform.GetID())

    after = roi.roi_voxel_box(node, volume)

    assert after.lower == (before.lower[0] - 2, *before.lower[1:]) == brute_force_box(node, volume)[0]


def test_outpaint_canvas_keeps_the_input_grid_and_reaches_the_roi(scene, tmp_path):
    volume = oblique_ct(scene)
    corner_ras = ijk_to_ras(volume) @ [-3, 2, 9, 1]  # 3 voxels before i=0 and 3 voxels past the last slice
    node = roi_node(scene, centre=corner_ras[:3], size=(0.5, 0.5, 0.5))

    canvas = sitk.ReadImage(str(roi.write_canvas(node, volume, tmp_path / "canvas.nrrd")))

    assert canvas.GetSize() == (8 + 3, 7, 10)
    np.testing.assert_allclose(canvas.GetSpacing(), volume.GetSpacing())
    shifted = ijk_to_ras(volume) @ np.c_[np.eye(4)[:, :3], [-3, 0, 0, 1]]  # canvas voxel 0 = input voxel (-3, 0, 0)
    np.testing.assert_allclose(sitk_ijk_to_ras(canvas), shifted, atol=1e-5)


# -- requests and results ----------------------------------------------------------------------------------------


def test_inputs_are_checked_before_anything_is_written(scene):
    volume = oblique_ct(scene)
    with pytest.raises(MedSynError, match="report is empty"):
        check_inputs(MODES["generate"], RunSettings(report="  "), RunInputs())
    with pytest.raises(MedSynError, match="needs an input volume"):
        check_inputs(MODES["segment"], RunSettings(mode="segment"), RunInputs())
    with pytest.raises(MedSynError, match="mask segment"):
        check_inputs(MODES["inpaint"], RunSettings(mode="inpaint", report="x"), RunInputs(input_volume=volume))
    with pytest.raises(MedSynError, match="ROI"):
        check_inputs(MODES["outpaint"], RunSettings(mode="outpaint", report="x"), RunInputs(input_volume=volume))
    with pytest.raises(MedSynError, match="also an input"):
        check_inputs(MODES["segment"], RunSettings(mode="segment"),
                     RunInputs(input_volume=volume, output_volume=volume))


def test_inpaint_request_carries_the_input_and_its_mask_on_the_same_grid(scene, tmp_path):
    volume = oblique_ct(scene)
    masks = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    region = np.zeros((6, 7, 8), bool)
    region[2:4, 2:5, 1:3] = True
    segment_id = add_segment(masks, "erase", region, volume)
    settings = RunSettings(mode="inpaint", report="Small left pleural effusion.", seed=5, steps=7)

    op, params = build_request(settings, RunInputs(input_volume=volume, mask_segmentation=masks,
                                                   mask_segment_id=segment_id), tmp_path)

    assert op == "inpaint"
    assert {"input_path", "mask_path", "out_dir", "report", "seed", "steps"} <= set(params)
    assert "guidance" not in params and "low_res_only" not in params  # unset options keep the model's defaults
    image, mask = sitk.ReadImage(params["input_path"]), sitk.ReadImage(params["mask_path"])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), region)
    np.testing.assert_allclose(sitk_ijk_to_ras(mask), sitk_ijk_to_ras(image), atol=1e-6)
    json.dumps(params)  # the request must be JSON


def write_backend_outputs(out_dir: Path, grid: Grid) -> tuple[dict[str, Path], DecodedVolume]:
    """Real result files as the backend writes them, with known contents."""
    shape = grid.shape_zyx
    rng = np.random.default_rng(0)
    lobes = rng.integers(0, 6, shape).astype(np.uint8)
    decoded = DecodedVolume(ct_hu=rng.integers(-1024, 600, shape).astype(np.int16), lobes=lobes,
                            airway=(lobes == 3).astype(np.uint8), vessels=(rng.random(shape) > 0.8).astype(np.uint8))
    provenance = build_provenance(mode="generate", prompt="x")
    return write_generation_outputs(out_dir, decoded, grid, None, None, provenance), decoded


def test_results_become_named_synthetic_nodes_with_provenance_under_the_input_study(scene, tmp_path):
    volume = oblique_ct(scene)
    study = in_study(volume)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    grid = Grid((6, 7, 8), (0.8, 0.9, 2.5), (-10.0, 20.0, 30.0), tuple((LPS_TO_RAS @ ROTATION_Z30).ravel()))
    outputs, decoded = write_backend_outputs(tmp_path / "out", grid)
    before = (volume.GetName(), slicer.util.arrayFromVolume(volume).copy(), ijk_to_ras(volume),
              volume.GetAttributeNames())
    settings = RunSettings(mode="inpaint", report="Large right pleural effusion.", seed=11)
    event = {"outputs": {k: str(v) for k, v in outputs.items()},
             "model": {"name": "tiny", "weights_sha256": {"lowres": "ab" * 32}}}

    result = import_result(settings, RunInputs(input_volume=volume), event)

    ct, segmentation = result.volume, result.segmentation
    assert "synthetic" in ct.GetName() and "synthetic" in segmentation.GetName()
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(ct), decoded.ct_hu)
    np.testing.assert_allclose(ijk_to_ras(ct), grid.to_ras_affine(), atol=1e-4)
    display = ct.GetDisplayNode()
    assert (display.GetWindow(), display.GetLevel()) == scene_io.LUNG_WINDOW_LEVEL
    names = segment_mapping.segment_names(segmentation)
    assert sorted(names.values()) == sorted(segment_mapping.STRUCTURES)
    by_name = {name: segment_id for segment_id, name in names.items()}
    lul = segmentation.GetSegmentation().GetSegment(by_name["left upper lobe"])
    assert "Upper lobe" in lul.GetTerminology() and lul.GetColor() != (0.5, 0.5, 0.5)
    np.testing.assert_array_equal(scene_io.segment_mask(segmentation, by_name["right upper lobe"], ct),
                                  decoded.lobes == 3)
    np.testing.assert_array_equal(scene_io.segment_mask(segmentation, by_name["vessels"], ct), decoded.vessels > 0)
    for node in (ct, segmentation):
        attributes = scene_io.provenance_of(node)
        assert attributes["synthetic"] == "true" and attributes["mode"] == "inpaint"
        assert attributes["prompt"] == settings.report and attributes["seed"] == "11" and attributes["model"] == "tiny"
        assert json.loads(attributes["weightsSha256"]) == {"lowres": "ab" * 32}
        assert json.loads(attributes["provenance"])["synthetic"] is True
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    assert result.study_item == study
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(ct)) == study
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(segmentation)) == study
    assert ct.GetTransformNodeID() == segmentation.GetTransformNodeID() == transform.GetID()  # stays aligned
    after = (volume.GetName(), slicer.util.arrayFromVolume(volume), ijk_to_ras(volume), volume.GetAttributeNames())
    assert after[0] == before[0] and after[3] == before[3]  # the input is not touched
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_array_equal(after[2], before[2])


def test_results_fill_given_output_nodes_and_get_a_synthetic_study_without_input(scene, tmp_path):
    grid = Grid((4, 5, 6), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    outputs, decoded = write_backend_outputs(tmp_path / "out", grid)
    existing = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "my output")
    event = {"outputs": {k: str(v) for k, v in outputs.items()}, "model": {"name": "tiny"}}

    first = import_result(RunSettings(report="x", seed=1), RunInputs(output_volume=existing), event)
    second = import_result(RunSettings(report="x", seed=2), RunInputs(), event)

    assert first.volume is existing and second.volume is not existing
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(existing), decoded.ct_hu)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    subject = hierarchy.GetItemParent(first.study_item)
    assert hierarchy.GetItemName(subject) == scene_io.SYNTHETIC_SUBJECT
    assert hierarchy.GetItemParent(second.study_item) == subject and second.study_item != first.study_item
