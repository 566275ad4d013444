"""Runs one editing job: place the model's grid, fix the known channels at both stages, sample, map back, composite.

Every editing mode is an ``EditRequest`` (which channels are known where, on the output grid); this is the only code
that samples for them. Both stages go through ``MedSynPipeline`` with the job's sampler and performance options; a small
edit is sampled locally, on the windows ``edit_window`` picks at each stage, so its cost follows its size.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np

from medsyn.codec import DecodedVolume, decode_volume
from medsyn.diffusion.known_region import Resampling
from medsyn.errors import MedSynError
from medsyn.geometry import Grid
from medsyn.models.card import GridCard
from medsyn.models.loaded import LoadedModel
from medsyn.pipeline import Box, MedSynPipeline, describe_plan, model_grids, seed_noise
from medsyn.presets import PerformanceOptions
from medsyn.progress import CancelToken, ProgressCallback

from .canonical import canonical_grid
from .composite import to_output_grid
from .known import KnownChannel, KnownVolume, encode_known, known_regions
from .edit_window import lowres_window, sr_box
from .resample import field_of_view, touched
from .seam import check_blend_width


@dataclass(frozen=True)
class EditRequest:
    """One job on the output grid: the known channels, the voxels the user asked to regenerate, the model's centre."""

    mode: str
    grid: Grid
    channels: dict[str, KnownChannel]
    centre_lps: np.ndarray
    edit_region: Optional[np.ndarray] = None  # bool on ``grid``; drives local SR, the preview outline, provenance
    air_beyond_model: bool = False  # CT to generate outside the model's field of view becomes air instead of an error


@dataclass(frozen=True)
class SamplingOptions:
    """How to sample: the pipeline's settings (as ``medsyn.api.generate``'s) plus the editing-only harmonisation and
    locality switches. An empty report samples the unconditional model."""

    report: str = ""
    seed: int = 0
    steps: Optional[int] = None
    sr_steps: Optional[int] = None
    guidance: Optional[float] = None
    low_res_only: bool = False
    sampler: str = "ddim"
    precision: str = "auto"
    sr_tile: Union[str, tuple[int, int, int]] = "auto"
    feather_voxels: int = 0
    resampling: Optional[Resampling] = None
    local: bool = True  # sample a small edit's windows only (see edit_window); False: the whole grid
    seam_blend_mm: float = 0.0  # fade the CT step at the kept/generated border out over this width (see seam)

    def __post_init__(self) -> None:
        check_blend_width(self.seam_blend_mm)  # before any sampling, not at compositing time


@dataclass(frozen=True)
class EditResult:
    """Output arrays on ``grid`` (CT in the input's dtype, labels uint8), the sampled volume on the canonical grid
    before compositing (what evaluations measure), and how they were made."""

    arrays: dict[str, np.ndarray]
    grid: Grid
    sampled: DecodedVolume
    canonical_grid: Grid
    lowres_box: Optional[Box]
    sr_box: Optional[Box]
    settings: dict[str, Any]


def model_grid_for(loaded: LoadedModel, low_res_only: bool) -> tuple[Grid, int]:
    """The grid results are sampled on and its factor to the low-res grid."""
    if not low_res_only and loaded.sr is None:
        raise MedSynError(f"model '{loaded.card.name}' has no super-resolution stage; use the low-res-only option")
    sr_grid, lowres_grid = model_grids(loaded)
    return (lowres_grid, 1) if low_res_only else (sr_grid, loaded.card.grid.sr_factor)


def run_edit(loaded: LoadedModel, request: EditRequest, options: SamplingOptions,
             callback: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> EditResult:
    """Sample the unknown part of ``request`` and return it composited with the known part on the output grid."""
    card = loaded.card
    window = tuple(card.hu_window)
    model_grid, factor = model_grid_for(loaded, options.low_res_only)
    canonical = canonical_grid(model_grid, request.grid, request.centre_lps)
    beyond = _beyond_model(request, canonical)
    known_low, known_full = known_regions(*_encoded_known(request, canonical, factor, card.grid, window),
                                          options.feather_voxels, options.resampling, card.grid.lowres_ct,
                                          card.grid.lowres_masks)
    pipeline = MedSynPipeline(loaded, PerformanceOptions(precision=options.precision, sr_tile=options.sr_tile))
    low_box, box = _local_windows(loaded, request, canonical, factor) if options.local else (None, None)
    low = pipeline.generate(options.report, seed=options.seed, steps=options.steps, guidance=options.guidance,
                            low_res_only=True, sampler=options.sampler, known_lowres=known_low, lowres_box=low_box,
                            callback=callback, cancel=cancel)
    settings = {**low.settings, "low_res_only": options.low_res_only, "air_voxels_beyond_model": beyond}
    if options.low_res_only:
        x = low.lowres_tensor
    else:
        settings["sr_steps"] = options.sr_steps or card.sr.steps
        start = time.perf_counter()
        _, noise = seed_noise([options.seed], low.lowres_grid.shape_zyx, model_grid.shape_zyx)
        x, plan = pipeline.super_resolve(low.lowres_tensor, noise, settings["sr_steps"], options.sampler, known_full,
                                         box, callback, cancel)
        settings["sr_tile"] = describe_plan(plan)
        settings["timings"] = {**settings["timings"], "sr_s": time.perf_counter() - start}
    decoded = decode_volume(x[0].float().numpy(), window)
    arrays = to_output_grid(decoded, canonical, request.grid, request.channels, window, options.seam_blend_mm)
    return EditResult(arrays, request.grid, decoded, canonical, low_box, box, settings)


def _encoded_known(request: EditRequest, canonical: Grid, factor: int, grid_card: GridCard,
                   window: tuple[float, float]) -> tuple[KnownVolume, int]:
    """The known channels encoded on a full-res grid, and its factor to the low-res grid.

    A low-res-only edit (factor 1) is encoded on the full-res grid behind its canonical grid, then reduced at low
    res like the model's training data were. With block means or block maxima that is not the same as sampling the
    given CT and masks at the low-res voxel centres.
    """
    if factor > 1:
        return encode_known(request.channels, request.grid, canonical, window), factor
    fine = canonical.upsampled(grid_card.sr_factor, block_centres=grid_card.lowres_ct == "block_mean")
    return encode_known(request.channels, request.grid, fine, window), grid_card.sr_factor


def _local_windows(loaded: LoadedModel, request: EditRequest, canonical: Grid, factor: int
                   ) -> tuple[Optional[Box], Optional[Box]]:
    """(low-res window, SR box) around the user's edit (grown to every canonical voxel it touches); each is None
    where that stage samples the whole grid: no edit region, an edit too large for it, or (SR) a low-res-only job.
    ``canonical`` is the grid results are sampled on, ``factor`` its ratio to the low-res grid (1: low-res only)."""
    if request.edit_region is None:
        return None, None
    region = touched(request.edit_region, request.grid, canonical)
    low_box = lowres_window(region, canonical, factor, len(loaded.card.lowres.network["dim_mults"]))
    box = sr_box(region, canonical, factor, len(loaded.card.sr.network["dim_mults"])) if factor > 1 else None
    return low_box, box


def _beyond_model(request: EditRequest, canonical: Grid) -> int:
    """How many CT voxels to generate lie outside the model's field of view; an error unless the request fills them
    with air (outpainting canvases are often wider than the model, with only air in their corners)."""
    ct = request.channels.get("ct")
    if ct is None:
        return 0
    beyond = int((~ct.known & ~field_of_view(canonical, request.grid)).sum())
    if beyond and not request.air_beyond_model:
        extent = " x ".join(f"{n * s:.0f}" for n, s in zip(canonical.shape_zyx[::-1], canonical.spacing_xyz))
        raise MedSynError(f"{beyond} voxels to generate lie outside the model's {extent} mm field of view; make the "
                          "region smaller or centre the model on it")
    return beyond
