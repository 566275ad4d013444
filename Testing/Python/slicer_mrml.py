"""A real MRML scene from the slicer-core wheel, set up the way Slicer's application does at startup.

Slicer registers the segmentation converter rules and default colour tables when it starts; slicer-core only has
the libraries, so tests do the same few calls here. Everything else runs exactly as in Slicer.
"""
from __future__ import annotations

import numpy as np
import slicer
import vtk

_converter_rules_registered = False


def new_scene() -> "slicer.vtkMRMLScene":
    """A fresh scene that is also ``slicer.mrmlScene`` (slicer.util helpers use it)."""
    global _converter_rules_registered
    if not _converter_rules_registered:
        factory = slicer.vtkSegmentationConverterFactory.GetInstance()
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
        factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())
        _converter_rules_registered = True
    scene = slicer.vtkMRMLScene()
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLScene(scene)
    slicer.mrmlScene = scene
    return scene


def add_volume(scene, array_kji: np.ndarray, name: str, origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0, 1.0),
               directions=np.eye(3)) -> "slicer.vtkMRMLScalarVolumeNode":
    """Scalar volume with an arbitrary (possibly oblique) IJK-to-RAS direction matrix."""
    node = slicer.util.addVolumeFromArray(np.ascontiguousarray(array_kji), name=name)
    node.SetOrigin(*origin)
    node.SetSpacing(*spacing)
    matrix = vtk.vtkMatrix4x4()
    for row in range(3):
        for column in range(3):
            matrix.SetElement(row, column, float(directions[row][column]))
    node.SetIJKToRASDirectionMatrix(matrix)
    return node


def add_segment(segmentation_node, name: str, mask_kji: np.ndarray, geometry_node) -> str:
    """Add a segment from a binary mask on ``geometry_node``'s grid; returns the segment id."""
    scene = segmentation_node.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    slicer.util.updateVolumeFromArray(labelmap, mask_kji.astype(np.uint8))
    labelmap.CopyOrientation(geometry_node)
    segment_id = segmentation_node.GetSegmentation().AddEmptySegment("", name)
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation_node, ids)
    scene.RemoveNode(labelmap)
    return segment_id


def in_study(node, patient: str = "Patient 1", study: str = "CT chest") -> int:
    """Place a node under patient/study items, as loading it from DICOM would; returns the study item."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(node.GetScene())
    subject = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), patient)
    study_item = hierarchy.CreateStudyItem(subject, study)
    hierarchy.CreateItem(study_item, node)
    return study_item
