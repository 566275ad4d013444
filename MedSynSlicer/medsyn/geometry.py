"""Voxel grid geometry in LPS, the one place that knows how array indices map to patient space.

Array axes are (z, y, x) = voxel index axes (k, j, i), as SimpleITK's ``GetArrayFromImage`` returns them. Origin,
spacing and direction are stored as ITK and NRRD store them (LPS); NIfTI/Slicer RAS is derived by flipping x and y.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from medsyn.errors import MedSynError

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_ORTHONORMAL_TOL = 1e-4


@dataclass(frozen=True)
class Grid:
    """Shape, spacing, origin and direction of a 3-D volume; direction columns are the i, j, k axes in LPS."""

    shape_zyx: tuple[int, int, int]
    spacing_xyz: tuple[float, float, float]
    origin_lps: tuple[float, float, float]
    direction_lps: tuple[float, float, float, float, float, float, float, float, float]

    def __post_init__(self) -> None:
        # Normalise to plain Python tuples so grids hash, compare and serialise the same whatever the caller passed.
        object.__setattr__(self, "shape_zyx", _int_triple(self.shape_zyx, "shape"))
        object.__setattr__(self, "spacing_xyz", _float_tuple(self.spacing_xyz, 3, "spacing"))
        object.__setattr__(self, "origin_lps", _float_tuple(self.origin_lps, 3, "origin"))
        object.__setattr__(self, "direction_lps", _float_tuple(self.direction_lps, 9, "direction"))
        if any(s <= 0 for s in self.shape_zyx):
            raise MedSynError(f"grid shape {self.shape_zyx} must be positive in every axis")
        if any(s <= 0 for s in self.spacing_xyz):
            raise MedSynError(f"voxel spacing {self.spacing_xyz} must be positive; fix the image header")
        direction = self.direction_matrix()
        if not np.allclose(direction.T @ direction, np.eye(3), atol=_ORTHONORMAL_TOL):
            raise MedSynError(f"direction {self.direction_lps} is not orthonormal; fix the image header")

    def direction_matrix(self) -> np.ndarray:
        """3x3 direction, columns = unit vectors of the i, j, k index axes in LPS."""
        return np.asarray(self.direction_lps, dtype=np.float64).reshape(3, 3)

    def index_to_lps_affine(self) -> np.ndarray:
        """4x4 matrix taking homogeneous (i, j, k, 1) voxel indices to LPS millimetres."""
        affine = np.eye(4)
        affine[:3, :3] = self.direction_matrix() * np.asarray(self.spacing_xyz)
        affine[:3, 3] = self.origin_lps
        return affine

    def to_ras_affine(self) -> np.ndarray:
        """4x4 (i, j, k) -> RAS matrix, as nibabel's NIfTI affine and Slicer's IJKToRAS hold it."""
        return _LPS_TO_RAS @ self.index_to_lps_affine()

    @classmethod
    def from_sitk(cls, image: Any) -> "Grid":
        """Grid of a 3-D SimpleITK image."""
        if image.GetDimension() != 3:
            raise MedSynError(f"expected a 3-D image, got {image.GetDimension()}-D; export a single 3-D volume")
        return cls(
            shape_zyx=tuple(reversed(image.GetSize())),
            spacing_xyz=image.GetSpacing(),
            origin_lps=image.GetOrigin(),
            direction_lps=image.GetDirection(),
        )

    def apply_to_sitk(self, image: Any) -> None:
        """Set spacing, origin and direction of a SimpleITK image whose size matches this grid."""
        if tuple(reversed(image.GetSize())) != self.shape_zyx:
            raise ValueError(f"image size {image.GetSize()} (x,y,z) does not match grid shape {self.shape_zyx} (z,y,x)")
        image.SetSpacing(self.spacing_xyz)
        image.SetOrigin(self.origin_lps)
        image.SetDirection(self.direction_lps)

    def to_dict(self) -> dict[str, list]:
        """JSON-ready form, used in model cards and provenance."""
        return {
            "shape_zyx": list(self.shape_zyx),
            "spacing_xyz": list(self.spacing_xyz),
            "origin_lps": list(self.origin_lps),
            "direction_lps": list(self.direction_lps),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Grid":
        """Inverse of ``to_dict``; a missing key is reported by name."""
        missing = [key for key in ("shape_zyx", "spacing_xyz", "origin_lps", "direction_lps") if key not in data]
        if missing:
            raise MedSynError(f"grid entry lacks {', '.join(missing)}; add it to the model card")
        return cls(data["shape_zyx"], data["spacing_xyz"], data["origin_lps"], data["direction_lps"])

    def with_shape(self, shape_zyx: Sequence[int]) -> "Grid":
        """Same placement, another number of voxels (e.g. a crop anchored at voxel 0)."""
        return replace(self, shape_zyx=tuple(shape_zyx))

    def downsampled(self, factor: int, block_centres: bool = False) -> "Grid":
        """Grid of every ``factor``-th voxel, as the official low-res data ``x[::factor]`` were taken, or with
        ``block_centres`` the grid of factor³-block means, whose voxel 0 sits at full-res index (factor − 1) / 2.
        """
        if factor < 1 or any(n % factor for n in self.shape_zyx):
            raise MedSynError(f"grid shape {self.shape_zyx} is not divisible by the down-sampling factor {factor}")
        origin = self.origin_lps
        if block_centres:
            origin = tuple(self.index_to_lps_affine()[:3, :3] @ np.full(3, (factor - 1) / 2.0) + origin)
        return replace(
            self,
            shape_zyx=tuple(n // factor for n in self.shape_zyx),
            spacing_xyz=tuple(s * factor for s in self.spacing_xyz),
            origin_lps=origin,
        )

    def upsampled(self, factor: int, block_centres: bool = False) -> "Grid":
        """The full-res grid whose ``downsampled(factor, block_centres)`` is this grid: each voxel's f³ block."""
        if factor < 1:
            raise MedSynError(f"the up-sampling factor must be at least 1, got {factor}")
        fine = replace(self, shape_zyx=tuple(n * factor for n in self.shape_zyx),
                       spacing_xyz=tuple(s / factor for s in self.spacing_xyz))
        if not block_centres:
            return fine
        shift = fine.index_to_lps_affine()[:3, :3] @ np.full(3, (factor - 1) / 2.0)
        return replace(fine, origin_lps=tuple(np.asarray(self.origin_lps) - shift))

    @classmethod
    def centered(
        cls,
        shape_zyx: Sequence[int],
        spacing_xyz: Sequence[float],
        direction_lps: Sequence[float] = (1, 0, 0, 0, 1, 0, 0, 0, 1),
    ) -> "Grid":
        """Grid whose field-of-view centre lies at the LPS origin, for volumes with no reference placement."""
        provisional = cls(tuple(shape_zyx), tuple(spacing_xyz), (0.0, 0.0, 0.0), tuple(direction_lps))
        centre_ijk = (np.asarray(provisional.shape_zyx[::-1], dtype=np.float64) - 1.0) / 2.0
        centre_offset = provisional.index_to_lps_affine()[:3, :3] @ centre_ijk
        return replace(provisional, origin_lps=tuple(-centre_offset))

    def almost_equal(self, other: "Grid", tol: float = 1e-4) -> bool:
        """Same shape and geometry within ``tol`` (mm): NIfTI stores float32, so ``==`` is too strict after a reload."""
        return self.shape_zyx == other.shape_zyx and all(
            np.allclose(a, b, rtol=0.0, atol=tol)
            for a, b in (
                (self.spacing_xyz, other.spacing_xyz),
                (self.origin_lps, other.origin_lps),
                (self.direction_lps, other.direction_lps),
            )
        )


def to_lps_array(array_zyx: np.ndarray, grid: Grid) -> tuple[np.ndarray, tuple[float, float, float]]:
    """View of ``array_zyx`` with x along +L, y along +P, z along +S, plus the matching spacing (x, y, z).

    Each index axis is mapped to the patient axis its direction is closest to, so oblique grids come out approximately
    aligned; that is enough for display, not for resampling.
    """
    direction = grid.direction_matrix()
    patient_axis = np.argmax(np.abs(direction), axis=0)  # patient axis (0=L, 1=P, 2=S) of index axes i, j, k
    if len(set(patient_axis.tolist())) != 3:
        raise MedSynError(f"direction {grid.direction_lps} is too oblique to show in standard views")
    view = array_zyx
    for index_axis, patient in enumerate(patient_axis):
        if direction[patient, index_axis] < 0:
            view = np.flip(view, axis=2 - index_axis)
    index_axis_of_patient = np.argsort(patient_axis)
    # Index axis n lives on array axis 2 - n; patient axis p must end up on array axis 2 - p.
    view = np.transpose(view, [2 - int(index_axis_of_patient[2 - axis]) for axis in range(3)])
    spacing = tuple(grid.spacing_xyz[int(index_axis_of_patient[p])] for p in range(3))
    return view, spacing


def _int_triple(values: Sequence[Any], what: str) -> tuple[int, int, int]:
    triple = tuple(values)
    if len(triple) != 3 or any(int(v) != v for v in triple):
        raise MedSynError(f"grid {what} must be three integers, got {triple}")
    return tuple(int(v) for v in triple)


def _float_tuple(values: Sequence[Any], length: int, what: str) -> tuple[float, ...]:
    floats = tuple(float(v) for v in values)
    if len(floats) != length or not all(math.isfinite(v) for v in floats):
        raise MedSynError(f"grid {what} must be {length} finite numbers, got {floats}")
    return floats
