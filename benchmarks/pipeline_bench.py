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
from medsyn.codec import decode_volume
from medsyn.models.loaded import LoadedModel
from medsyn.pipeline import MedSynPipeline, model_grids, seed_noise
from medsyn.presets import PerformanceOptions
from measure import measure
from rows import Row, shape_text

REPO = Path(__file__).resolve().parents[1]
DEMO_MODEL = REPO / "Resources" / "Models" / "medsyn-demo-phantom"
REPORT = "Moderate right pleural effusion. Mild cardiomegaly."
# (sampler, low-res steps, SR steps): the official DDIM setting and the fast sampler's candidate.
SAMPLER_SETTINGS = (("ddim", 50, 20), ("dpmpp2m", 20, 10))
EDIT_CUBES_MM = (32, 64)
DEMO_SR_TILE = (128, 56, 56)  # 3 × 3 in-plane windows on the demo's 128³ grid, as in the official-size rows


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


def tiled_sr_rows(loaded: LoadedModel) -> list[Row]:
    """The trained demo SR stage sampled whole and in tiles from the same low-res volume and noise: the agreement a
    user sees, which random weights (the official-size rows) overstate."""
    grid, lowres_grid = model_grids(loaded)
    x_low = MedSynPipeline(loaded).generate(REPORT, seed=0, low_res_only=True).lowres_tensor
    _, noise = seed_noise([0], lowres_grid.shape_zyx, grid.shape_zyx)
    steps, outputs, rows = loaded.card.sr.steps, {}, []
    for label, tile in (("whole volume", "whole"), ("9 tiles", DEMO_SR_TILE)):
        pipeline = MedSynPipeline(loaded, PerformanceOptions(precision="fp32", sr_tile=tile))

        def run() -> None:
            outputs[label] = pipeline.super_resolve(x_low, noise, steps)[0]

        taken = measure(run, torch.device("cpu"))
        rows.append(Row(f"SR sampling, demo model, {label}", "wall time + peak RSS added of the SR stage (trained "
                        "weights)", "cpu", "fp32", f"ddim {steps}", shape_text(grid.shape_zyx), taken.seconds,
                        None if taken.peak_bytes is None else taken.peak_bytes / 2**20))
    whole, tiled = outputs["whole volume"], outputs["9 tiles"]
    hu = [decode_volume(x[0].numpy(), loaded.card.hu_window).ct_hu.astype(np.float32) for x in (whole, tiled)]
    relative = float((tiled - whole).norm() / whole.norm())
    peak = "" if rows[0].peak_mib is None else f"peak {rows[1].peak_mib / rows[0].peak_mib:.2f}× whole; "
    rows[1].result = (f"{peak}vs whole: rel L2 {relative:.3f}, mean abs ΔHU {np.abs(hu[1] - hu[0]).mean():.1f}, "
                      f"voxels off by > 100 HU {np.mean(np.abs(hu[1] - hu[0]) > 100) * 100:.1f} %")
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
        return ([demo_cli_row(work / "cli")] + sampler_rows(loaded, "demo model") + edit_rows(loaded, work)
                + tiled_sr_rows(loaded))


def build_tiny(folder: Path) -> Path:
    """The tests' tiny random-weight model (a few thousand parameters)."""
    sys.path.insert(0, str(REPO / "Testing" / "Python"))
    from tiny_model import build_tiny_model

    return build_tiny_model(folder)

