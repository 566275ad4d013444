"""RESULTS.md: per-prompt tables (mean ± sd over seeds) like MedSyn's Tables 2-5, comparisons, notes and plots."""
from __future__ import annotations

import math
from typing import Any, Sequence

from medsyn.evaluation.metrics import METRICS

TABLES: dict[str, tuple[str, ...]] = {
    "Findings measured on the generated CT": ("effusion_right_ml", "effusion_left_ml", "ctr", "laa950_percent"),
    "Volumes (lungs from the CT and from the lobe channel; lobes, airway, vessels from the mask channels)": (
        "lung_ct_ml", "lung_mask_ml", "lobe_LUL_ml", "lobe_LLL_ml", "lobe_RUL_ml", "lobe_RML_ml", "lobe_RLL_ml",
        "airway_ml", "vessel_ml"),
    "Mask/image consistency (generated channels vs. a threshold segmentation of the generated CT)": (
        "dice_lungs", "dice_airway", "airway_ct_coverage", "airway_air_fraction", "vessel_blood_fraction"),
}
PLOT_FILES = {title: f"plots/{name}.png" for title, name in zip(TABLES, ("findings", "volumes", "consistency"))}

_METHOD = (
    "Metrics come from `medsyn.evaluation` (thresholds and connected components, no pretrained networks): pleural "
    "fluid = voxels of -20..30 HU against a lung with no lung behind them; CTR = widest axial heart diameter above "
    "the right hemidiaphragm / widest internal thoracic diameter; %LAA-950 over the lungs segmented from the CT "
    "(below -400 HU, central airways removed). Dice airway compares the airway channel with the tree visible in the "
    "CT, which misses thin bronchi, so it stays below 1 even for perfect masks; \"CT airway covered\" is the share "
    "of that visible tree inside the channel.")


def format_stat(stat: dict[str, Any], digits: int) -> str:
    """``mean ± sd``; a suffix ``(k/n)`` when only k of n samples could be measured; ``n/a`` when none."""
    if stat["n"] == 0:
        return "n/a"
    text = f"{stat['mean']:.{digits}f}"
    if math.isfinite(stat["sd"]):
        text += f" ± {stat['sd']:.{digits}f}"
    if stat["missing"]:
        text += f" ({stat['n']}/{stat['n'] + stat['missing']})"
    return text


def results_markdown(summary: dict[str, Any], run: dict[str, Any], seeds: Sequence[int]) -> str:
    """The whole RESULTS.md text."""
    weights = ", ".join(f"{stage} `{sha[:12]}`" for stage, sha in run["weights_sha256"].items())
    lines = ["# MedSyn evaluation", "",
             f"Model `{run['model']}` (weights sha256 {weights}), "
             f"{len(seeds)} seeds ({seeds[0]}…{seeds[-1]}) per prompt, measured on the "
             f"{'low-res' if run['low_res_only'] else 'super-resolved'} grid; sampler {run['sampler']}, "
             f"steps {run['steps']}, SR steps {run['sr_steps']}, guidance {run['guidance']}.", "", _METHOD, ""]
    for title, names in TABLES.items():
        lines += [f"## {title}", "", *_prompt_table(summary["prompts"], names), "",
                  f"![{title}]({PLOT_FILES[title]})", ""]
    if summary["comparisons"]:
        lines += ["## Comparisons", "", *_comparison_table(summary["comparisons"]), ""]
    notes = [(name, note, count, prompt["samples"]) for name, prompt in summary["prompts"].items()
             for note, count in prompt["notes"].items()]
    if notes:
        lines += ["## Notes", ""] + [f"- `{name}`: {note} ({count} of {samples} samples)"
                                     for name, note, count, samples in notes] + [""]
    lines += ["## Reports", ""] + [f"- `{name}`: {' '.join(prompt['report'].split())}"
                                   for name, prompt in summary["prompts"].items()]
    return "\n".join(lines) + "\n"


def _prompt_table(prompts: dict[str, Any], names: Sequence[str]) -> list[str]:
    header = ["Prompt", "Group", "n"] + [METRICS[name].label for name in names]
    rows = [[f"`{prompt_name}`", prompt["group"], str(prompt["samples"])]
            + [format_stat(prompt["metrics"][name], METRICS[name].digits) for name in names]
            for prompt_name, prompt in prompts.items()]
    return _table(header, rows)


def _comparison_table(comparisons: Sequence[dict[str, Any]]) -> list[str]:
    header = ["Comparison", "Metric", "First", "Second", "Difference", "Welch p (one-sided)", "Seeds ordered",
              "Holds"]
    rows = []
    for result in comparisons:
        digits = METRICS[result["metric"]].digits
        p_value = result["welch_p"]
        rows.append([f"`{result['label']}`", METRICS[result["metric"]].label,
                     format_stat(result["first_stats"], digits), format_stat(result["second_stats"], digits),
                     f"{result['difference']:+.{digits}f}" if math.isfinite(result["difference"]) else "n/a",
                     f"{p_value:.3g}" if math.isfinite(p_value) else "n/a",
                     f"{result['seeds_ordered']}/{result['seeds_paired']}", "yes" if result["holds"] else "no"])
    return _table(header, rows)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(row) + " |"
                                                                            for row in rows]
