"""Scene <-> files: what the worker reads and writes crosses as NRRD/NIfTI files, nodes stay in Slicer.

Geometry is never converted by hand: MRML storage nodes write LPS headers from a node's IJK-to-RAS matrix and read
them back, so a volume round-trips exactly. Nodes given as inputs are only read (no storage node is attached, no
attribute or display property is touched); results always go to new nodes unless the caller passes output nodes.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Optional

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from medsyn.errors import MedSynError

ATTRIBUTE_PREFIX = "MedSyn."
LUNG_WINDOW_LEVEL = (1500.0, -600.0)
SYNTHETIC_SUBJECT = "MedSyn synthetic"


def write_volume(volume_node: "slicer.vtkMRMLVolumeNode", path: Path) -> Path:
    """Write a scalar or labelmap volume as NRRD (LPS header) without attaching a storage node to it."""
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(False)
    if not storage.WriteData(volume_node):
        raise OSError(f"could not write {volume_node.GetName()} to {path}")
    return Path(path)


def write_labelmap_array(array_kji: np.ndarray, geometry_node: "slicer.vtkMRMLVolumeNode", path: Path) -> Path:
    """Write a (k, j, i) uint8 array as a labelmap NRRD on the grid of ``geometry_node`` (its IJK-to-RAS matrix)."""
    dims = geometry_node.GetImageData().GetDimensions()
    if array_kji.shape != tuple(reversed(dims)):
        raise ValueError(f"array shape {array_kji.shape} does not match the reference grid {tuple(reversed(dims))}")
    image = vtk.vtkImageData()
    image.SetDimensions(dims)
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(array_kji, dtype=np.uint8).ravel(), deep=True,
                                         array_type=vtk.VTK_UNSIGNED_CHAR)
    image.GetPointData().SetScalars(scalars)
    labelmap = slicer.vtkMRMLLabelMapVolumeNode()  # not added to any scene: a carrier for geometry + voxels
    labelmap.SetAndObserveImageData(image)
    labelmap.CopyOrientation(geometry_node)
    return write_volume(labelmap, path)


@contextlib.contextmanager
def _temporary_node(scene: "slicer.vtkMRMLScene", class_name: str) -> Iterator["slicer.vtkMRMLNode"]:
    """A scene node that is removed again, for MRML logic functions that only work on nodes in a scene."""
    node = scene.AddNewNodeByClass(class_name)
    try:
        yield node
    finally:
        displays = [node.GetNthDisplayNode(index) for index in range(node.GetNumberOfDisplayNodes())]
        for created in (*displays, node):
            scene.RemoveNode(created)


def _string_array(values: Iterable[str]) -> "vtk.vtkStringArray":
    array = vtk.vtkStringArray()
    for value in values:
        array.InsertNextValue(value)
    return array


def segment_mask(segmentation_node: "slicer.vtkMRMLSegmentationNode", segment_id: str,
                 geometry_node: "slicer.vtkMRMLVolumeNode") -> np.ndarray:
    """Binary (k, j, i) mask of one segment resampled onto ``geometry_node``'s grid."""
    if _is_empty(segmentation_node.GetSegmentation().GetSegment(segment_id)):
        return np.zeros(tuple(reversed(geometry_node.GetImageData().GetDimensions())), bool)  # MRML cannot resample it
    with _temporary_node(segmentation_node.GetScene(), "vtkMRMLLabelMapVolumeNode") as labelmap:
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, _string_array([segment_id]), labelmap, geometry_node):
            raise RuntimeError(f"could not export segment {segment_id} of {segmentation_node.GetName()}")
        return slicer.util.arrayFromVolume(labelmap) > 0


def _is_empty(segment: "slicer.vtkSegment") -> bool:
    labelmap = segment.GetRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
    if labelmap is None or labelmap.IsEmpty():
        return True
    return not (numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars()) == segment.GetLabelValue()).any()


def reference_geometry(segmentation_node: "slicer.vtkMRMLSegmentationNode") -> "slicer.vtkMRMLLabelMapVolumeNode":
    """An empty labelmap (not in the scene) on the segmentation's reference grid, the grid it was drawn on."""
    parameter = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    serialized = segmentation_node.GetSegmentation().GetConversionParameter(parameter)
    if not serialized:
        raise MedSynError(f"{segmentation_node.GetName()} has no reference geometry; select an input volume or set "
                          "it with Segment Editor > Specify geometry")
    image = slicer.vtkOrientedImageData()
    slicer.vtkSegmentationConverter.DeserializeImageGeometry(serialized, image, True, vtk.VTK_UNSIGNED_CHAR, 1)
    geometry = slicer.vtkMRMLLabelMapVolumeNode()
    slicer.vtkSlicerSegmentationsModuleLogic.CreateLabelmapVolumeFromOrientedImageData(image, geometry)
    return geometry


def load_result_volume(path: Path, scene: "slicer.vtkMRMLScene", name: str,
                       node: Optional["slicer.vtkMRMLScalarVolumeNode"] = None) -> "slicer.vtkMRMLScalarVolumeNode":
    """Read a CT result (HU) into ``node`` or a new scalar volume and show it with the lung window."""
    node = node or scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    node.SetName(name)
    _read_into(slicer.vtkMRMLVolumeArchetypeStorageNode(), path, node)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.AutoWindowLevelOff()
    display.SetWindowLevel(*LUNG_WINDOW_LEVEL)
    return node


def load_result_segmentation(path: Path, scene: "slicer.vtkMRMLScene", name: str,
                             node: Optional["slicer.vtkMRMLSegmentationNode"] = None,
                             reference: Optional["slicer.vtkMRMLVolumeNode"] = None,
                             ) -> "slicer.vtkMRMLSegmentationNode":
    """Read a .seg.nrrd (named, coloured segments with terminology, as the backend writes them) into a node."""
    node = node or scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    node.SetName(name)
    _read_into(slicer.vtkMRMLSegmentationStorageNode(), path, node)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    if reference is not None:
        node.SetReferenceImageGeometryParameterFromVolumeNode(reference)
        node.SetNodeReferenceID(node.GetReferenceImageGeometryReferenceRole(), reference.GetID())
    return node


def _read_into(storage: "slicer.vtkMRMLStorageNode", path: Path, node: "slicer.vtkMRMLNode") -> None:
    """Fill ``node`` from a file without leaving a storage node that points into a temporary folder."""
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise OSError(f"could not read {path}")


def set_provenance(node: "slicer.vtkMRMLNode", fields: Mapping[str, object],
                   provenance_file: Optional[Path] = None) -> None:
    """Record how a node was made as ``MedSyn.*`` attributes; ``MedSyn.synthetic`` is always "true"."""
    for key, value in fields.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        node.SetAttribute(ATTRIBUTE_PREFIX + key, text)
    node.SetAttribute(ATTRIBUTE_PREFIX + "synthetic", "true")
    if provenance_file is not None and Path(provenance_file).is_file():
        node.SetAttribute(ATTRIBUTE_PREFIX + "provenance", Path(provenance_file).read_text(encoding="utf-8"))


def provenance_of(node: "slicer.vtkMRMLNode") -> dict[str, str]:
    """The ``MedSyn.*`` attributes of a node, prefix removed."""
    names = node.GetAttributeNames() or ()
    return {name[len(ATTRIBUTE_PREFIX):]: node.GetAttribute(name) for name in names
            if name.startswith(ATTRIBUTE_PREFIX)}


def place_in_study(nodes: list["slicer.vtkMRMLNode"], input_node: Optional["slicer.vtkMRMLNode"],
                   study_name: str) -> int:
    """Put result nodes under the input's study in the subject hierarchy (a new synthetic study if there is none)
    and give them the input's parent transform so they stay aligned with it. Returns the study item."""
    scene = nodes[0].GetScene()
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = _study_of(hierarchy, input_node) if input_node is not None else 0
    if not study:
        subject = _child_named(hierarchy, hierarchy.GetSceneItemID(), SYNTHETIC_SUBJECT) or \
            hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), SYNTHETIC_SUBJECT)
        study = hierarchy.CreateStudyItem(subject, study_name)
    for node in nodes:
        item = hierarchy.GetItemByDataNode(node) or hierarchy.CreateItem(study, node)
        hierarchy.SetItemParent(item, study)
        if input_node is not None:
            node.SetAndObserveTransformNodeID(input_node.GetTransformNodeID())
    return study


def _study_of(hierarchy: "slicer.vtkMRMLSubjectHierarchyNode", node: "slicer.vtkMRMLNode") -> int:
    """Nearest enclosing Study item of a node, else its direct parent folder; 0 when it sits at the scene root."""
    item = hierarchy.GetItemByDataNode(node)
    scene_item = hierarchy.GetSceneItemID()
    parent = hierarchy.GetItemParent(item) if item else 0
    ancestor = parent
    while ancestor and ancestor != scene_item:
        if hierarchy.GetItemLevel(ancestor) == slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy():
            return ancestor
        ancestor = hierarchy.GetItemParent(ancestor)
    return parent if parent and parent != scene_item else 0


def _child_named(hierarchy: "slicer.vtkMRMLSubjectHierarchyNode", parent: int, name: str) -> int:
    children = vtk.vtkIdList()
    hierarchy.GetItemChildren(parent, children)
    return next((children.GetId(i) for i in range(children.GetNumberOfIds())
                 if hierarchy.GetItemName(children.GetId(i)) == name), 0)

