"""Slicer segmentation files (.seg.nrrd) holding the five lobes, the airway and the vessels as named segments.

The file stores one labelmap layer per model channel (lobes 1..5, airway, vessels) because airway and vessels overlap
the lobes; Slicer loads such multi-layer files as one segmentation node with seven segments.
pynrrd is imported inside the reader and writer: the segment table (``SEGMENTS``) is needed by the Slicer panel's name
matching before the backend's packages are installed.
"""
from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsyn.errors import MedSynError
from medsyn.geometry import Grid
from medsyn.io.atomic import atomic_write

_TERMINOLOGY_CONTEXT = "Segmentation category and type - DICOM master list"
_ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
_ANATOMICAL_STRUCTURE = "SCT^123037004^Anatomical Structure"
_PYNRRD_TIMESTAMP = re.compile(rb"# on [^\n]*\(GMT\)\.\n")
LAYERS = ("lobes", "airway", "vessels")  # layer order in the file = the model's anatomy channel order


@dataclass(frozen=True)
class Segment:
    """One named structure: which layer holds it, its label value there, display colour and Slicer terminology."""

    name: str
    layer: str
    label: int
    color: tuple[float, float, float]
    terminology: str

    @property
    def segment_id(self) -> str:
        return self.name.replace(" ", "_")


def _terminology(
    structure: str, modifier: str = "^^", category: str = _ANATOMICAL_STRUCTURE, region: str = "^^"
) -> str:
    """Slicer's TerminologyEntry tag: context~category~type~type modifier~anatomic context~region~region modifier."""
    return "~".join([_TERMINOLOGY_CONTEXT, category, structure, modifier, _ANATOMIC_CONTEXT, region, "^^"])


_LEFT, _RIGHT = "SCT^7771000^Left", "SCT^24028007^Right"
_UPPER_LOBE = "SCT^45653009^Upper lobe of lung"
_MIDDLE_LOBE = "SCT^72481006^Middle lobe of right lung"
_LOWER_LOBE = "SCT^90572001^Lower lobe of lung"

SEGMENTS: tuple[Segment, ...] = (
    Segment("left upper lobe", "lobes", 1, (0.12, 0.47, 0.71), _terminology(_UPPER_LOBE, _LEFT)),
    Segment("left lower lobe", "lobes", 2, (0.17, 0.63, 0.17), _terminology(_LOWER_LOBE, _LEFT)),
    Segment("right upper lobe", "lobes", 3, (1.00, 0.50, 0.05), _terminology(_UPPER_LOBE, _RIGHT)),
    Segment("right middle lobe", "lobes", 4, (0.58, 0.40, 0.74), _terminology(_MIDDLE_LOBE)),
    Segment("right lower lobe", "lobes", 5, (0.55, 0.34, 0.29), _terminology(_LOWER_LOBE, _RIGHT)),
    Segment("airway", "airway", 1, (0.10, 0.85, 0.90), _terminology("SCT^110726009^Trachea and bronchus")),
    Segment(
        "vessels",
        "vessels",
        1,
        (0.85, 0.10, 0.10),
        _terminology("SCT^59820001^Blood vessel", category="SCT^85756007^Tissue", region="SCT^39607008^Lung"),
    ),
)


def write_seg_nrrd(
    path: str | os.PathLike,
    lobes: np.ndarray,
    airway: np.ndarray,
    vessels: np.ndarray,
    grid: Grid,
    description: str = "",
) -> Path:
    """Write the anatomy label maps (z, y, x) as a Slicer .seg.nrrd with the seven named segments of ``SEGMENTS``."""
    import nrrd

    layers = {"lobes": lobes, "airway": airway, "vessels": vessels}
    for name, array in layers.items():
        if array.shape != grid.shape_zyx:
            raise ValueError(f"{name} shape {array.shape} does not match grid shape {grid.shape_zyx}")
    # 'C' index order: numpy (z, y, x, layer) is NRRD (layer, i, j, k) with the layer axis fastest, as Slicer writes.
    voxels = np.stack([np.asarray(layers[name], dtype=np.uint8) for name in LAYERS], axis=-1)
    spacing_vectors = (grid.direction_matrix() * np.asarray(grid.spacing_xyz)).T  # one row per index axis i, j, k
    header = {
        "space": "left-posterior-superior",
        "kinds": ["list", "domain", "domain", "domain"],
        "space directions": np.vstack([np.full(3, np.nan), spacing_vectors]),
        "space origin": np.asarray(grid.origin_lps),
        "encoding": "gzip",
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
    }
    if description:
        header["content"] = description
    header.update(_segment_fields(grid))
    buffer = io.BytesIO()
    nrrd.write(buffer, voxels, header, index_order="C", compression_level=6)
    # pynrrd stamps the write time into a comment line; dropping it keeps identical inputs byte-identical.
    content = _PYNRRD_TIMESTAMP.sub(b"", buffer.getvalue(), count=1)
    target = Path(path)
    with atomic_write(target) as temporary:
        temporary.write_bytes(content)
    return target


def _segment_fields(grid: Grid) -> dict[str, str]:
    """Slicer's per-segment header fields (Segment<N>_ID, _Name, _Color, _LabelValue, _Layer, _Extent, _Tags...)."""
    full_extent = " ".join(f"0 {n - 1}" for n in reversed(grid.shape_zyx))  # i, j, k ranges
    fields = {}
    for index, segment in enumerate(SEGMENTS):
        prefix = f"Segment{index}_"
        fields[prefix + "ID"] = segment.segment_id
        fields[prefix + "Name"] = segment.name
        fields[prefix + "NameAutoGenerated"] = "0"
        fields[prefix + "Color"] = " ".join(f"{c:g}" for c in segment.color)
        fields[prefix + "ColorAutoGenerated"] = "0"
        fields[prefix + "LabelValue"] = str(segment.label)
        fields[prefix + "Layer"] = str(LAYERS.index(segment.layer))
        fields[prefix + "Extent"] = full_extent
        fields[prefix + "Tags"] = f"Segmentation.Status:completed|TerminologyEntry:{segment.terminology}|"
    return fields


def read_seg_nrrd(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], Grid]:
    """Read every segment of a .seg.nrrd as a uint8 (z, y, x) mask, keyed by its name.

    Names matching ``SEGMENTS`` case-insensitively are returned in our spelling, so a user's "Left Upper Lobe" is found.
    """
    import nrrd

    source = Path(path)
    if not source.is_file():
        raise MedSynError(f"segmentation file {source} does not exist")
    try:
        voxels, header = nrrd.read(str(source), index_order="C")
    except (nrrd.NRRDError, OSError, ValueError) as error:
        raise MedSynError(f"cannot read {source} as a .seg.nrrd segmentation: {error}") from None
    if voxels.ndim == 3:
        voxels = voxels[..., np.newaxis]
    if voxels.ndim != 4:
        raise MedSynError(f"{source} has {voxels.ndim} axes; expected a 3-D segmentation")
    grid = _grid_from_header(header, voxels.shape[:3], source)
    canonical = {segment.name.lower(): segment.name for segment in SEGMENTS}
    masks: dict[str, np.ndarray] = {}
    for index in sorted(int(m.group(1)) for key in header if (m := re.fullmatch(r"Segment(\d+)_Name", key))):
        raw_name = header[f"Segment{index}_Name"]
        name = canonical.get(raw_name.strip().lower(), raw_name)
        if name in masks:
            raise MedSynError(f"{source} has two segments named {name!r}; rename one in Slicer's Segment Editor")
        layer = int(header.get(f"Segment{index}_Layer", 0))
        label = int(header.get(f"Segment{index}_LabelValue", 1))
        masks[name] = (voxels[..., layer] == label).astype(np.uint8)
    return masks, grid


def _grid_from_header(header: dict, shape_zyx: tuple[int, int, int], source: Path) -> Grid:
    """Grid from NRRD space fields; RAS-space files are converted to LPS."""
    flip = {"left-posterior-superior": np.ones(3), "right-anterior-superior": np.array([-1.0, -1.0, 1.0])}
    space = header.get("space")
    if space not in flip or "space directions" not in header or "space origin" not in header:
        raise MedSynError(f"{source} lacks LPS or RAS space information; save it from Slicer as .seg.nrrd")
    directions = np.asarray(header["space directions"], dtype=np.float64)[-3:] * flip[space]  # rows: i, j, k
    spacing = np.linalg.norm(directions, axis=1)
    return Grid(
        shape_zyx=shape_zyx,
        spacing_xyz=tuple(spacing),
        origin_lps=tuple(np.asarray(header["space origin"], dtype=np.float64) * flip[space]),
        direction_lps=tuple((directions / spacing[:, np.newaxis]).T.flatten()),
    )
