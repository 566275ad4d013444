"""Markups ROI -> voxel box and outpainting canvas on a volume's grid.

The canvas (the input's lattice grown to cover the ROI, written as an empty volume) is sent to the backend instead of
symmetric margins in mm: it says exactly which side grows by how much, also for oblique volumes.

An ROI lives in world RAS and may itself be rotated; a volume's voxel axes may be oblique and its file is LPS. All of
it is handled by one chain of 4x4 matrices (ROI object -> world -> volume RAS -> IJK), so no axis is flipped by hand:
the IJK axes computed here are the index axes of the NRRD the volume is written to (LPS is a header matter only).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import slicer
import vtk

from .scene_io import write_labelmap_array


def _as_array(matrix: "vtk.vtkMatrix4x4") -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def roi_corners_world(roi: "slicer.vtkMRMLMarkupsROINode") -> np.ndarray:
    """The ROI's 8 corners in world RAS (rotated ROIs included), shape (8, 3)."""
    half = np.asarray(roi.GetSize(), dtype=float) / 2.0
    corners = np.array([[sx * half[0], sy * half[1], sz * half[2], 1.0]
                        for sx, sy, sz in itertools.product((-1, 1), repeat=3)])
    return (corners @ _as_array(roi.GetObjectToWorldMatrix()).T)[:, :3]


def world_to_ijk(volume: "slicer.vtkMRMLVolumeNode") -> np.ndarray:
    """4x4 world RAS -> continuous IJK of ``volume``, including a linear parent transform of the volume."""
    ras_to_ijk = vtk.vtkMatrix4x4()
    volume.GetRASToIJKMatrix(ras_to_ijk)
    world_to_ras = vtk.vtkMatrix4x4()
    parent = volume.GetParentTransformNode()
    if parent is not None and not parent.GetMatrixTransformFromWorld(world_to_ras):
        raise ValueError(f"{volume.GetName()} is under a non-linear transform; harden it before outpainting")
    return _as_array(ras_to_ijk) @ _as_array(world_to_ras)


@dataclass(frozen=True)
class VoxelBox:
    """Half-open voxel index box ``[lower, upper)`` in (i, j, k) order; may extend outside the volume."""

    lower: tuple[int, int, int]
    upper: tuple[int, int, int]

    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        return tuple(u - lo for lo, u in zip(self.lower, self.upper))


def roi_voxel_box(roi: "slicer.vtkMRMLMarkupsROINode", volume: "slicer.vtkMRMLVolumeNode") -> VoxelBox:
    """Smallest voxel box of ``volume``'s grid whose voxel centres cover the ROI (axis-aligned in IJK)."""
    corners = np.c_[roi_corners_world(roi), np.ones(8)] @ world_to_ijk(volume).T
    lower = np.ceil(corners[:, :3].min(axis=0) - 1e-6).astype(int)
    upper = np.floor(corners[:, :3].max(axis=0) + 1e-6).astype(int) + 1
    return VoxelBox(tuple(int(v) for v in lower), tuple(int(v) for v in upper))


def canvas_box(roi: "slicer.vtkMRMLMarkupsROINode", volume: "slicer.vtkMRMLVolumeNode") -> VoxelBox:
    """The outpainting canvas: the volume's own extent grown to include the ROI (never smaller than the input)."""
    dims = volume.GetImageData().GetDimensions()
    box = roi_voxel_box(roi, volume)
    return VoxelBox(tuple(min(0, lo) for lo in box.lower), tuple(max(d, u) for d, u in zip(dims, box.upper)))


def write_canvas(roi: "slicer.vtkMRMLMarkupsROINode", volume: "slicer.vtkMRMLVolumeNode", path: Path) -> Path:
    """Write the canvas grid as an empty labelmap NRRD: same spacing and axes as ``volume``, origin moved to the
    canvas corner, so the backend knows exactly which voxels to invent and where the input sits inside."""
    box = canvas_box(roi, volume)
    geometry = slicer.vtkMRMLScalarVolumeNode()  # standalone carrier of the canvas grid
    geometry.CopyOrientation(volume)
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(ijk_to_ras)
    geometry.SetOrigin(ijk_to_ras.MultiplyPoint((*box.lower, 1.0))[:3])
    image = vtk.vtkImageData()
    image.SetDimensions(box.shape_ijk)
    geometry.SetAndObserveImageData(image)
    return write_labelmap_array(np.zeros(tuple(reversed(box.shape_ijk)), np.uint8), geometry, path)
