"""``medsyn evaluate``: generate every prompt × seed with one loaded model, measure each sample, write the results.

Output folder: ``results.jsonl`` (one row per sample, appended as each finishes, so an interrupted run resumes where
it stopped), ``summary.json`` (per-prompt statistics and comparison verdicts), ``RESULTS.md`` (tables), ``plots/``
and ``previews/`` (the first seeds of each prompt). Volumes themselves are not written: ``medsyn generate`` with the
same report and seed reproduces any of them.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from medsyn.codec import DecodedVolume
from medsyn.errors import MedSynError
from medsyn.evaluation.metrics import measure_volume
from medsyn.evaluation.plots import write_metric_plot
from medsyn.evaluation.prompts import EvalPrompt, PromptSet, read_prompt_set
from medsyn.evaluation.results_markdown import PLOT_FILES, TABLES, results_markdown
from medsyn.evaluation.summary import summarize
from medsyn.geometry import Grid
from medsyn.io.provenance import write_text_atomic
from medsyn.progress import ProgressCallback

RESULTS_NAME = "results.jsonl"
SUMMARY_NAME = "summary.json"
MARKDOWN_NAME = "RESULTS.md"
PREVIEW_DIR = "previews"


def run_evaluation(prompts_path: str | Path, out_dir: str | Path, seeds: Sequence[int], *,
                   model: Optional[str] = None, device: str = "auto", steps: Optional[int] = None,
                   sr_steps: Optional[int] = None, guidance: Optional[float] = None, low_res_only: bool = False,
                   sampler: str = "ddim", precision: str = "auto", sr_tile: str | tuple[int, int, int] = "auto",
                   batch_size: int = 1, previews: int = 1, callback: Optional[ProgressCallback] = None,
                   on_sample: Optional[Callable[[dict[str, Any]], None]] = None) -> dict[str, Any]:
    """Evaluate ``model`` on the prompts file and return the summary (also written to ``out_dir``).

    ``on_sample`` receives each newly measured row; ``previews`` is how many seeds per prompt get a preview PNG.
    """
    from medsyn.batch import chunks
    from medsyn.models.loaded import load_model
    from medsyn.pipeline import MedSynPipeline
    from medsyn.presets import PerformanceOptions

    prompt_set = read_prompt_set(prompts_path)
    seeds = [int(seed) for seed in seeds]
    if not seeds:
        raise MedSynError("no seeds to evaluate; pass --seeds 1 or more")
    if previews < 0:
        raise MedSynError(f"--previews {previews}: use 0 or more")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise MedSynError(f"--out {out_dir} is a file; give a folder")
    loaded = load_model(model, device)
    run = {"model": loaded.card.name, "weights_sha256": loaded.weights_sha256, "steps": steps, "sr_steps": sr_steps,
           "guidance": guidance, "sampler": sampler, "low_res_only": low_res_only}
    done = _finished_rows(out_dir, run, prompt_set)
    plan = [(prompt, seed) for prompt in prompt_set.prompts for seed in seeds]
    pending = [(prompt, seed) for prompt, seed in plan if (prompt.name, seed) not in done]
    pipeline = MedSynPipeline(loaded, PerformanceOptions(precision=precision, sr_tile=sr_tile))
    out_dir.mkdir(parents=True, exist_ok=True)
    for chunk in chunks(pending, batch_size):
        start = time.perf_counter()
        results = pipeline.generate_batch([prompt.report for prompt, _ in chunk], [seed for _, seed in chunk],
                                          steps=steps, sr_steps=sr_steps, guidance=guidance,
                                          low_res_only=low_res_only, sampler=sampler, callback=callback)
        seconds = (time.perf_counter() - start) / len(chunk)
        for (prompt, seed), result in zip(chunk, results):
            volume, grid = (result.lowres, result.lowres_grid) if low_res_only else (result.volume, result.grid)
            row = _sample_row(prompt, seed, run, volume, grid, result.settings, seconds)
            _append_row(out_dir / RESULTS_NAME, row)
            if seed in seeds[:previews]:
                _write_preview(out_dir / PREVIEW_DIR / f"{prompt.name}_seed{seed}.png", prompt, seed, volume, grid)
            done[(prompt.name, seed)] = row
            if on_sample is not None:
                on_sample(row)
    rows = [done[(prompt.name, seed)] for prompt, seed in plan]
    return _write_reports(out_dir, rows, prompt_set, run, seeds)


def _sample_row(prompt: EvalPrompt, seed: int, run: dict[str, Any], volume: DecodedVolume, grid: Grid,
                settings: dict[str, Any], seconds: float) -> dict[str, Any]:
    measurement = measure_volume(volume, grid)
    return {"prompt": prompt.name, "group": prompt.group, "seed": seed, "report": prompt.report, "run": run,
            "settings": {key: settings.get(key) for key in ("steps", "sr_steps", "guidance", "sampler", "precision",
                                                            "device")},
            "grid": {"shape_zyx": list(grid.shape_zyx), "spacing_xyz": list(grid.spacing_xyz)},
            "generation_s": round(seconds, 3), "metrics": dict(measurement.values), "notes": measurement.notes}


def _finished_rows(out_dir: Path, run: dict[str, Any], prompt_set: PromptSet) -> dict[tuple[str, int], dict]:
    """Rows of an earlier, interrupted run of the same settings; a torn last line (killed mid-write) is dropped."""
    path = out_dir / RESULTS_NAME
    if not path.is_file():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            rows.append(_from_json(json.loads(line)))
        except json.JSONDecodeError:
            if number < len(lines):
                raise MedSynError(f"{path} line {number} is corrupt; delete it or choose a new --out") from None
    reports = {prompt.name: prompt.report for prompt in prompt_set.prompts}
    for row in rows:
        if row["run"] != run:
            raise MedSynError(f"{out_dir} holds results of another model or other settings; choose a new --out")
        if row["prompt"] in reports and reports[row["prompt"]] != row["report"]:
            raise MedSynError(f"prompt {row['prompt']!r} changed since {path} was written; choose a new --out")
    write_text_atomic(path, "".join(json.dumps(_to_json(row)) + "\n" for row in rows))
    return {(row["prompt"], row["seed"]): row for row in rows}


def _append_row(path: Path, row: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as stream:
        stream.write(json.dumps(_to_json(row)) + "\n")


def _write_preview(path: Path, prompt: EvalPrompt, seed: int, volume: DecodedVolume, grid: Grid) -> None:
    from medsyn.io.preview import write_preview

    path.parent.mkdir(parents=True, exist_ok=True)
    write_preview(path, volume.ct_hu, volume.lobes, volume.airway, volume.vessels, grid,
                  title=f"{prompt.name}, seed {seed}: {prompt.report}")


def _write_reports(out_dir: Path, rows: list[dict[str, Any]], prompt_set: PromptSet, run: dict[str, Any],
                   seeds: list[int]) -> dict[str, Any]:
    summary = summarize(rows, prompt_set)
    effective = {**run, **{key: rows[0]["settings"][key] for key in ("steps", "sr_steps", "guidance", "sampler")}}
    document = {"run": effective, "seeds": seeds, **summary}
    write_text_atomic(out_dir / SUMMARY_NAME, json.dumps(_to_json(document), indent=2) + "\n")
    for title, names in TABLES.items():
        write_metric_plot(out_dir / PLOT_FILES[title], rows, prompt_set, names, title)
    write_text_atomic(out_dir / MARKDOWN_NAME, results_markdown(summary, effective, seeds))
    return document


def _to_json(value: Any) -> Any:
    """NaN and infinities become null, which strict JSON readers accept."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _to_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(item) for item in value]
    return value


def _from_json(row: dict[str, Any]) -> dict[str, Any]:
    """Inverse of ``_to_json`` for a result row: null metrics are NaN again."""
    row["metrics"] = {name: math.nan if value is None else value for name, value in row["metrics"].items()}
    return row
