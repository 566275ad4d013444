"""The generation pipeline: report → text features → low-res sampling → nearest upsample → SR sampling → decoded
volumes.

This is the only place that knows the stage order; samplers, networks, codecs and writers stay independent of it.
How the stages run (precision, SR tiles, low-res offload) comes from a ``presets.Preset`` and never changes what is
generated beyond the stated tolerances; several (report, seed) items can share one batched forward. The SR stage is
``MedSynPipeline.super_resolve``, which the editing engine also calls (on a box or the whole grid), so generation and
editing super-resolve the same way. An empty report samples the unconditional model (editing without a report).
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
from .diffusion.tiled import FallbackSRDenoiser, TilePlan
from .errors import MedSynError
from .geometry import Grid
from .models.loaded import LoadedModel
from .networks.blocks import reuse_text_keys
from .presets import PerformanceOptions, Preset, choose_preset, free_memory
from .progress import CancelToken, ProgressCallback


Box = tuple[slice, slice, slice]  # (z, y, x) window of the SR grid


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
    return grid, loaded.card.grid.to_lowres_grid()


class MedSynPipeline:
    """Runs one loaded model; reuse the instance so weights and text features stay loaded between calls."""

    def __init__(self, loaded: LoadedModel, performance: Optional[PerformanceOptions] = None) -> None:
        self.loaded = loaded
        self.performance = performance or PerformanceOptions()

    def generate(self, report: Optional[str], seed: int = 0, steps: Optional[int] = None,
                 sr_steps: Optional[int] = None, guidance: Optional[float] = None, low_res_only: bool = False,
                 sampler: str = "ddim", known_lowres: Optional[KnownRegion] = None,
                 known_sr: Optional[KnownRegion] = None, lowres_box: Optional[Box] = None,
                 callback: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None
                 ) -> GenerationResult:
        """Sample one volume; the same (report, seed, settings, weights) always gives the same result on a device.
        An empty or None report samples the unconditional model (learned null embedding, no guidance)."""
        return self.generate_batch([report], [seed], steps=steps, sr_steps=sr_steps, guidance=guidance,
                                   low_res_only=low_res_only, sampler=sampler, known_lowres=known_lowres,
                                   known_sr=known_sr, lowres_box=lowres_box, callback=callback, cancel=cancel)[0]

    def generate_batch(self, reports: Sequence[Optional[str]], seeds: Sequence[int], steps: Optional[int] = None,
                       sr_steps: Optional[int] = None, guidance: Optional[float] = None, low_res_only: bool = False,
                       sampler: str = "ddim", known_lowres: Optional[KnownRegion] = None,
                       known_sr: Optional[KnownRegion] = None, lowres_box: Optional[Box] = None,
                       callback: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None
                       ) -> list[GenerationResult]:
        """Sample item i = (reports[i], seeds[i]) for all i in one batch. Each item's noise comes from its own seed,
        so it is the volume it would be alone (up to the float rounding of batched kernels).

        With a ``lowres_box`` (a local edit) the low-res stage samples only that window, from the noise a whole-grid
        run sees there; outside it the low-res result is the known values, else -1 (nothing, air)."""
        card, loaded = self.loaded.card, self.loaded
        if not reports or len(reports) != len(seeds):
            raise MedSynError(f"give one seed per report (got {len(reports)} reports and {len(seeds)} seeds)")
        steps = steps or card.lowres.steps
        if not low_res_only and loaded.sr is None:
            raise MedSynError(f"model '{card.name}' has no super-resolution stage; use --low-res-only")
        sr_steps = sr_steps or (card.sr.steps if card.sr is not None else 0)
        sample = get_sampler(sampler)
        grid, lowres_grid = model_grids(loaded)
        preset = self.preset()
        noise, sr_noise = seed_noise(seeds, lowres_grid.shape_zyx, None if low_res_only else grid.shape_zyx)

        timings: dict[str, float] = {}
        start = time.perf_counter()
        cond = self._text_condition(reports)
        if cond is None:
            guidance = None  # guidance mixes text and null predictions; without text there is nothing to mix
        else:
            guidance = float(card.lowres.guidance_scale if guidance is None else guidance)
        timings["text_s"] = time.perf_counter() - start

        start = time.perf_counter()
        loaded.lowres.to(loaded.device)  # back from an earlier offload; no-op otherwise
        with torch.inference_mode(), reuse_text_keys(loaded.lowres):
            net = with_precision(loaded.lowres, preset.precision, loaded.device.type)
            denoiser = LowResDenoiser(net, cond, 1.0 if guidance is None else guidance, combine=card.lowres.combine)
            window = _window(lowres_box)
            x_box = sample(denoiser, noise[window].to(loaded.device), steps, known=_cropped(known_lowres, window),
                           callback=callback, cancel=cancel, stage="lowres").cpu()
            x_low = x_box if lowres_box is None else _paste(x_box, window, torch.full_like(noise, -1.0),
                                                            known_lowres)
        timings["lowres_s"] = time.perf_counter() - start
        x_sr, sr_plan = None, None
        if not low_res_only:
            start = time.perf_counter()
            x_sr, sr_plan = self.super_resolve(x_low, sr_noise, sr_steps, sampler, known_sr, callback=callback,
                                               cancel=cancel)
            timings["sr_s"] = time.perf_counter() - start

        mixing = "unconditional" if cond is None else f"{card.lowres.combine} CFG"
        shared = {
            "steps": steps, "sr_steps": None if low_res_only else sr_steps, "guidance": guidance,
            "sampler": f"{SAMPLER_DESCRIPTIONS[sampler]}, {mixing}", "model": card.name,
            "weights_sha256": loaded.weights_sha256, "device": str(loaded.device), "precision": preset.precision,
            "sr_tile": None if low_res_only else describe_plan(sr_plan),
            "batch_size": len(reports), "low_res_only": low_res_only, "timings": timings,
        }
        return [self._result(x_low[i:i + 1], None if x_sr is None else x_sr[i:i + 1], grid, lowres_grid,
                             {"prompt": report or None, "seed": int(seed), **shared})
                for i, (report, seed) in enumerate(zip(reports, seeds))]

    def super_resolve(self, x_low: torch.Tensor, noise: torch.Tensor, steps: int, sampler: str = "ddim",
                      known: Optional[KnownRegion] = None, box: Optional[Box] = None,
                      callback: Optional[ProgressCallback] = None,
                      cancel: Optional[CancelToken] = None) -> tuple[torch.Tensor, TilePlan]:
        """The SR stage: the full-resolution (B, 4, D, H, W) model-space result on the CPU, and the tile plan that ran.

        ``noise`` is the whole grid's SR noise (``seed_noise``). With a ``box`` only that window is sampled, from the
        same noise a whole-grid run would see there; outside it the result is the known values, else the
        nearest-upsampled low-res volume. The box is planned like a volume of its size (tiles only if it does not fit).
        """
        loaded = self.loaded
        x_lr = lowres_to_sr_condition(x_low.cpu(), loaded.card.grid.sr_factor)
        window = _window(box)
        known_box = _cropped(known, window)
        preset = self.preset(x_lr[window].shape[2:])
        self._offload_lowres(preset)
        with torch.inference_mode():
            denoiser = FallbackSRDenoiser(with_precision(loaded.sr, preset.precision, loaded.device.type),
                                          x_lr[window].to(loaded.device), preset.sr_plans)
            x_box = get_sampler(sampler)(denoiser, noise[window].to(loaded.device), steps,
                                         known=None if known_box is None else known_box.to(loaded.device),
                                         callback=callback, cancel=cancel, stage="sr").cpu()
        return (x_box if box is None else _paste(x_box, window, x_lr, known)), denoiser.plan

    def preset(self, sr_shape: Optional[Sequence[int]] = None) -> Preset:
        """How this model runs on its device now (precision, SR tile chain, offload), from the free memory, for an SR
        volume of ``sr_shape`` (default: the model's grid)."""
        loaded = self.loaded
        sr_shape = sr_shape or model_grids(loaded)[0].shape_zyx
        nets = [net for net in (loaded.lowres, loaded.sr) if net is not None]
        free = free_memory(loaded.device)
        if free is not None:  # the presets count the weights themselves
            free += sum(_weight_bytes(net) for net in nets if next(net.parameters()).device.type == "cuda")
        align = 2 ** (len(loaded.sr.downs) - 1) if loaded.sr is not None else 1
        return choose_preset(self.performance, loaded.device, tuple(sr_shape), align, _weight_bytes(loaded.lowres),
                             _weight_bytes(loaded.sr) if loaded.sr is not None else 0, free_bytes=free)

    def _text_condition(self, reports: Sequence[Optional[str]]) -> Optional[torch.Tensor]:
        """Text features of every report, or None when none has text (the unconditional model)."""
        empty = [not (report and report.strip()) for report in reports]
        if all(empty):
            return None
        if any(empty):
            raise MedSynError("a batch mixes empty and non-empty reports; sample unconditional items separately")
        return torch.cat([self.loaded.encode(report) for report in reports])

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


def seed_noise(seeds: Sequence[int], lowres_shape: Sequence[int],
               sr_shape: Optional[Sequence[int]]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(low-res, SR) noise of a batch: per item, one CPU generator seeded with its seed draws the low-res noise, then
    the SR noise, so an item's noise never depends on its batch and an edit sees a generation's noise."""
    low, high = [], []
    for seed in seeds:
        generator = torch.Generator().manual_seed(int(seed))
        low.append(torch.randn((1, 4, *lowres_shape), generator=generator))
        if sr_shape is not None:
            high.append(torch.randn((1, 4, *sr_shape), generator=generator))
    return torch.cat(low), torch.cat(high) if high else None


def describe_plan(plan: TilePlan) -> list[int] | str:
    """The provenance form of an SR tile plan."""
    return list(plan) if plan else "whole"


def _window(box: Optional[Box]) -> tuple[slice, ...]:
    """Index of a (B, C, D, H, W) tensor's ``box`` (all of it for None)."""
    return (slice(None), slice(None), *(box or (slice(None),) * 3))


def _cropped(known: Optional[KnownRegion], window: tuple[slice, ...]) -> Optional[KnownRegion]:
    """``known`` on a window (masks that broadcast over the volume are expanded first)."""
    if known is None or all(part == slice(None) for part in window):
        return known
    mask, values = torch.broadcast_tensors(known.mask, known.values)
    return KnownRegion(mask[window], values[window], known.resampling)


def _paste(x_box: torch.Tensor, window: tuple[slice, ...], background: torch.Tensor,
           known: Optional[KnownRegion]) -> torch.Tensor:
    """A window's result inside the whole grid: outside the window the known values, else ``background``."""
    result = known.apply(background) if known is not None else background.clone()
    result[window] = x_box.to(result)
    return result


def _weight_bytes(net: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in net.parameters())
