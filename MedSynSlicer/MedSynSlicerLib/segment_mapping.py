"""Which segment of a user's segmentation is which lobe, the airway or the vessels, and exporting them as model input.

Users bring segmentations from everywhere (TotalSegmentator, lungmask, hand drawing, a previous MedSyn result), so
segments are matched by name with the backend's own name table (``medsyn.editing.segment_names``: our segment names,
abbreviations such as ``LUL``, TotalSegmentator's ``lung_upper_lobe_left``, ``trachea and bronchi``, ``pulmonary
vessels``..., case-insensitive, ``_``/``-`` read as spaces), so the panel and ``medsyn --lobes`` agree on every name.
Anything the names do not reveal is set by the user in the mapping table (an override).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import slicer

from medsyn.editing.segment_names import segment_target
from medsyn.io.segmentation import SEGMENTS

from .scene_io import reference_geometry, segment_mask, write_labelmap_array

# The backend's structures and lobe labels; their modules need only numpy, so the panel builds its mapping table
# before the backend's packages are installed.
STRUCTURES = tuple(segment.name for segment in SEGMENTS)
LOBES = {segment.name: segment.label for segment in SEGMENTS if segment.layer == "lobes"}
AIRWAY, VESSELS = "airway", "vessels"
NOT_MAPPED = ""  # override value meaning "do not use any segment for this structure"
_STRUCTURE_OF_TARGET = {(segment.layer, segment.label): segment.name for segment in SEGMENTS}


def structure_for(segment_name: str) -> Optional[str]:
    """Canonical structure a segment name stands for, or None."""
    target = segment_target(segment_name, {})
    return None if target is None else _STRUCTURE_OF_TARGET[target]


def segment_names(segmentation_node: "slicer.vtkMRMLSegmentationNode") -> dict[str, str]:
    """{segment id: segment name} in display order."""
    segmentation = segmentation_node.GetSegmentation()
    return {segmentation.GetNthSegmentID(i): segmentation.GetNthSegment(i).GetName()
            for i in range(segmentation.GetNumberOfSegments())}


def resolve_mapping(segments: Mapping[str, str], overrides: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """{structure: segment id}: name matches first (the first matching segment wins), then the user's overrides
    (a segment id, or NOT_MAPPED to drop a structure). Unknown override ids are an error, not silently ignored."""
    mapping: dict[str, str] = {}
    for segment_id, name in segments.items():
        structure = structure_for(name)
        if structure is not None and structure not in mapping:
            mapping[structure] = segment_id
    for structure, segment_id in (overrides or {}).items():
        if structure not in STRUCTURES:
            raise ValueError(f"unknown structure '{structure}'; expected one of {', '.join(STRUCTURES)}")
        if segment_id == NOT_MAPPED:
            mapping.pop(structure, None)
        elif segment_id in segments:
            mapping[structure] = segment_id
        else:
            raise ValueError(f"segment '{segment_id}' mapped to {structure} is not in the segmentation")
    return mapping


def export_anatomy(segmentation_node: "slicer.vtkMRMLSegmentationNode", mapping: Mapping[str, str],
                   reference_volume: Optional["slicer.vtkMRMLVolumeNode"], out_dir: Path) -> dict[str, Path]:
    """Write the mapped segments as the backend's anatomy inputs on the reference grid: ``lobes`` (one labelmap,
    values 1..5), ``airway`` and ``vessels`` (0/1). Keys of the result are the generate() option names. Empty segments
    constrain nothing and are left out.

    Without a reference volume the segmentation's own reference geometry (its source volume's grid) is used."""
    geometry = reference_volume or reference_geometry(segmentation_node)
    masks = {structure: segment_mask(segmentation_node, segment_id, geometry)
             for structure, segment_id in mapping.items()}
    masks = {structure: mask for structure, mask in masks.items() if mask.any()}
    written: dict[str, Path] = {}
    lobes = [(LOBES[structure], mask) for structure, mask in masks.items() if structure in LOBES]
    if lobes:
        labels = np.zeros(lobes[0][1].shape, np.uint8)
        for label, mask in sorted(lobes, key=lambda item: item[0]):
            labels[mask] = label
        written["lobes"] = write_labelmap_array(labels, geometry, Path(out_dir) / "lobes.nrrd")
    for structure in (AIRWAY, VESSELS):
        if structure in masks:
            written[structure] = write_labelmap_array(masks[structure].astype(np.uint8), geometry,
                                                      Path(out_dir) / f"{structure}.nrrd")
    return written
