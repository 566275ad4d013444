"""``medsyn phantom``: write a training-ready dataset of phantoms (volumes, report, params + truth, manifest)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from medsyn.errors import MedSynError
from medsyn.io.atomic import atomic_write
from medsyn.io.volumes import write_volume
from medsyn.phantom.generator import generate_phantom
from medsyn.phantom.params import sample_params
from medsyn.phantom.reports import write_report
from medsyn.phantom.texture import independent_streams

MANIFEST_NAME = "manifest.jsonl"
VOLUME_FILES = {"ct": "ct.nii.gz", "lobes": "lobes.nii.gz", "airway": "airway.nii.gz", "vessels": "vessels.nii.gz"}


def run_phantom(n: int, seed: int, size: Union[int, Sequence[int]], spacing: Optional[Union[float, Sequence[float]]],
                out_dir: Union[str, Path]) -> None:
    """Write ``n`` cases ``case_XXXX/`` and a ``manifest.jsonl`` (paths relative to it) into ``out_dir``.

    Case ``i`` depends only on (``seed``, ``i``), so a dataset can be extended or regenerated case by case.
    """
    if n < 1:
        raise MedSynError(f"--n {n}: ask for at least one phantom")
    if seed < 0:
        raise MedSynError(f"--seed {seed}: use a non-negative seed")
    shape = (size,) * 3 if isinstance(size, int) else tuple(size)
    spacing_xyz = (spacing,) * 3 if isinstance(spacing, (int, float)) else spacing
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(n):
        case_id = f"case_{index:04d}"
        row, impression = _write_case(out, case_id, np.random.default_rng([seed, index]), shape, spacing_xyz)
        rows.append(row)
        print(f"{case_id}: {impression}", flush=True)
    with atomic_write(out / MANIFEST_NAME) as temporary:
        temporary.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def _write_case(out: Path, case_id: str, rng: np.random.Generator, shape: Sequence[int],
                spacing_xyz: Optional[Sequence[float]]) -> tuple[dict[str, str], str]:
    """Write one case folder; return its manifest row and its impression (for the progress line)."""
    params_rng, image_rng, report_rng = independent_streams(rng, 3)
    params = sample_params(params_rng)
    phantom = generate_phantom(params, shape, spacing_xyz, image_rng)
    report = write_report(params, report_rng)
    folder = out / case_id
    folder.mkdir(exist_ok=True)
    for name, file_name in VOLUME_FILES.items():
        write_volume(folder / file_name, getattr(phantom, name), phantom.grid, description=f"MedSyn phantom {name}")
    (folder / "report.txt").write_text(report.text + "\n", encoding="utf-8")
    record = {"id": case_id, "params": params.to_dict(), "truth": phantom.truth, "grid": phantom.grid.to_dict()}
    (folder / "params.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    # The manifest reader takes report text under "report" and a file under "report_file".
    row = {"id": case_id, **{name: f"{case_id}/{file_name}" for name, file_name in VOLUME_FILES.items()},
           "report_file": f"{case_id}/report.txt"}
    return row, report.impression
