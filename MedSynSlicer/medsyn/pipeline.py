"""The generation pipeline: report → text features → low-res sampling → nearest upsample → SR sampling → decoded
volumes.

This is the only place that knows the stage order; samplers, networks, codecs and writers stay independent of it.
How the stages run (precision, SR tiles, low-res offload) comes from a ``presets.Preset`` and never changes what is
generated beyond the stated tolerances; several (report, seed) items can share one batched forward.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch

from .codec import DecodedVolume, decode_volume, lowres_to_sr_condition
from .diffusion.guidance import LowResDenoiser
from .diffusion.known_region import KnownRegion
from .diffusion.precision import with_precision
from .diffusion.samplers import SAMPLER_DESCRIPTIONS, get_sampler
from .diffusion.tiled import FallbackSRDenoiser
from .errors import MedSynError
from .geometry import Grid
from .models.loaded import LoadedModel
from .networks.blocks import reuse_text_keys
from .presets import PerformanceOptions, Preset, choose_preset, free_memory
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

    def __init__(self, loaded: LoadedModel, performance: Optional[PerformanceOptions] = None) -> None:
        self.loaded = loaded
        self.performance = performance or PerformanceOptions()

    def generate(self, report: str, seed: int = 0, steps: Optional[int] = None, sr_steps: Optional[int] = None,
                 guidance: Optional[float] = None, low_res_only: bool = False, sampler: str = "ddim",
                 known_lowres: Optional[KnownRegion] = None, known_sr: Optional[KnownRegion] = None,
                 callback: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> GenerationResult:
        """Sample one volume; the same (report, seed, settings, weights) always gives the same result on a device."""
        return self.generate_batch([report], [seed], steps=steps, sr_steps=sr_steps, guidance=guidance,
                                   low_res_only=low_res_only, sampler=sampler, known_lowres=known_lowres,
                                   known_sr=known_sr, callback=callback, cancel=cancel)[0]

    def generate_batch(self, reports: Sequence[str], seeds: Sequence[int], steps: Optional[int] = None,
                       sr_steps: Optional[int] = None, guidance: Optional[float] = None, low_res_only: bool = False,
                       sampler: str = "ddim", known_lowres: Optional[KnownRegion] = None,
                       known_sr: Optional[KnownRegion] = None, callback: Optional[ProgressCallback] = None,
                       cancel: Optional[CancelToken] = None) -> list[GenerationResult]:
        """Sample item i = (reports[i], seeds[i]) for all i in one batch. Each item's noise comes from its own seed,
        so it is the volume it would be alone (up to the float rounding of batched kernels)."""
        card, loaded = self.loaded.card, self.loaded
        if not reports or len(reports) != len(seeds):
            raise MedSynError(f"give one seed per report (got {len(reports)} reports and {len(seeds)} seeds)")
        steps = steps or card.lowres.steps
        guidance = card.lowres.guidance_scale if guidance is None else float(guidance)
        if not low_res_only and loaded.sr is None:
            raise MedSynError(f"model '{card.name}' has no super-resolution stage; use --low-res-only")
        sr_steps = sr_steps or (card.sr.steps if card.sr is not None else 0)
        sample = get_sampler(sampler)
        grid, lowres_grid = model_grids(loaded)
        preset = self.preset()
        noise, sr_noise = _batch_noise(seeds, lowres_grid.shape_zyx, None if low_res_only else grid.shape_zyx)

        timings: dict[str, float] = {}
        start = time.perf_counter()
        cond = torch.cat([loaded.encode(report) for report in reports])
        timings["text_s"] = time.perf_counter() - start

        start = time.perf_counter()
        loaded.lowres.to(loaded.device)  # back from an earlier offload; no-op otherwise
        with torch.inference_mode(), reuse_text_keys(loaded.lowres):
            net = with_precision(loaded.lowres, preset.precision, loaded.device.type)
            denoiser = LowResDenoiser(net, cond, guidance, combine=card.lowres.combine)
            x_low = sample(denoiser, noise.to(loaded.device), steps, known=known_lowres, callback=callback,
                           cancel=cancel, stage="lowres")
        timings["lowres_s"] = time.perf_counter() - start
        x_sr, sr_plan = None, None
        if not low_res_only:
            self._offload_lowres(preset)
            start = time.perf_counter()
            with torch.inference_mode():
                x_lr = lowres_to_sr_condition(x_low, card.grid.sr_factor)
                sr_denoiser = FallbackSRDenoiser(with_precision(loaded.sr, preset.precision, loaded.device.type),
                                                 x_lr, preset.sr_plans)
                x_sr = sample(sr_denoiser, sr_noise.to(loaded.device), sr_steps, known=known_sr, callback=callback,
                              cancel=cancel, stage="sr")
            timings["sr_s"] = time.perf_counter() - start
            sr_plan = sr_denoiser.plan

        shared = {
            "steps": steps, "sr_steps": None if low_res_only else sr_steps, "guidance": guidance,
            "sampler": f"{SAMPLER_DESCRIPTIONS[sampler]}, {card.lowres.combine} CFG", "model": card.name,
            "weights_sha256": loaded.weights_sha256, "device": str(loaded.device), "precision": preset.precision,
            "sr_tile": None if low_res_only else (list(sr_plan) if sr_plan else "whole"),
            "batch_size": len(reports), "low_res_only": low_res_only, "timings": timings,
        }
        return [self._result(x_low[i:i + 1], None if x_sr is None else x_sr[i:i + 1], grid, lowres_grid,
                             {"prompt": report, "seed": int(seed), **shared})
                for i, (report, seed) in enumerate(zip(reports, seeds))]

    def preset(self) -> Preset:
        """How this model runs on its device now (precision, SR tile chain, offload), from the free memory."""
        loaded = self.loaded
        grid, _ = model_grids(loaded)
        nets = [net for net in (loaded.lowres, loaded.sr) if net is not None]
        free = free_memory(loaded.device)
        if free is not None:  # the presets count the weights themselves
            free += sum(_weight_bytes(net) for net in nets if next(net.parameters()).device.type == "cuda")
        align = 2 ** (len(loaded.sr.downs) - 1) if loaded.sr is not None else 1
        return choose_preset(self.performance, loaded.device, grid.shape_zyx, align, _weight_bytes(loaded.lowres),
                             _weight_bytes(loaded.sr) if loaded.sr is not None else 0, free_bytes=free)

    def _offload_lowres(self, preset: Preset) -> None:
        if preset.offload and self.loaded.device.type == "cuda":
            self.loaded.lowres.to("cpu")
            torch.cuda.empty_cache()

    def _result(self, x_low: torch.Tensor, x_sr: Optional[torch.Tensor], grid: Grid, lowres_grid: Grid,
                settings: dict[str, Any]) -> GenerationResult:
        window = self.loaded.card.hu_window
        lowres = decode_volume(x_low[0].float().cpu().numpy(), window)
        volume = decode_volume(x_sr[0].float().cpu().numpy(), window) if x_sr is not None else None
        return GenerationResult(lowres, lowres_grid, x_low.cpu(), volume, None if x_sr is None else grid,
                                None if x_sr is None else x_sr.cpu(), settings)


def _batch_noise(seeds: Sequence[int], lowres_shape: Sequence[int],
                 sr_shape: Optional[Sequence[int]]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Per item, one CPU generator seeded with its seed draws the low-res noise, then the SR noise (the order the
    editing engine's ``local_sr.sr_noise`` relies on), so an item's noise never depends on its batch."""
    low, high = [], []
    for seed in seeds:
        generator = torch.Generator().manual_seed(int(seed))
        low.append(torch.randn((1, 4, *lowres_shape), generator=generator))
        if sr_shape is not None:
            high.append(torch.randn((1, 4, *sr_shape), generator=generator))
    return torch.cat(low), torch.cat(high) if high else None


def _weight_bytes(net: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in net.parameters())
