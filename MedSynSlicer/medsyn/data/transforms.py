"""MONAI transforms that turn one manifest row into MedSyn's 4-channel training tensor on the model card's SR grid.

Load → reorient to the card's axis codes → resample (card spacing + centred pad/crop, or a plain resize) → encode
(HU window and labels onto [-1, 1], as medsyn.codec defines them) → (4, D, H, W) with array axes (k, j, i) like every
other volume in the backend. A missing mask becomes an "unknown" channel that the loss ignores.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..codec import NUM_LOBE_LABELS
from ..errors import MedSynError
from ..models.card import LOWRES_CT_REDUCTIONS, LOWRES_MASK_REDUCTIONS, GridCard
from .manifest import MASK_COLUMNS, ManifestRow

CHANNEL_KEYS = ("ct",) + MASK_COLUMNS
MAX_LABEL = {"lobes": NUM_LOBE_LABELS, "airway": 1, "vessels": 1}
UNKNOWN_VALUE = 0.0  # mid-range of model space: says nothing about the structure; its loss is masked out anyway
RESAMPLE_MODES = ("spacing", "resize")
TREE_CHANNELS = (2, 3)  # airway, vessels: thin binary trees
BLOCK_MAX_CHANNELS = {"subsample": (), "block_max": TREE_CHANNELS, "block_max_airway": (2,)}  # per lowres_masks


def axis_codes(grid: GridCard) -> str:
    """MONAI/nibabel axis codes (RAS letters) of the card's i, j, k axes; the official atlas gives "LAS"."""
    import nibabel.orientations

    return "".join(nibabel.orientations.aff2axcodes(grid.to_grid().to_ras_affine()))


def lowres_of(volume: torch.Tensor, factor: int, ct: str = "subsample", masks: str = "subsample") -> torch.Tensor:
    """Low-res of a (..., 4, D, H, W) model-space volume: every ``factor``-th voxel, exactly how the official low-res
    data were made. A model card's ``grid.lowres_ct = "block_mean"`` makes channel 0 the factor³-block mean;
    ``grid.lowres_masks = "block_max"`` makes the airway and vessel channels the block maximum (inside where any voxel
    of the block is, the block nearest upsampling maps the low-res voxel back onto), ``"block_max_airway"`` the
    airway channel only."""
    if ct not in LOWRES_CT_REDUCTIONS:
        raise MedSynError(f"unknown low-res CT reduction {ct!r}; use one of {list(LOWRES_CT_REDUCTIONS)}")
    if masks not in LOWRES_MASK_REDUCTIONS:
        raise MedSynError(f"unknown low-res mask reduction {masks!r}; use one of {list(LOWRES_MASK_REDUCTIONS)}")
    low = volume[..., ::factor, ::factor, ::factor]
    if ct == "subsample" and masks == "subsample":
        return low
    channels = list(low.unbind(dim=-4))
    if ct == "block_mean":
        channels[0] = block_view(volume[..., 0, :, :, :], factor).mean(dim=(-5, -3, -1)).to(volume.dtype)
    for index in BLOCK_MAX_CHANNELS[masks]:
        channels[index] = block_view(volume[..., index, :, :, :], factor).amax(dim=(-5, -3, -1)).to(volume.dtype)
    return torch.stack(channels, dim=-4)


def lowres_on_grid(volume: torch.Tensor, grid: GridCard) -> torch.Tensor:
    """``lowres_of`` with the factor and reductions a model card's grid names (training data, SR conditioning)."""
    return lowres_of(volume, grid.sr_factor, grid.lowres_ct, grid.lowres_masks)


def block_view(channel: torch.Tensor, factor: int) -> torch.Tensor:
    """(..., D, H, W) → (..., D/f, f, H/f, f, W/f, f) in float32, so reductions over the f-axes give one value a block."""
    *lead, depth, height, width = channel.shape
    return channel.float().reshape(*lead, depth // factor, factor, height // factor, factor, width // factor, factor)


def load_case(row: ManifestRow, grid: GridCard, hu_window: Sequence[float], resample: str = "spacing"
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(image (4, D, H, W) float32 in [-1, 1], loss_mask (4,) float32: 1 where the channel is known) for one row."""
    if resample not in RESAMPLE_MODES:
        raise MedSynError(f"unknown resample mode {resample!r}; use one of {RESAMPLE_MODES}")
    present = ["ct"] + [name for name in MASK_COLUMNS if row.masks[name] is not None]
    data = {"ct": str(row.ct), **{name: str(row.masks[name]) for name in present[1:]}}
    data = _run(_geometry_transforms(present, grid, resample), data, row)
    for name in present[1:]:
        _check_labels(data[name], name, row)
    data = _run(_encoding_transforms(present, grid, hu_window, resample), data, row)
    reference = data["ct"]
    channels = [data[key] if key in data else torch.full_like(reference, UNKNOWN_VALUE) for key in CHANNEL_KEYS]
    # MONAI keeps spatial axes in (i, j, k) order; the backend's arrays are (k, j, i).
    image = torch.cat(channels).permute(0, 3, 2, 1).as_subclass(torch.Tensor)  # plain tensor, MONAI metadata dropped
    loss_mask = torch.tensor([float(key in data) for key in CHANNEL_KEYS])
    return image.to(torch.float32).contiguous(), loss_mask


def _geometry_transforms(keys: list[str], grid: GridCard, resample: str):
    from monai.transforms import Compose, LoadImaged, Orientationd, Resized, Spacingd

    # CT is interpolated, label maps take the nearest voxel so labels stay labels.
    modes = tuple("bilinear" if key == "ct" else "nearest" for key in keys)
    steps = [LoadImaged(keys, image_only=True, ensure_channel_first=True, dtype=np.float32),
             Orientationd(keys, axcodes=axis_codes(grid), labels=None)]  # codes read in the image's space (RAS)
    if resample == "spacing":
        steps.append(Spacingd(keys, pixdim=grid.spacing_xyz, mode=modes, dtype=np.float32))
    else:
        steps.append(Resized(keys, spatial_size=_size_ijk(grid), mode=tuple(m.replace("bilinear", "trilinear")
                                                                            for m in modes),
                             anti_aliasing=tuple(key == "ct" for key in keys)))
    return Compose(steps)


def _encoding_transforms(keys: list[str], grid: GridCard, hu_window: Sequence[float], resample: str):
    from monai.transforms import Compose, ResizeWithPadOrCropd, ScaleIntensityRanged

    low, high = (float(v) for v in hu_window)
    steps = [ScaleIntensityRanged("ct", a_min=low, a_max=high, b_min=-1.0, b_max=1.0, clip=True)]
    steps += [ScaleIntensityRanged(key, a_min=0.0, a_max=float(MAX_LABEL[key]), b_min=-1.0, b_max=1.0)
              for key in keys[1:]]
    if resample == "spacing":
        # After encoding, -1 is air / background in every channel, so it is the right value to pad with.
        steps.append(ResizeWithPadOrCropd(keys, spatial_size=_size_ijk(grid), value=-1.0))
    return Compose(steps)


def _size_ijk(grid: GridCard) -> tuple[int, int, int]:
    return tuple(reversed(grid.shape_zyx))


def _run(transform, data: dict, row: ManifestRow) -> dict:
    try:
        return transform(data)
    except RuntimeError as exc:  # MONAI wraps the real cause ("applying transform ...")
        cause = exc.__cause__ or exc
        raise MedSynError(f"{row.where()}: could not load the volumes ({type(cause).__name__}: "
                          f"{str(cause).splitlines()[0] if str(cause) else ''})") from exc


def _check_labels(volume: torch.Tensor, name: str, row: ManifestRow) -> None:
    """Reject masks the model cannot represent, e.g. a multi-label TotalSegmentator file given as the airway."""
    values = torch.as_tensor(volume)
    if not torch.equal(values, values.round()):
        raise MedSynError(f"{row.where()}: {name} holds fractional values; save it as an integer label map")
    low, high, limit = float(values.min()), float(values.max()), MAX_LABEL[name]
    if low < 0 or high > limit:
        raise MedSynError(f"{row.where()}: {name} labels must lie in 0..{limit}, found {low:g}..{high:g}; "
                          "relabel it as described in docs/training-data.md")
