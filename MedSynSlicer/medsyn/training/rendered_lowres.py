"""Low-res conditions rendered by a trained low-res network, so the SR stage learns from what it gets at inference.

The SR stage is trained on low-res volumes cut from the truth: hard ±1 masks and trees as wide as the data's. At
inference it is given the low-res network's output instead, whose mask values are soft and whose trachea is
thinner, and a small SR network does not recognise such trees. Each case's true low-res volume is therefore
diffused to a time t ~ U(low, high) and denoised back by the low-res network with the case's own report and the
card's guidance (SDEdit). That keeps the case's layout, so its full-resolution target still fits, but gives the
network's rendering of it. ``medsyn train --stage sr --rendered-lowres DIR`` conditions a share of samples on these.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from ..data.dataset import PreparedDataset
from ..diffusion.ddim import ddim_sample
from ..diffusion.guidance import LowResDenoiser
from ..diffusion.schedule import NUM_TIMESTEPS, ddim_delta, q_sample
from ..errors import MedSynError
from ..io.outputs import AtomicOutputDir
from ..models.card import GridCard
from .samples import seeded_generator

INDEX_FILE = "rendered.json"
FORMAT_VERSION = 1
RENDER_STREAM = 2  # a seeded_generator stream of its own, apart from the training samples' streams


def render_lowres(model: str | Path, data_folder: Path, out_dir: Path, noise_range: tuple[float, float] = (0.3, 0.7),
                  seed: int = 0, batch_size: int = 4, device: str = "auto", show_progress: bool = True) -> Path:
    """Write the low-res network's rendering of every case of ``data_folder`` (prepared with text features).

    Cases are rendered in batches that share one start time, drawn per batch and snapped to the card's DDIM grid;
    noise and times depend on (seed, batch) only, so a rerun gives the same files.
    """
    from ..models.loaded import load_model

    low, high = (float(v) for v in noise_range)
    if not 0.0 < low <= high <= 1.0:
        raise MedSynError(f"noise range {noise_range} must satisfy 0 < low <= high <= 1, e.g. 0.3,0.7")
    if batch_size < 1:
        raise MedSynError(f"batch_size must be at least 1, got {batch_size}")
    data = PreparedDataset(data_folder)
    if not data.has_text:
        raise MedSynError(f"{data_folder} was prepared without text features; prepare it with the model's text "
                          "encoder (the low-res training folder has them)")
    loaded = load_model(str(model), device)
    card = loaded.card
    if data.grid != card.grid:  # the same check RenderedLowres makes against the SR data
        raise MedSynError(f"{data_folder} is prepared on another grid than model {card.name}; prepare it with the "
                          "model's card")
    steps, guidance = card.lowres.steps, card.lowres.guidance_scale
    delta = ddim_delta(steps)
    cases = {}
    with AtomicOutputDir(out_dir, overwrite=True) as partial, torch.inference_mode():
        (partial / "cases").mkdir()
        batches = range(0, len(data), batch_size)
        for number, first in enumerate(tqdm(batches, desc="rendering low-res", unit="batch",
                                            disable=not show_progress)):
            indices = list(range(first, min(first + batch_size, len(data))))
            generator = seeded_generator(seed, RENDER_STREAM, number)
            t01 = low + (high - low) * float(torch.rand((), generator=generator))
            start = max(delta, delta * int(t01 * NUM_TIMESTEPS // delta))
            x0 = torch.stack([data.lowres(i) for i in indices])
            x_t = q_sample(x0, torch.full((len(indices),), start / NUM_TIMESTEPS),
                           torch.randn(x0.shape, generator=generator))
            cond = torch.stack([data.text_features(i) for i in indices]).to(loaded.device)
            denoiser = LowResDenoiser(loaded.lowres, cond, guidance, combine=card.lowres.combine)
            rendered = ddim_sample(denoiser, x_t.to(loaded.device), steps, start=start).cpu()
            for offset, index in enumerate(indices):
                name = f"cases/{index:06d}.safetensors"
                save_file({"lowres": rendered[offset].to(torch.float16).contiguous()}, str(partial / name))
                cases[data.case_id(index)] = {"file": name, "start_time": start}
        index = {"format": FORMAT_VERSION, "model": card.name, "lowres_sha256": card.lowres.sha256,
                 "grid": asdict(data.grid), "noise_range": [low, high], "steps": steps, "guidance": guidance,
                 "seed": seed, "cases": cases}
        (partial / INDEX_FILE).write_text(json.dumps(index, indent=1), encoding="utf-8")
    return Path(out_dir)


class RenderedLowres:
    """Read side of a ``render_lowres`` folder: a case's rendered (4, d, h, w) low-res volume by case id."""

    def __init__(self, folder: Path | str, grid: GridCard) -> None:
        self.folder = Path(folder)
        try:
            index = json.loads((self.folder / INDEX_FILE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise MedSynError(f"{self.folder} is not a rendered low-res folder ({exc}); make it with "
                              "medsyn render-lowres") from exc
        if index.get("format") != FORMAT_VERSION:
            raise MedSynError(f"{self.folder} was rendered by another medsyn version; render it again")
        if GridCard(**index["grid"]) != grid:
            raise MedSynError(f"{self.folder} was rendered on another grid than the training data; render it again "
                              "from data prepared with the same model config")
        self.model, self.lowres_sha256 = index["model"], index["lowres_sha256"]
        self._cases: dict[str, dict] = index["cases"]

    def crop(self, case_id: str, start_zyx: tuple[int, int, int], size_zyx: tuple[int, int, int]) -> torch.Tensor:
        """(4, *size_zyx) float32 window of the case's rendered low-res volume."""
        entry: Optional[dict] = self._cases.get(case_id)
        if entry is None:
            raise MedSynError(f"case {case_id!r} has no rendered low-res volume in {self.folder}; render it again "
                              "from the same manifest")
        (z0, y0, x0), (depth, height, width) = start_zyx, size_zyx
        with safe_open(str(self.folder / entry["file"]), framework="pt") as handle:
            return handle.get_slice("lowres")[:, z0:z0 + depth, y0:y0 + height, x0:x0 + width].float()
