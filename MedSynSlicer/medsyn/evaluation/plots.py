"""Strip-and-box plots of each metric by prompt: every seed is a dot, so a reader sees spread and overlap directly.

Drawn with matplotlib's object API on the Agg canvas (never pyplot), headless like the preview PNGs.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medsyn.evaluation.metrics import METRICS
from medsyn.evaluation.prompts import PromptSet
from medsyn.io.atomic import atomic_write

_PANEL_INCHES = (3.2, 3.0)
_COLUMNS = 3


def write_metric_plot(path: Path, rows: Sequence[dict[str, Any]], prompt_set: PromptSet,
                      names: Sequence[str], title: str) -> Path:
    """One panel per metric in ``names``: a box and the jittered per-seed values for every prompt, coloured by
    group; NaN samples are left out (the tables count them)."""
    groups = sorted({prompt.group for prompt in prompt_set.prompts})
    colours = {group: f"C{index % 10}" for index, group in enumerate(groups)}
    panel_rows = math.ceil(len(names) / _COLUMNS)
    width = max(_PANEL_INCHES[0], 0.45 * len(prompt_set.prompts))
    figure = Figure(figsize=(width * min(len(names), _COLUMNS) + 1.2, _PANEL_INCHES[1] * panel_rows + 0.8), dpi=100,
                    layout="constrained")
    FigureCanvasAgg(figure)
    rng = np.random.default_rng(0)  # jitter only; fixed so the plot is reproducible
    for index, name in enumerate(names):
        axes = figure.add_subplot(panel_rows, _COLUMNS, index + 1)
        for position, prompt in enumerate(prompt_set.prompts):
            values = [row["metrics"][name] for row in rows if row["prompt"] == prompt.name]
            values = [value for value in values if math.isfinite(value)]
            if not values:
                continue
            axes.boxplot([values], positions=[position], widths=0.6, showfliers=False)
            axes.scatter(position + rng.uniform(-0.15, 0.15, len(values)), values, s=12,
                         color=colours[prompt.group], zorder=3)
        axes.set_title(METRICS[name].label, fontsize=9)
        axes.set_xticks(range(len(prompt_set.prompts)))
        axes.set_xticklabels([prompt.name for prompt in prompt_set.prompts], rotation=60, ha="right", fontsize=7)
        axes.tick_params(axis="y", labelsize=7)
    if len(groups) > 1:
        handles = [figure.axes[0].scatter([], [], s=12, color=colours[group]) for group in groups]
        figure.legend(handles, [group or "(no group)" for group in groups], loc="outside right upper", fontsize=7)
    figure.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as temporary:
        figure.savefig(temporary, format="png")
    return path
