"""Editing quality of a trained model on held-out phantoms (run by hand with the demo model; not part of the tests).

Measures, for the issue's acceptance figures:

1. anatomy fixing: Dice(given, sampled) for lobes (mean of 5) and airway at full resolution, ours (fixed at low res
   and SR) against the official behaviour (fixed at low res only), and whether the CT follows the anatomy (share of
   given lung voxels below -500 HU, of airway lumen below -700 HU);
2. inpainting: a sphere inside the lungs is erased and regenerated from the phantom's own report; BraTS-style in-mask
   SSIM / PSNR / MSE against the phantom's truth (generative-anchors §4);
3. a finding in an erased region: the right lung base of a normal phantom is erased and regenerated with and without
   "large right pleural effusion"; fluid-density voxels (-30..50 HU) there, in mL;
4. outpainting: the top and bottom slabs of a phantom are cut off and generated back (with outpainting's default
   seam blend); the mean |HU step| across the border against the mean step between neighbouring input slices, and
   between neighbouring generated slices (how much texture the generated slabs have).

    python benchmarks/editing_quality.py --model medsyn-demo --phantoms 4 --seeds 0,1,2 --out editing_quality.json
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from medsyn.editing.engine import SamplingOptions, model_grid_for, run_edit
from medsyn.editing.known import encode_known, known_regions
from medsyn.editing.masks import LabelVolume
from medsyn.editing.modes import conditioned_request, inpaint_request, outpaint_request
from medsyn.editing.resample import index_to_lps
from medsyn.editing.seam import OUTPAINT_SEAM_BLEND_MM
from medsyn.geometry import Grid
from medsyn.models.loaded import LoadedModel, load_model
from medsyn.phantom.generator import Phantom, generate_phantom
from medsyn.phantom.params import sample_params
from medsyn.phantom.reports import write_report
from medsyn.pipeline import MedSynPipeline

HELD_OUT_SEED = 7_000_000  # phantom seeds far above any training set's
FLUID_HU = (-30.0, 50.0)
RIGHT_LOBES = (3, 4, 5)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2.0 * np.logical_and(a, b).sum() / total) if total else 1.0


def lobe_dice(given: np.ndarray, sampled: np.ndarray) -> float:
    return float(np.mean([dice(given == label, sampled == label) for label in range(1, 6)]))


def held_out_phantoms(grid: Grid, count: int, findings_prob: float) -> list[tuple[Phantom, str, object]]:
    """(phantom on the model's grid, its own report, its params), seeded far from the training seeds."""
    cases = []
    for index in range(count):
        rng = np.random.default_rng(HELD_OUT_SEED + index)
        params = sample_params(rng, findings_prob)
        phantom = generate_phantom(params, grid.shape_zyx, grid.spacing_xyz, rng=HELD_OUT_SEED + index)
        cases.append((phantom, write_report(params, rng).text, params))
    return cases


def anatomy_fixing(loaded: LoadedModel, cases, seeds, options: SamplingOptions) -> dict[str, list[float]]:
    """Dice of the sampled channels with the given ones, ours vs low-res-only fixing, and HU inside the anatomy."""
    model_grid, factor = model_grid_for(loaded, low_res_only=False)
    window = tuple(loaded.card.hu_window)
    rows: dict[str, list[float]] = {key: [] for key in ("lobes_dice", "airway_dice", "lobes_dice_official",
                                                        "airway_dice_official", "lung_below_-500", "airway_below_-700",
                                                        "lung_below_-500_truth", "airway_below_-700_truth")}
    for case_index, (phantom, report, _) in enumerate(cases):
        anatomy = {role: LabelVolume(getattr(phantom, role), phantom.grid, Path(f"phantom{case_index}_{role}"))
                   for role in ("lobes", "airway", "vessels")}
        request = conditioned_request(anatomy, model_grid)
        given = {role: channel.values for role, channel in request.channels.items()}
        known_low, _ = known_regions(encode_known(request.channels, request.grid, request.grid, window), factor,
                                     lowres_ct=loaded.card.grid.lowres_ct)
        # The phantom's own CT over the same masks: partial volume keeps even the truth below 1 for thin bronchi.
        rows["lung_below_-500_truth"].append(float(np.mean(phantom.ct[given["lobes"] > 0] < -500)))
        rows["airway_below_-700_truth"].append(float(np.mean(phantom.ct[given["airway"] > 0] < -700)))
        for seed in seeds:
            sampled = run_edit(loaded, request, replace(options, report=report, seed=seed)).sampled
            official = MedSynPipeline(loaded).generate(report, seed=seed, steps=options.steps,
                                                       sr_steps=options.sr_steps, guidance=options.guidance,
                                                       known_lowres=known_low).volume
            rows["lobes_dice"].append(lobe_dice(given["lobes"], sampled.lobes))
            rows["airway_dice"].append(dice(given["airway"] > 0, sampled.airway > 0))
            rows["lobes_dice_official"].append(lobe_dice(given["lobes"], official.lobes))
            rows["airway_dice_official"].append(dice(given["airway"] > 0, official.airway > 0))
            rows["lung_below_-500"].append(float(np.mean(sampled.ct_hu[given["lobes"] > 0] < -500)))
            rows["airway_below_-700"].append(float(np.mean(sampled.ct_hu[given["airway"] > 0] < -700)))
    return rows


def ssim_map(a: torch.Tensor, b: torch.Tensor, sigma: float = 1.5, radius: int = 5) -> torch.Tensor:
    """3-D SSIM map (Gaussian window, data range 1, as torchmetrics computes it per voxel)."""
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()

    def blur(x: torch.Tensor) -> torch.Tensor:
        x = x[None, None]
        for axis in range(3):
            shape = [1, 1, 1, 1, 1]
            shape[2 + axis] = kernel.numel()
            pad = [0, 0] * 3
            pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
            x = F.conv3d(F.pad(x, pad, mode="replicate"), kernel.view(shape))
        return x[0, 0]

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2, blur(a * b) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))


def brats_metrics(truth_hu: np.ndarray, prediction_hu: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """BraTS inpainting metrics: both images masked, scaled to [0, 1] by the 0.5-99.5 percentiles of the voided input
    (HU + 1024 so the lower bound is >= 0), SSIM averaged inside the mask, MSE / PSNR on masked voxels."""
    shifted_truth, shifted_pred = truth_hu.astype(np.float64) + 1024.0, prediction_hu.astype(np.float64) + 1024.0
    low, high = np.percentile(shifted_truth[~mask], [0.5, 99.5])
    low = max(low, 0.0)

    def normalised(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.clip((x - low) / (high - low), 0.0, 1.0) * mask)

    truth, prediction = normalised(shifted_truth), normalised(shifted_pred)
    mse = float(((truth - prediction)[torch.from_numpy(mask)] ** 2).mean())
    ssim = float(ssim_map(truth, prediction)[torch.from_numpy(mask)].mean())
    return {"ssim": ssim, "psnr": float(10 * np.log10(1.0 / max(mse, 1e-12))), "mse": mse}


def sphere_in_lungs(phantom: Phantom, radius_mm: float, rng: np.random.Generator) -> np.ndarray:
    lung_voxels = np.argwhere(phantom.lobes > 0)
    centre = lung_voxels[rng.integers(len(lung_voxels))]
    grids = np.meshgrid(*(np.arange(n) for n in phantom.grid.shape_zyx), indexing="ij")
    spacing_zyx = phantom.grid.spacing_xyz[::-1]
    distance2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, spacing_zyx))
    return distance2 < radius_mm ** 2


def inpainting(loaded: LoadedModel, cases, seeds, options: SamplingOptions, radius_mm: float) -> dict[str, list]:
    rows: dict[str, list[float]] = {"ssim": [], "psnr": [], "mse": []}
    for case_index, (phantom, report, _) in enumerate(cases):
        mask = sphere_in_lungs(phantom, radius_mm, np.random.default_rng(case_index))
        request = inpaint_request(phantom.ct, phantom.grid, mask, {})
        for seed in seeds:
            result = run_edit(loaded, request, replace(options, report=report, seed=seed))
            for key, value in brats_metrics(phantom.ct, result.arrays["ct"], mask).items():
                rows[key].append(value)
    return rows


def right_lung_base(phantom: Phantom, height_share: float = 0.4, margin_mm: float = 8.0) -> np.ndarray:
    """The lower part of the right lung, grown into the pleural space and chest wall where effusions sit."""
    right = np.isin(phantom.lobes, RIGHT_LOBES)
    slices = np.nonzero(right.any(axis=(1, 2)))[0]
    top = slices.min() + height_share * (slices.max() - slices.min())
    base = right & (np.arange(right.shape[0]) <= top)[:, None, None]
    iterations = max(1, int(round(margin_mm / min(phantom.grid.spacing_xyz))))
    return ndimage.binary_dilation(base, iterations=iterations)


def finding_in_erased_region(loaded: LoadedModel, grid: Grid, count: int, seeds, options: SamplingOptions) -> dict:
    """Fluid-density mL in an erased right lung base, asked for a large right effusion vs. the normal report."""
    rows: dict[str, list[float]] = {"fluid_ml_requested": [], "fluid_ml_normal": []}
    for phantom, normal_report, params in held_out_phantoms(grid, count, findings_prob=0.0):
        effusion = replace(params, effusion_side="right", effusion_severity="large", effusion_ml=750.0)
        asked = write_report(effusion, np.random.default_rng(0)).text
        mask = right_lung_base(phantom)
        request = inpaint_request(phantom.ct, phantom.grid, mask, {})
        voxel_ml = float(np.prod(grid.spacing_xyz)) / 1000.0
        for seed in seeds:
            for key, report in (("fluid_ml_requested", asked), ("fluid_ml_normal", normal_report)):
                ct = run_edit(loaded, request, replace(options, report=report, seed=seed)).arrays["ct"]
                fluid = (ct >= FLUID_HU[0]) & (ct <= FLUID_HU[1]) & mask
                rows[key].append(float(fluid.sum()) * voxel_ml)
    return rows


def outpaint_seam(loaded: LoadedModel, cases, seeds, options: SamplingOptions, cut_mm: float) -> dict:
    """Mean |HU step| across the cut borders vs. between neighbouring input slices and between neighbouring
    generated slices, inside the body, with outpainting's default seam blend (``medsyn outpaint``'s)."""
    rows: dict[str, list[float]] = {"seam_step_hu": [], "natural_step_hu": [], "generated_step_hu": [],
                                    "input_kept": []}
    for phantom, report, _ in cases:
        cut = max(1, int(round(cut_mm / phantom.grid.spacing_xyz[2])))
        cropped = phantom.ct[cut:-cut]
        origin = index_to_lps(phantom.grid, np.array([[0.0, 0.0, float(cut)]]))[0]
        crop_grid = Grid(cropped.shape, phantom.grid.spacing_xyz, tuple(origin), phantom.grid.direction_lps)
        request = outpaint_request(cropped, crop_grid, phantom.grid)
        body = phantom.ct > -500
        for seed in seeds:
            blended = replace(options, report=report, seed=seed, seam_blend_mm=OUTPAINT_SEAM_BLEND_MM)
            ct = run_edit(loaded, request, blended).arrays["ct"].astype(np.float64)
            rows["input_kept"].append(float(np.array_equal(ct[cut:-cut], cropped)))

            def mean_step(pairs: list[tuple[int, int]]) -> float:
                return float(np.mean([np.abs(ct[a] - ct[b])[body[a] | body[b]].mean() for a, b in pairs]))

            rows["seam_step_hu"].append(mean_step([(cut - 1, cut), (len(ct) - cut - 1, len(ct) - cut)]))
            rows["natural_step_hu"].append(mean_step([(k, k + 1) for k in range(cut, len(ct) - cut - 1)]))
            generated = list(range(cut - 1)) + list(range(len(ct) - cut, len(ct) - 1))
            rows["generated_step_hu"].append(mean_step([(k, k + 1) for k in generated]))
    return rows


def summary_table(results: dict[str, dict[str, list[float]]]) -> str:
    lines = ["| measure | mean | sd | n |", "|---|---|---|---|"]
    for section, rows in results.items():
        for key, values in rows.items():
            lines.append(f"| {section}: {key} | {np.mean(values):.4g} | {np.std(values):.3g} | {len(values)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model name or folder (default: bundled demo)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--phantoms", type=int, default=4, help="held-out phantoms per measure")
    parser.add_argument("--seeds", default="0,1,2", help="sampling seeds, comma-separated")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--sr-steps", type=int, default=None)
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--erase-radius-mm", type=float, default=20.0)
    parser.add_argument("--cut-mm", type=float, default=24.0, help="slab removed at top and bottom for outpainting")
    parser.add_argument("--out", default="editing_quality.json")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    loaded = load_model(args.model, args.device)
    seeds = [int(s) for s in args.seeds.split(",")]
    options = SamplingOptions(steps=args.steps, sr_steps=args.sr_steps, guidance=args.guidance)
    grid, _ = model_grid_for(loaded, low_res_only=False)
    cases = held_out_phantoms(grid, args.phantoms, findings_prob=0.3)
    measures: dict[str, Callable[[], dict]] = {
        "anatomy": lambda: anatomy_fixing(loaded, cases, seeds, options),
        "inpaint": lambda: inpainting(loaded, cases, seeds, options, args.erase_radius_mm),
        "effusion": lambda: finding_in_erased_region(loaded, grid, args.phantoms, seeds, options),
        "outpaint": lambda: outpaint_seam(loaded, cases, seeds, options, args.cut_mm),
    }
    results = {}
    for name, measure in measures.items():
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        results[name] = measure()
    print(summary_table(results))
    Path(args.out).write_text(json.dumps({"model": loaded.card.name, "seeds": seeds, "phantoms": args.phantoms,
                                          "results": results}, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
