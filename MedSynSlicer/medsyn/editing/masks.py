"""Reading the user's anatomy maps and edit masks, rejecting anything the model cannot take with a one-line error.

Anatomy comes as a labelmap (.nii.gz / .nrrd: lobes 0..5, airway and vessels 0/1) or a Slicer ``.seg.nrrd`` whose
segments are mapped by name (``segment_names``). An edit mask is a 0/1 labelmap or a ``.seg.nrrd`` (all segments
joined) on the input volume's voxel grid; Slicer's habit of cropping a segmentation to its extent is accepted.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from medsyn.errors import MedSynError
from medsyn.geometry import Grid
from medsyn.io.segmentation import LAYERS, read_seg_nrrd
from medsyn.io.volumes import read_volume

from .resample import lattice_offset, resample
from .segment_names import Target, parse_segment_map, segment_target

ANATOMY_ROLES = LAYERS  # ("lobes", "airway", "vessels"): model channels 1, 2, 3
MAX_LABEL = {"lobes": 5, "airway": 1, "vessels": 1}


@dataclass(frozen=True)
class LabelVolume:
    """A validated label map (uint8, z/y/x) on the grid of the file it came from."""

    array: np.ndarray
    grid: Grid
    path: Path


def load_anatomy(lobes: Optional[str | Path] = None, airway: Optional[str | Path] = None,
                 vessels: Optional[str | Path] = None, segment_map: Optional[str] = None) -> dict[str, LabelVolume]:
    """The given anatomy files by role; ``segment_map`` names extra or renamed segments of ``.seg.nrrd`` files."""
    overrides = parse_segment_map(segment_map)
    files = {"lobes": lobes, "airway": airway, "vessels": vessels}
    return {role: load_anatomy_file(Path(path), role, overrides) for role, path in files.items() if path is not None}


def load_anatomy_file(path: Path, role: str, overrides: dict[str, Target]) -> LabelVolume:
    """One role's label map from a labelmap or a ``.seg.nrrd``."""
    if is_seg_nrrd(path):
        array, grid = _labels_from_segments(path, role, overrides)
    else:
        raw, grid = read_volume(path)
        array = _checked_labels(raw, path, role)
    if not array.any():
        raise MedSynError(f"{path.name} holds no {role} voxels; check the file or the segment names")
    return LabelVolume(array, grid, path)


def load_edit_mask(path: str | Path, reference: Grid) -> np.ndarray:
    """The region to regenerate as a boolean volume on ``reference`` (the input's grid)."""
    path = Path(path)
    if is_seg_nrrd(path):
        segments, grid = read_seg_nrrd(path)
        array = np.any(np.stack(list(segments.values())), axis=0) if segments else np.zeros(grid.shape_zyx, bool)
    else:
        raw, grid = read_volume(path)
        if not np.all((raw == 0) | (raw == 1)):
            raise MedSynError(f"mask {path.name} is not binary (values {_value_range(raw)}); save it as a 0/1 labelmap")
        array = raw.astype(bool)
    if lattice_offset(grid, reference) is None:
        raise MedSynError(f"mask {path.name} is not on the input volume's voxel grid (spacing, direction or origin "
                          "differ); create or resample it on the input volume")
    mask = resample(array, grid, reference, "nearest", 0)
    if not mask.any():
        raise MedSynError(f"mask {path.name} is empty; paint the region to regenerate")
    if mask.sum() != array.sum():
        raise MedSynError(f"mask {path.name} reaches outside the input volume; keep it inside the input")
    if mask.all():
        raise MedSynError(f"mask {path.name} covers the whole input, so nothing would be kept; use generate instead")
    return mask


def is_seg_nrrd(path: Path) -> bool:
    return path.name.lower().endswith(".seg.nrrd")


def _labels_from_segments(path: Path, role: str, overrides: dict[str, Target]) -> tuple[np.ndarray, Grid]:
    segments, grid = read_seg_nrrd(path)
    unknown = [name for name in segments if segment_target(name, overrides) is None]
    if unknown:
        raise MedSynError(f"{path.name} has segment(s) {', '.join(repr(n) for n in unknown)} that are not lobes, "
                          f"airway or vessels; rename them or pass --segment-map '{unknown[0]}=lobe:LUL'")
    labels = np.zeros(grid.shape_zyx, dtype=np.uint8)
    for name, mask in segments.items():
        target_role, label = segment_target(name, overrides)
        if target_role == role:
            labels[mask > 0] = label
    return labels, grid


def _checked_labels(array: np.ndarray, path: Path, role: str) -> np.ndarray:
    """Integer labels within the role's range, as uint8."""
    high = MAX_LABEL[role]
    if not np.all((array >= 0) & (array <= high) & (array == np.floor(array))):
        kind = "labels 0..5" if role == "lobes" else "a binary 0/1 mask"
        raise MedSynError(f"{role} file {path.name} must hold {kind}, found values {_value_range(array)}")
    return array.astype(np.uint8)


def _value_range(array: np.ndarray) -> str:
    return f"{array.min():g}..{array.max():g}"
