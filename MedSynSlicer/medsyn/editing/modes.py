"""The four editing modes as configurations of the one known-region mechanism, built from inputs already validated.

- anatomy conditioning: lobe / airway / vessel channels known wherever their files reach, CT free;
- inpainting: CT known outside the edit mask, the given anatomy known everywhere;
- outpainting: CT known inside the input's field of view on the larger canvas;
- segmentation: CT known everywhere, anatomy free.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from medsyn.errors import MedSynError
from medsyn.geometry import Grid

from .canonical import anatomy_centre_lps, canonical_grid, choose_centre, ct_centre_lps, fov_centre_lps
from .composite import cast_like
from .engine import EditRequest
from .known import KnownChannel
from .masks import LabelVolume
from .resample import field_of_view, resample

Centre = Optional[Sequence[float]]


def conditioned_request(anatomy: dict[str, LabelVolume], model_grid: Grid, centre_lps: Centre = None) -> EditRequest:
    """Generate around the given (non-empty) anatomy; the output grid is the model's grid placed on it, centred on
    the lobes when given."""
    first = next(iter(anatomy.values()))
    centre = choose_centre(centre_lps, anatomy_centre_lps(first.array, first.grid))
    grid = canonical_grid(model_grid, first.grid, centre)
    channels = {role: _label_channel(label, grid) for role, label in anatomy.items()}
    return EditRequest("generate", grid, channels, centre)


def inpaint_request(ct: np.ndarray, grid: Grid, edit_mask: np.ndarray, anatomy: dict[str, LabelVolume],
                    centre_lps: Centre = None) -> EditRequest:
    """Regenerate the CT inside ``edit_mask`` (and the anatomy channels that are not given)."""
    channels = {"ct": KnownChannel(ct, ~edit_mask), **{role: _label_channel(label, grid)
                                                        for role, label in anatomy.items()}}
    centre = choose_centre(centre_lps, ct_centre_lps(ct, grid))
    return EditRequest("inpaint", grid, channels, centre, edit_region=edit_mask)


def outpaint_request(ct: np.ndarray, grid: Grid, canvas: Grid, centre_lps: Centre = None) -> EditRequest:
    """Fill ``canvas`` around the input; the model is centred on the canvas, canvas voxels beyond it become air."""
    known = field_of_view(grid, canvas)
    if not known.any():
        raise MedSynError("the canvas does not overlap the input volume; choose a canvas around the input")
    if known.all():
        raise MedSynError("the canvas lies inside the input volume, so there is nothing to outpaint; enlarge it")
    values = cast_like(resample(ct, grid, canvas, "linear", 0.0), ct.dtype)
    centre = choose_centre(centre_lps, fov_centre_lps(canvas))
    return EditRequest("outpaint", canvas, {"ct": KnownChannel(values, known)}, centre, edit_region=~known,
                       air_beyond_model=True)


def segment_request(ct: np.ndarray, grid: Grid, centre_lps: Centre = None) -> EditRequest:
    """Keep the CT, generate the lobes, airway and vessels that go with it."""
    centre = choose_centre(centre_lps, ct_centre_lps(ct, grid))
    return EditRequest("segment", grid, {"ct": KnownChannel(ct, np.ones(ct.shape, dtype=bool))}, centre)


def _label_channel(label: LabelVolume, grid: Grid) -> KnownChannel:
    return KnownChannel(resample(label.array, label.grid, grid, "nearest", 0), field_of_view(label.grid, grid))
