"""Python API: the same operations as the CLI, for scripts, notebooks, batch jobs and the Slicer worker.

>>> from medsyn import api
>>> paths = api.generate("Large right pleural effusion.", "out/case1", seed=3)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional, Sequence

from .errors import MedSynError
from .models.loaded import LoadedModel, load_model
from .models.registry import list_models
from .progress import CancelToken, ProgressCallback

__all__ = ["load_model", "list_models", "generate", "generate_batch"]


def _ensure_model(loaded: Optional[LoadedModel], model: Optional[str], device: str) -> LoadedModel:
    return loaded if loaded is not None else load_model(model, device)


def generate(report: str, out_dir: str | Path, *, model: Optional[str] = None, loaded: Optional[LoadedModel] = None,
             seed: int = 0, steps: Optional[int] = None, sr_steps: Optional[int] = None,
             guidance: Optional[float] = None, device: str = "auto", low_res_only: bool = False,
             callback: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
             overwrite: bool = False) -> dict[str, Path]:
    """Generate one synthetic CT + masks from a report and write every output into ``out_dir`` atomically."""
    from .io.outputs import check_output_dir, write_generation_outputs
    from .io.provenance import build_provenance
    from .pipeline import MedSynPipeline

    if not report or not report.strip():
        raise MedSynError("the report is empty; type the findings you want the synthetic CT to show")
    check_output_dir(Path(out_dir), overwrite)
    loaded = _ensure_model(loaded, model, device)
    result = MedSynPipeline(loaded).generate(report, seed=seed, steps=steps, sr_steps=sr_steps, guidance=guidance,
                                             low_res_only=low_res_only, callback=callback, cancel=cancel)
    provenance = build_provenance(mode="generate", **result.settings)
    if low_res_only:
        return write_generation_outputs(Path(out_dir), result.lowres, result.lowres_grid, None, None, provenance,
                                        overwrite=overwrite)
    return write_generation_outputs(Path(out_dir), result.volume, result.grid, result.lowres, result.lowres_grid,
                                    provenance, overwrite=overwrite)


def generate_batch(reports: Sequence[str], seeds: Iterable[int], out_root: str | Path, *,
                   model: Optional[str] = None, loaded: Optional[LoadedModel] = None, device: str = "auto",
                   callback: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
                   **settings) -> list[dict]:
    """Generate every report × seed into ``out_root/<report index>_seed<seed>/``; finished cases are skipped (resumable).

    Returns the summary rows, also written to ``out_root/summary.jsonl``.
    """
    reports = list(reports)
    if not reports:
        raise MedSynError("no reports given; pass at least one report")
    seeds = list(seeds)
    loaded = _ensure_model(loaded, model, device)
    out_root = Path(out_root)
    rows = []
    for index, report in enumerate(reports):
        for seed in seeds:
            case_dir = out_root / f"{index:04d}_seed{seed}"
            if not (case_dir / "provenance.json").is_file():
                generate(report, case_dir, loaded=loaded, seed=seed, callback=callback, cancel=cancel,
                         overwrite=True, **settings)
            rows.append({"report_index": index, "seed": seed, "report": report, "dir": case_dir.name})
    out_root.mkdir(parents=True, exist_ok=True)
    from .io.provenance import write_text_atomic

    write_text_atomic(out_root / "summary.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return rows
