"""The one known-region mechanism of editing: which channels are known where, for both diffusion stages.

Anatomy conditioning (channels 1-3 known), inpainting (CT known outside the edit mask), outpainting (CT known inside
the original field of view) and segmentation (CT known everywhere) are only different ``KnownChannel`` inputs here.
The full-resolution masks are exact; the low-res stage sees a voxel as known only when its whole block is, so an edit
never shrinks when it is coarsened.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from medsyn.codec import hu_to_model, lobes_to_model, mask_to_model
from medsyn.data.transforms import lowres_of
from medsyn.diffusion.known_region import KnownRegion, Resampling, feather
from medsyn.geometry import Grid

from .resample import covered, resample

CHANNEL_OF_ROLE = {"ct": 0, "lobes": 1, "airway": 2, "vessels": 3}
_ENCODERS = {"lobes": lobes_to_model, "airway": mask_to_model, "vessels": mask_to_model}


@dataclass(frozen=True)
class KnownChannel:
    """What the user fixes in one channel, on the output grid: values (HU or labels) and where they hold."""

    values: np.ndarray
    known: np.ndarray  # bool, same shape


@dataclass(frozen=True)
class KnownVolume:
    """Model-space values (4, D, H, W) and where they are known (bool, same shape) on the canonical full-res grid."""

    values: np.ndarray
    known: np.ndarray


def encode_known(channels: dict[str, KnownChannel], reference: Grid, canonical: Grid,
                 hu_window: tuple[float, float]) -> KnownVolume:
    """Move every given channel from the output grid onto the canonical grid and encode it; a canonical voxel counts as
    known only when all voxels its interpolation draws on are known."""
    values = np.zeros((4, *canonical.shape_zyx), dtype=np.float32)
    known = np.zeros((4, *canonical.shape_zyx), dtype=bool)
    for role, channel in channels.items():
        index = CHANNEL_OF_ROLE[role]
        known[index] = covered(channel.known, reference, canonical)
        if role == "ct":
            moved = resample(channel.values, reference, canonical, "linear", hu_window[0])
            values[index] = hu_to_model(moved, hu_window)
        else:
            values[index] = _ENCODERS[role](resample(channel.values, reference, canonical, "nearest", 0))
    return KnownVolume(values, known)


def known_regions(volume: KnownVolume, factor: int, feather_voxels: int = 0,
                  resampling: Optional[Resampling] = None, lowres_ct: str = "subsample",
                  lowres_masks: str = "subsample") -> tuple[Optional[KnownRegion], Optional[KnownRegion]]:
    """(low-res, full-res) known regions; None where nothing is known.

    Low-res values are made as the model's low-res training data were (``lowres_ct``, ``lowres_masks``, see
    ``lowres_of``); feathering and RePaint resampling act at low res, where content is decided, while the full-res
    stage is fixed exactly.
    """
    if not volume.known.any():
        return None, None
    full = KnownRegion(torch.from_numpy(volume.known)[None], torch.from_numpy(volume.values)[None])
    channels, depth, height, width = volume.known.shape
    blocks = volume.known.reshape(channels, depth // factor, factor, height // factor, factor, width // factor, factor)
    low_known = torch.from_numpy(blocks.all(axis=(2, 4, 6)))[None]
    low_values = lowres_of(torch.from_numpy(volume.values), factor, lowres_ct, lowres_masks).contiguous()[None]
    low_mask = feather(low_known, feather_voxels) if feather_voxels else low_known
    return KnownRegion(low_mask, low_values, resampling), full
