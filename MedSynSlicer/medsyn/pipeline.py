"""The generation pipeline: report → text features → low-res DDIM → nearest upsample → SR DDIM → decoded volumes.

This is the only place that knows the stage order; samplers, networks, codecs and writers stay independent of it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from .codec import DecodedVolume, decode_volume, lowres_to_sr_condition
from .diffusion.ddim import ddim_sample
from .diffusion.guidance import LowResDenoiser, SRDenoiser
from .diffusion.known_region import KnownRegion
from .errors import MedSynError
from .geometry import Grid
from .models.loaded import LoadedModel
from .progress import CancelToken, ProgressCallback


@dataclass
class GenerationResult:
    """Decoded outputs on the model grid plus the raw model-space tensors (kept for editing and evaluation)."""

    lowres: DecodedVolume
    lowres_grid: Grid
    lowres_tensor: torch.Tensor
    volume: Optional[DecodedVolume]
    grid: Optional[Grid]
    volume_tensor: Optional[torch.Tensor]
    settings: dict[str, Any] = field(default_factory=dict)


def model_grids(loaded: LoadedModel) -> tuple[Grid, Grid]:
    """(SR grid, low-res grid) from the model card."""
    grid = loaded.card.grid.to_grid()
    return grid, grid.downsampled(loaded.card.grid.sr_factor)


class MedSynPipeline:
    """Runs one loaded model; reuse the instance so weights and text features stay loaded between calls."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded

    def generate(self, report: str, seed: int = 0, steps: Optional[int] = None, sr_steps: Optional[int] = None,
                 guidance: Optional[float] = None, low_res_only: bool = False,
                 known_lowres: Optional[KnownRegion] = None, known_sr: Optional[KnownRegion] = None,
                 callback: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> GenerationResult:
        """Sample one volume; the same (report, seed, settings, weights) always gives the same result on a device."""
        card, loaded = self.loaded.card, self.loaded
        steps = steps or card.lowres.steps
        guidance = card.lowres.guidance_scale if guidance is None else float(guidance)
        if not low_res_only and loaded.sr is None:
            raise MedSynError(f"model '{card.name}' has no super-resolution stage; use --low-res-only")
        sr_steps = sr_steps or (card.sr.steps if card.sr is not None else 0)
        grid, lowres_grid = model_grids(loaded)
        generator = torch.Generator().manual_seed(int(seed))
        lowres_shape = (1, 4, *lowres_grid.shape_zyx)
        noise = torch.randn(lowres_shape, generator=generator).to(loaded.device)
        sr_noise = torch.randn((1, 4, *grid.shape_zyx), generator=generator).to(loaded.device) if not low_res_only else None

        timings: dict[str, float] = {}
        start = time.perf_counter()
        cond = loaded.encode(report)
        timings["text_s"] = time.perf_counter() - start

        start = time.perf_counter()
        with torch.inference_mode():
            denoiser = LowResDenoiser(loaded.lowres, cond, guidance, combine=card.lowres.combine)
            x_low = ddim_sample(denoiser, noise, steps, known=known_lowres, callback=callback, cancel=cancel,
                                stage="lowres")
        timings["lowres_s"] = time.perf_counter() - start
        x_sr = None
        if not low_res_only:
            start = time.perf_counter()
            with torch.inference_mode():
                x_lr = lowres_to_sr_condition(x_low, card.grid.sr_factor)
                x_sr = ddim_sample(SRDenoiser(loaded.sr, x_lr), sr_noise, sr_steps, known=known_sr,
                                   callback=callback, cancel=cancel, stage="sr")
            timings["sr_s"] = time.perf_counter() - start

        settings = {
            "prompt": report, "seed": int(seed), "steps": steps, "sr_steps": None if low_res_only else sr_steps,
            "guidance": guidance, "sampler": f"ddim (eta=0, {card.lowres.combine} CFG)", "model": card.name,
            "weights_sha256": loaded.weights_sha256, "device": str(loaded.device),
            "low_res_only": low_res_only, "timings": timings,
        }
        window = card.hu_window
        lowres = decode_volume(x_low[0].float().cpu().numpy(), window)
        volume = decode_volume(x_sr[0].float().cpu().numpy(), window) if x_sr is not None else None
        return GenerationResult(lowres, lowres_grid, x_low.cpu(), volume, None if x_sr is None else grid,
                                None if x_sr is None else x_sr.cpu(), settings)
