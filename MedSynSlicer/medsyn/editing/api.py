"""Python API of editing: anatomy-conditioned generation, inpainting, outpainting and segmentation.

Each call validates every input before loading a model or sampling (one-line ``MedSynError``s, nothing written),
then writes its outputs into ``out_dir`` atomically, on the user's geometry.

>>> from medsyn.editing import api
>>> api.inpaint("ct.nii.gz", "erase.nii.gz", "out/edit", report="Small right pleural effusion.", seed=1)
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from medsyn.diffusion.known_region import Resampling
from medsyn.errors import MedSynError
from medsyn.geometry import Grid
from medsyn.io.outputs import check_output_dir
from medsyn.io.volumes import read_volume
from medsyn.models.loaded import LoadedModel, load_model
from medsyn.progress import CancelToken, ProgressCallback

from .canvas import canvas_from_margin
from .engine import EditRequest, SamplingOptions, model_grid_for, run_edit
from .masks import load_anatomy, load_edit_mask
from .modes import conditioned_request, inpaint_request, outpaint_request, segment_request
from .outputs import edit_provenance, write_edit_outputs
from .seam import OUTPAINT_SEAM_BLEND_MM

__all__ = ["generate_conditioned", "inpaint", "outpaint", "segment"]

PathLike = str | Path
SRTile = str | tuple[int, int, int]


def generate_conditioned(report: str, out_dir: PathLike, lobes: Optional[PathLike] = None,
                         airway: Optional[PathLike] = None, vessels: Optional[PathLike] = None,
                         segment_map: Optional[str] = None, *, center_lps: Optional[Sequence[float]] = None,
                         model: Optional[str] = None, loaded: Optional[LoadedModel] = None, seed: int = 0,
                         steps: Optional[int] = None, sr_steps: Optional[int] = None, guidance: Optional[float] = None,
                         device: str = "auto", low_res_only: bool = False, sampler: str = "ddim",
                         precision: str = "auto", sr_tile: SRTile = "auto", feather_voxels: int = 0,
                         resampling: Optional[Resampling] = None, callback: Optional[ProgressCallback] = None,
                         cancel: Optional[CancelToken] = None, overwrite: bool = False) -> dict[str, Path]:
    """Generate a CT whose lobe / airway / vessel channels are the given maps (any subset), on the model's grid
    placed on that anatomy. ``sampler``, ``precision`` and ``sr_tile`` are ``medsyn.api.generate``'s, for both
    stages; the editing functions below take them too."""
    if not report or not report.strip():
        raise MedSynError("the report is empty; type the findings you want the synthetic CT to show")
    check_output_dir(out_dir, overwrite)
    anatomy = load_anatomy(lobes, airway, vessels, segment_map)
    if not anatomy:
        raise MedSynError("no anatomy given; pass lobes, airway and/or vessels")
    loaded = loaded if loaded is not None else load_model(model, device)
    request = conditioned_request(anatomy, model_grid_for(loaded, low_res_only)[0], center_lps)
    options = SamplingOptions(report, seed, steps, sr_steps, guidance, low_res_only, sampler, precision, sr_tile,
                              feather_voxels, resampling)
    inputs = {role: label.path for role, label in anatomy.items()}
    return _sample_and_write(loaded, request, options, inputs, out_dir, callback, cancel, overwrite)


def inpaint(input_path: PathLike, mask_path: PathLike, out_dir: PathLike, report: str = "",
            lobes: Optional[PathLike] = None, airway: Optional[PathLike] = None, vessels: Optional[PathLike] = None,
            segment_map: Optional[str] = None, *, center_lps: Optional[Sequence[float]] = None, local: bool = True,
            model: Optional[str] = None, loaded: Optional[LoadedModel] = None, seed: int = 0,
            steps: Optional[int] = None, sr_steps: Optional[int] = None, guidance: Optional[float] = None,
            device: str = "auto", low_res_only: bool = False, sampler: str = "ddim", precision: str = "auto",
            sr_tile: SRTile = "auto", feather_voxels: int = 0, resampling: Optional[Resampling] = None,
            seam_blend_mm: float = 0.0, callback: Optional[ProgressCallback] = None,
            cancel: Optional[CancelToken] = None, overwrite: bool = False) -> dict[str, Path]:
    """Regenerate the CT inside the mask from ``report`` (none: the unconditional model); every voxel outside it
    comes back byte-identical. ``local`` samples only windows around a small mask at both stages (see
    ``edit_window``); anatomy not given is then generated inside the low-res window only. ``seam_blend_mm`` (off by
    default: an erased region's border often lies on the edge of the finding asked for) fades the intensity step
    at the mask border out over that width, inside the mask only."""
    check_output_dir(out_dir, overwrite)
    ct, grid = load_input_ct(input_path)
    edit_mask = load_edit_mask(mask_path, grid)
    anatomy = load_anatomy(lobes, airway, vessels, segment_map)
    request = inpaint_request(ct, grid, edit_mask, anatomy, center_lps)
    options = SamplingOptions(report, seed, steps, sr_steps, guidance, low_res_only, sampler, precision, sr_tile,
                              feather_voxels, resampling, local, seam_blend_mm)
    inputs = {"input": Path(input_path), "mask": Path(mask_path), **{r: a.path for r, a in anatomy.items()}}
    loaded = loaded if loaded is not None else load_model(model, device)
    return _sample_and_write(loaded, request, options, inputs, out_dir, callback, cancel, overwrite)


def outpaint(input_path: PathLike, out_dir: PathLike, canvas_path: Optional[PathLike] = None,
             margin_mm: Optional[Sequence[float]] = None, report: str = "", *,
             center_lps: Optional[Sequence[float]] = None, model: Optional[str] = None,
             loaded: Optional[LoadedModel] = None, seed: int = 0, steps: Optional[int] = None,
             sr_steps: Optional[int] = None, guidance: Optional[float] = None, device: str = "auto",
             low_res_only: bool = False, sampler: str = "ddim", precision: str = "auto", sr_tile: SRTile = "auto",
             feather_voxels: int = 0, resampling: Optional[Resampling] = None,
             seam_blend_mm: float = OUTPAINT_SEAM_BLEND_MM, callback: Optional[ProgressCallback] = None,
             cancel: Optional[CancelToken] = None, overwrite: bool = False) -> dict[str, Path]:
    """Extend the input to the canvas (a reference volume's grid, or the input grown by ``margin_mm``); the generated
    side's intensity step at the input's border is faded out over ``seam_blend_mm`` (0: off)."""
    if (canvas_path is None) == (margin_mm is None):
        raise MedSynError("give exactly one of a canvas volume or margins in mm")
    check_output_dir(out_dir, overwrite)
    ct, grid = load_input_ct(input_path)
    canvas = read_volume(canvas_path)[1] if canvas_path is not None else canvas_from_margin(grid, margin_mm)
    request = outpaint_request(ct, grid, canvas, center_lps)
    options = SamplingOptions(report, seed, steps, sr_steps, guidance, low_res_only, sampler, precision, sr_tile,
                              feather_voxels, resampling, seam_blend_mm=seam_blend_mm)
    inputs = {"input": Path(input_path), **({"canvas": Path(canvas_path)} if canvas_path is not None else {})}
    loaded = loaded if loaded is not None else load_model(model, device)
    return _sample_and_write(loaded, request, options, inputs, out_dir, callback, cancel, overwrite)


def segment(input_path: PathLike, out_dir: PathLike, report: Optional[str] = None, *,
            center_lps: Optional[Sequence[float]] = None, model: Optional[str] = None,
            loaded: Optional[LoadedModel] = None, seed: int = 0, steps: Optional[int] = None,
            sr_steps: Optional[int] = None, guidance: Optional[float] = None, device: str = "auto",
            low_res_only: bool = False, sampler: str = "ddim", precision: str = "auto", sr_tile: SRTile = "auto",
            callback: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
            overwrite: bool = False) -> dict[str, Path]:
    """Keep the CT and generate its lobes, airway and vessels (the paper's Table 5 use), with or without a report."""
    check_output_dir(out_dir, overwrite)
    ct, grid = load_input_ct(input_path)
    request = segment_request(ct, grid, center_lps)
    options = SamplingOptions(report or "", seed, steps, sr_steps, guidance, low_res_only, sampler, precision, sr_tile)
    loaded = loaded if loaded is not None else load_model(model, device)
    return _sample_and_write(loaded, request, options, {"input": Path(input_path)}, out_dir, callback, cancel,
                             overwrite)


def load_input_ct(path: PathLike) -> tuple[np.ndarray, Grid]:
    """The input CT (HU, any integer or float dtype) and its grid."""
    array, grid = read_volume(path)
    if array.dtype.kind not in "iuf":
        raise MedSynError(f"{Path(path).name} holds {array.dtype} voxels; save the CT as integer or float HU")
    return array, grid


def _sample_and_write(loaded: LoadedModel, request: EditRequest, options: SamplingOptions, inputs: dict[str, Path],
                      out_dir: PathLike, callback: Optional[ProgressCallback], cancel: Optional[CancelToken],
                      overwrite: bool) -> dict[str, Path]:
    result = run_edit(loaded, request, options, callback, cancel)
    provenance = edit_provenance(request, result, options, inputs)
    return write_edit_outputs(out_dir, result, provenance, request.edit_region, overwrite)
