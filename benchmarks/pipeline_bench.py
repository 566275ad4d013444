"""End-to-end benchmarks: samplers and batching through the real pipeline, the demo model's CLI time, and inpainting
edits against a full generation. Rows needing the demo model or the editing engine say so when those are absent."""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from medsyn import api
from medsyn.models.loaded import LoadedModel
from medsyn.pipeline import MedSynPipeline
from rows import Row, shape_text

REPO = Path(__file__).resolve().parents[1]
DEMO_MODEL = REPO / "Resources" / "Models" / "medsyn-demo-phantom"
REPORT = "Moderate right pleural effusion. Mild cardiomegaly."
# (sampler, low-res steps, SR steps): the official DDIM setting and the fast sampler's candidate.
SAMPLER_SETTINGS = (("ddim", 50, 20), ("dpmpp2m", 20, 10))
EDIT_CUBES_MM = (32, 64)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _model_shape(loaded: LoadedModel) -> str:
    return shape_text(loaded.card.grid.shape_zyx)


def sampler_rows(loaded: LoadedModel, label: str) -> list[Row]:
    """DDIM-50/20 vs DPM-Solver++ 20/10 through the pipeline (one volume each, model already loaded)."""
    pipeline, rows, seconds = MedSynPipeline(loaded), [], {}
    pipeline.generate(REPORT, seed=0, steps=1, sr_steps=1)  # warm-up: text features, kernels
    for sampler, steps, sr_steps in SAMPLER_SETTINGS:
        seconds[sampler] = _timed(lambda: pipeline.generate(REPORT, seed=0, steps=steps, sr_steps=sr_steps,
                                                            sampler=sampler))
        rows.append(Row(f"sampler, {label}", "wall time of MedSynPipeline.generate (model loaded)", "cpu", "fp32",
                        f"{sampler} {steps}+{sr_steps}", _model_shape(loaded), seconds[sampler]))
    rows[-1].result = (f"{seconds['dpmpp2m'] / seconds['ddim']:.2f}× the DDIM time; metric agreement: "
                       "benchmarks/SAMPLERS.md (benchmarks/sampler_agreement.py)")
    return rows


def batch_rows(loaded: LoadedModel, label: str, count: int = 4) -> list[Row]:
    """``count`` volumes as one batch vs one by one (same seeds, same outputs)."""
    pipeline = MedSynPipeline(loaded)
    reports, seeds = [REPORT] * count, list(range(count))
    alone = _timed(lambda: [pipeline.generate(r, seed=s) for r, s in zip(reports, seeds)])
    batched = _timed(lambda: pipeline.generate_batch(reports, seeds))
    steps = f"ddim {loaded.card.lowres.steps}+{loaded.card.sr.steps}"
    return [Row(f"batch of {count}, {label}", "wall time for all volumes", "cpu", "fp32", steps,
                _model_shape(loaded), alone, result="one at a time"),
            Row(f"batch of {count}, {label}", "wall time for all volumes", "cpu", "fp32", steps,
                _model_shape(loaded), batched, result=f"batched: {batched / alone:.2f}× the one-at-a-time time")]


def demo_cli_row(out_dir: Path) -> Row:
    """The README's main command, timed as a user runs it (interpreter start, model load, both stages, writing)."""
    command = [sys.executable, "-m", "medsyn.cli", "generate", "--report", REPORT, "--model", str(DEMO_MODEL),
               "--device", "cpu", "--seed", "0", "--out", str(out_dir)]
    seconds = _timed(lambda: subprocess.run(command, check=True, capture_output=True))
    return Row("demo model, CLI end to end", "wall time of `medsyn generate` (fresh process)", "cpu", "fp32",
               "model card defaults", "-", seconds)


def _cube_mask(ct_path: Path, side_mm: float, out_path: Path) -> None:
    """A cube of ``side_mm`` centred in the CT, on the CT's grid."""
    image = sitk.ReadImage(str(ct_path))
    size = np.array(image.GetSize()[::-1])
    half = np.ceil(side_mm / 2 / np.array(image.GetSpacing()[::-1])).astype(int)
    centre = size // 2
    mask = np.zeros(size, dtype=np.uint8)
    mask[tuple(slice(max(c - h, 0), c + h) for c, h in zip(centre, half))] = 1
    out = sitk.GetImageFromArray(mask)
    out.CopyInformation(image)
    sitk.WriteImage(out, str(out_path))


def edit_rows(loaded: LoadedModel, work: Path) -> list[Row]:
    """Inpainting a centred 32 mm and 64 mm cube vs generating the whole volume, same model and settings."""
    try:
        from medsyn.editing import api as editing
    except ImportError:
        return [Row("inpainting edit", "skipped", "cpu", result="skipped: medsyn.editing.api is not available")]
    full = _timed(lambda: api.generate(REPORT, work / "full", loaded=loaded, seed=0))
    rows = [Row("full generation (edit baseline)", "wall time of api.generate (model loaded)", "cpu", "fp32",
                "model card defaults", _model_shape(loaded), full)]
    for side in EDIT_CUBES_MM:
        mask = work / f"cube{side}.nii.gz"
        _cube_mask(work / "full" / "ct.nii.gz", side, mask)
        seconds = _timed(lambda: editing.inpaint(work / "full" / "ct.nii.gz", mask, work / f"edit{side}",
                                                 report=REPORT, loaded=loaded, seed=1))
        rows.append(Row(f"inpaint {side} mm cube", "wall time of editing.api.inpaint (model loaded)", "cpu", "fp32",
                        "model card defaults", _model_shape(loaded), seconds,
                        result=f"{seconds / full:.2f}× a full generation"))
    return rows


def tiny_rows(tiny_folder: Path) -> list[Row]:
    """On one thread: for a network this small, a second thread only adds waiting at every parallel region (badly so
    on a shared CPU)."""
    loaded = api.load_model(str(tiny_folder), device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return sampler_rows(loaded, "tiny random model, 1 thread") + batch_rows(loaded, "tiny random model, 1 thread")
    finally:
        torch.set_num_threads(threads)


def demo_rows() -> list[Row]:
    if not (DEMO_MODEL / "model_card.json").is_file():
        return [Row("demo model", "skipped", "cpu", result=f"skipped: {DEMO_MODEL.relative_to(REPO)} is not present "
                                                           "(being trained)")]
    loaded = api.load_model(str(DEMO_MODEL), device="cpu")
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        return ([demo_cli_row(work / "cli")] + sampler_rows(loaded, "demo model") + edit_rows(loaded, work))


def build_tiny(folder: Path) -> Path:
    """The tests' tiny random-weight model (a few thousand parameters)."""
    sys.path.insert(0, str(REPO / "Testing" / "Python"))
    from tiny_model import build_tiny_model

    return build_tiny_model(folder)

