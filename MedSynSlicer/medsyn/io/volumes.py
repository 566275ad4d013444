"""Read and write 3-D NIfTI and NRRD volumes with their LPS geometry through SimpleITK."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medsyn.errors import MedSynError
from medsyn.geometry import Grid
from medsyn.io.atomic import atomic_write

# ITK copies these metadata keys into the NIfTI ``descrip`` field and the NRRD ``content`` field.
_DESCRIPTION_KEY_BY_SUFFIX = {".nii": "ITK_FileNotes", ".nii.gz": "ITK_FileNotes", ".nrrd": "NRRD_content"}


def write_volume(path: str | os.PathLike, array_zyx: np.ndarray, grid: Grid, description: str = "") -> Path:
    """Write ``array_zyx`` (dtype kept) on ``grid`` as .nii, .nii.gz or .nrrd; ``description`` goes into the header.

    Detached .nhdr headers are not written: their separate data file cannot be replaced atomically with the header.
    """
    target = Path(path)
    description_key = _DESCRIPTION_KEY_BY_SUFFIX.get(_volume_suffix(target))
    if description_key is None:
        raise MedSynError(f"cannot write {target.name}: use a .nii, .nii.gz or .nrrd file name")
    if array_zyx.shape != grid.shape_zyx:
        raise ValueError(f"array shape {array_zyx.shape} does not match grid shape {grid.shape_zyx}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx))
    grid.apply_to_sitk(image)
    if description:
        image.SetMetaData(description_key, description)
    with atomic_write(target) as temporary:
        try:
            sitk.WriteImage(image, str(temporary), useCompression=True)
        except RuntimeError as error:
            raise MedSynError(f"could not write {target}: {_itk_reason(error)}") from None
    return target


def read_volume(path: str | os.PathLike) -> tuple[np.ndarray, Grid]:
    """Read a scalar 3-D image as a (z, y, x) array and its grid; reject what the backend cannot use."""
    source = Path(path)
    if not source.is_file():
        raise MedSynError(f"volume file {source} does not exist")
    try:
        image = sitk.ReadImage(str(source))
    except RuntimeError:
        raise MedSynError(f"cannot read {source}: not a readable NIfTI or NRRD image (corrupt or truncated?)") from None
    if image.GetDimension() != 3:
        raise MedSynError(f"{source} is a {image.GetDimension()}-D image; export a single 3-D volume")
    components = image.GetNumberOfComponentsPerPixel()
    if components != 1:
        raise MedSynError(f"{source} has {components} values per voxel; export a scalar volume")
    array = sitk.GetArrayFromImage(image)
    if array.dtype.kind == "f" and np.isnan(array).any():
        raise MedSynError(f"{source} contains NaN voxels; fill them (e.g. with -1024 HU) before using it")
    try:
        grid = Grid.from_sitk(image)
    except MedSynError as error:
        raise MedSynError(f"{source}: {error}") from None
    return array, grid


def _volume_suffix(path: Path) -> str:
    return ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix.lower()


def _itk_reason(error: Exception) -> str:
    """ITK puts file and line first and the human-readable reason last."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
