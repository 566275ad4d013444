"""``<run>/loss.jsonl`` (one row per step: loss and the cases each rank read) and its plot ``loss.png``.

Rows reach the file at checkpoints, so after a crash the file may run ahead of the last checkpoint; a resumed run cuts
it back to the checkpoint's step first, and the rows it then appends equal those of an uninterrupted run.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..io.atomic import atomic_write

LOSS_FILE, PLOT_FILE = "loss.jsonl", "loss.png"


class LossLog:
    """Rows of one run, starting from those already on disk up to ``resume_step``."""

    def __init__(self, run_dir: Path, resume_step: int) -> None:
        self.path = Path(run_dir) / LOSS_FILE
        self.rows = [row for row in read_loss_log(self.path) if row["step"] <= resume_step]
        with atomic_write(self.path) as partial:
            partial.write_text("".join(json.dumps(row) + "\n" for row in self.rows), encoding="utf-8")
        self._flushed = len(self.rows)

    def add(self, step: int, loss: float, cases: list[list[str]]) -> None:
        self.rows.append({"step": step, "loss": loss, "cases": cases})

    def flush(self) -> float:
        """Append the rows since the last flush; returns their mean loss (NaN when there were none)."""
        pending = self.rows[self._flushed:]
        with self.path.open("a", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in pending)
        self._flushed = len(self.rows)
        return sum(row["loss"] for row in pending) / len(pending) if pending else float("nan")

    def plot(self, title: str) -> Path:
        """Loss per step (log scale) with a moving average, for a quick look at convergence."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [row["step"] for row in self.rows]
        losses = np.asarray([row["loss"] for row in self.rows], dtype=np.float64)
        window = max(1, len(losses) // 50)
        cumulative = np.concatenate([[0.0], np.cumsum(losses)])
        ends = np.arange(1, len(losses) + 1)
        starts = np.maximum(0, ends - window)
        smooth = (cumulative[ends] - cumulative[starts]) / (ends - starts)
        figure, axes = plt.subplots(figsize=(7, 4))
        axes.plot(steps, losses, lw=0.6, alpha=0.5, label="loss")
        axes.plot(steps, smooth, lw=1.5, label=f"mean of {window}")
        axes.set(xlabel="step", ylabel="x0 MSE", title=title, yscale="log")
        axes.legend()
        figure.tight_layout()
        target = self.path.with_name(PLOT_FILE)
        with atomic_write(target) as partial:
            figure.savefig(partial, dpi=100)
        plt.close(figure)
        return target


def read_loss_log(path: Path) -> list[dict[str, Any]]:
    """Rows of a loss.jsonl; a line cut short by a crash is dropped."""
    if not Path(path).is_file():
        return []
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
