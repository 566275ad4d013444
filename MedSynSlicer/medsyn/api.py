"""Python API: the same operations as the CLI, for scripts, notebooks, batch jobs and the Slicer worker.

>>> from medsyn import api
>>> paths = api.generate("Large right pleural effusion.", "out/case1", seed=3)
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional, Sequence

from .errors import MedSynError
from .models.loaded import LoadedModel, load_model
from .models.registry import list_models
from .progress import CancelToken, ProgressCallback

if TYPE_CHECKING:
    from .pipeline import GenerationResult

from .editing.api import generate_conditioned, inpaint, outpaint, segment

__all__ = ["load_model", "list_models", "generate", "generate_conditioned", "generate_batch", "inpaint", "outpaint",
           "segment"]


def _ensure_model(loaded: Optional[LoadedModel], model: Optional[str], device: str) -> LoadedModel:
    return loaded if loaded is not None else load_model(model, device)


def generate(report: str, out_dir: str | Path, *, model: Optional[str] = None, loaded: Optional[LoadedModel] = None,
             seed: int = 0, steps: Optional[int] = None, sr_steps: Optional[int] = None,
             guidance: Optional[float] = None, device: str = "auto", low_res_only: bool = False,
             sampler: str = "ddim", precision: str = "auto", sr_tile: str | tuple[int, int, int] = "auto",
             callback: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
             overwrite: bool = False) -> dict[str, Path]:
    """Generate one synthetic CT + masks from a report and write every output into ``out_dir`` atomically.

    ``sampler`` "ddim" (official) or "dpmpp2m" (fewer steps); ``precision`` and ``sr_tile`` default to the preset
    for the device's free memory (see ``medsyn.presets``).
    """
    from .io.outputs import check_output_dir
    from .pipeline import MedSynPipeline
    from .presets import PerformanceOptions

    if not report or not report.strip():
        raise MedSynError("the report is empty; type the findings you want the synthetic CT to show")
    check_output_dir(Path(out_dir), overwrite)
    loaded = _ensure_model(loaded, model, device)
    pipeline = MedSynPipeline(loaded, PerformanceOptions(precision=precision, sr_tile=sr_tile))
    result = pipeline.generate(report, seed=seed, steps=steps, sr_steps=sr_steps, guidance=guidance,
                               low_res_only=low_res_only, sampler=sampler, callback=callback, cancel=cancel)
    return _write_result(result, Path(out_dir), overwrite)


def _write_result(result: GenerationResult, out_dir: Path, overwrite: bool) -> dict[str, Path]:
    from .io.outputs import write_generation_outputs
    from .io.provenance import build_provenance

    provenance = build_provenance(mode="generate", **result.settings)
    if result.volume is None:
        return write_generation_outputs(out_dir, result.lowres, result.lowres_grid, None, None, provenance,
                                        overwrite=overwrite)
    return write_generation_outputs(out_dir, result.volume, result.grid, result.lowres, result.lowres_grid,
                                    provenance, overwrite=overwrite)


def generate_batch(reports: Sequence[str], seeds: Iterable[int], out_root: str | Path, *,
                   model: Optional[str] = None, loaded: Optional[LoadedModel] = None, device: str = "auto",
                   batch_size: int = 1, steps: Optional[int] = None, sr_steps: Optional[int] = None,
                   guidance: Optional[float] = None, low_res_only: bool = False, sampler: str = "ddim",
                   precision: str = "auto", sr_tile: str | tuple[int, int, int] = "auto",
                   callback: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> list[dict]:
    """Generate every report × seed into ``out_root/<report index>_seed<seed>/``, ``batch_size`` volumes per forward.

    Resumable: finished volumes are skipped. Under ``torchrun`` each rank takes its share of the items (on its own
    GPU) and rank 0 writes ``out_root/summary.jsonl`` once all are done. Returns the summary rows.
    """
    from . import batch
    from .pipeline import MedSynPipeline
    from .presets import PerformanceOptions

    items = batch.batch_items(list(reports), list(seeds))
    out_root = Path(out_root)
    with batch.ranks() as (rank, world):
        pending = [item for item in items[rank::world] if not batch.is_finished(out_root / item.name)]
        groups = batch.chunks(pending, batch_size)
        if groups:
            loaded = _ensure_model(loaded, model, batch.rank_device(device))
            pipeline = MedSynPipeline(loaded, PerformanceOptions(precision=precision, sr_tile=sr_tile))
        for chunk in groups:
            results = pipeline.generate_batch([item.report for item in chunk], [item.seed for item in chunk],
                                              steps=steps, sr_steps=sr_steps, guidance=guidance,
                                              low_res_only=low_res_only, sampler=sampler, callback=callback,
                                              cancel=cancel)
            for item, result in zip(chunk, results):
                _write_result(result, out_root / item.name, overwrite=True)
        return batch.finish(out_root, items, rank)
