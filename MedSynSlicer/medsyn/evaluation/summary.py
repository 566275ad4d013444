"""Per-prompt statistics over seeds and the verdict of each comparison, from the per-sample result rows.

A comparison holds when the means differ in the expected direction beyond chance (one-sided Welch t-test,
p < ``SEPARATION_P``) and, pairing the two prompts by seed (same seed, same starting noise), more than half of the
seeds are ordered the expected way: the acceptance wording "separated means, most seeds ordered".
"""
from __future__ import annotations

import math
import warnings
from collections import Counter
from typing import Any, Sequence

import numpy as np
from scipy import stats

from medsyn.evaluation.metrics import METRICS
from medsyn.evaluation.prompts import Comparison, PromptSet

SEPARATION_P = 0.05
MOST_SEEDS = 0.5  # strictly more than this share of the paired seeds must be ordered


def metric_stats(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation and count of the finite values (NaN samples are counted apart)."""
    finite = np.asarray([value for value in values if math.isfinite(value)], dtype=np.float64)
    return {"mean": float(finite.mean()) if finite.size else math.nan,
            "sd": float(finite.std(ddof=1)) if finite.size > 1 else math.nan,
            "n": int(finite.size), "missing": len(values) - int(finite.size)}


def summarize(rows: Sequence[dict[str, Any]], prompt_set: PromptSet) -> dict[str, Any]:
    """{"prompts": name -> group, report, samples, metric stats, note counts; "comparisons": list of verdicts}."""
    prompts = {}
    for prompt in prompt_set.prompts:
        own = [row for row in rows if row["prompt"] == prompt.name]
        prompts[prompt.name] = {
            "group": prompt.group, "report": prompt.report, "samples": len(own),
            "metrics": {name: metric_stats([row["metrics"][name] for row in own]) for name in METRICS},
            "notes": dict(Counter(note for row in own for note in row["notes"])),
        }
    return {"prompts": prompts, "comparisons": [compare(rows, comparison) for comparison in prompt_set.comparisons]}


def compare(rows: Sequence[dict[str, Any]], comparison: Comparison) -> dict[str, Any]:
    """Means ± sd of both prompts, their difference, Welch's one-sided p, seeds ordered, and whether it holds."""
    by_seed = {name: {row["seed"]: row["metrics"][comparison.metric] for row in rows if row["prompt"] == name}
               for name in (comparison.first, comparison.second)}
    first, second = ([value for value in by_seed[name].values() if math.isfinite(value)]
                     for name in (comparison.first, comparison.second))
    sign = 1.0 if comparison.expect == "greater" else -1.0
    paired = [(by_seed[comparison.first][seed], by_seed[comparison.second][seed])
              for seed in by_seed[comparison.first].keys() & by_seed[comparison.second].keys()]
    paired = [(a, b) for a, b in paired if math.isfinite(a) and math.isfinite(b)]
    ordered = sum(1 for a, b in paired if sign * (a - b) > 0)
    p_value = _welch_p(first, second, comparison.expect)
    first_stats, second_stats = metric_stats(first), metric_stats(second)
    separated = p_value < SEPARATION_P  # False for NaN
    return {
        "label": comparison.label, "first": comparison.first, "second": comparison.second,
        "metric": comparison.metric, "expect": comparison.expect,
        "first_stats": first_stats, "second_stats": second_stats,
        "difference": first_stats["mean"] - second_stats["mean"],
        "welch_p": p_value, "separated": separated,
        "seeds_ordered": ordered, "seeds_paired": len(paired),
        "holds": bool(separated and paired and ordered / len(paired) > MOST_SEEDS),
    }


def _welch_p(first: list[float], second: list[float], expect: str) -> float:
    """One-sided Welch t-test p-value; NaN with fewer than two values a side. Identical constant samples give
    p = 1, and constant samples ordered the expected way p = 0 (the t statistic is ±infinite)."""
    if len(first) < 2 or len(second) < 2:
        return math.nan
    if np.var(first) == 0 and np.var(second) == 0:
        difference = (np.mean(first) - np.mean(second)) * (1 if expect == "greater" else -1)
        return 0.0 if difference > 0 else 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(first, second, equal_var=False, alternative=expect).pvalue)
