"""One benchmark result per row, and the Markdown / JSON files they are written to."""
from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch

COLUMNS = ("benchmark", "measured", "device", "dtype", "steps", "shape", "seconds", "peak_mib", "result")


@dataclass
class Row:
    """``measured`` says what the number is; ``result`` holds derived values (ratios, agreement) or why it was
    skipped."""

    benchmark: str
    measured: str
    device: str
    dtype: str = "-"
    steps: str = "-"
    shape: str = "-"
    seconds: Optional[float] = None
    peak_mib: Optional[float] = None
    result: str = ""


def machine() -> str:
    """CPU model, cores used by torch, torch version."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def shape_text(shape) -> str:
    return "×".join(str(n) for n in shape)


def _cell(row: Row, column: str) -> str:
    value = getattr(row, column)
    if value is None:
        return "–"
    if column == "seconds":
        return f"{value:.3g}"
    if column == "peak_mib":
        return f"{value:.0f}"
    return str(value).replace("|", "/")


def markdown_table(rows: list[Row]) -> str:
    header = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    return header + "".join("| " + " | ".join(_cell(row, c) for c in COLUMNS) + " |\n" for row in rows)


def write_results(out_dir: Path, title: str, mode: str, rows: list[Row], notes: list[str]) -> tuple[Path, Path]:
    """``RESULTS.md`` (header, notes, table) and ``results.json`` (the same rows) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = (f"# {title}\n\nMode: {mode}. Machine: {machine()}.\n\n" + "".join(f"- {note}\n" for note in notes)
            + "\n" + markdown_table(rows))
    markdown = out_dir / "RESULTS.md"
    markdown.write_text(text, encoding="utf-8")
    data = {"mode": mode, "machine": machine(), "notes": notes, "rows": [asdict(row) for row in rows]}
    json_path = out_dir / "results.json"
    json_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return markdown, json_path
