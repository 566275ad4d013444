"""Training-data manifests: one row per case (CT, optional lobe/airway/vessel masks, report), checked before training.

A manifest is JSONL (one object per line) or CSV with the same columns: ``id``, ``ct``, ``lobes``, ``airway``,
``vessels`` and ``report`` (the text) or ``report_file`` (a text file). Paths are relative to the manifest. A problem
is reported with the row number and case id, because a bad row in a list of thousands must be easy to find.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..errors import MedSynError

MASK_COLUMNS = ("lobes", "airway", "vessels")


@dataclass(frozen=True)
class ManifestRow:
    """One validated case; ``masks`` maps each of MASK_COLUMNS to a file or None (unknown for this case)."""

    row: int
    case_id: str
    ct: Path
    masks: dict[str, Optional[Path]]
    report: str

    def where(self) -> str:
        return f"manifest row {self.row} ({self.case_id})"


def read_manifest(path: Path | str, check_shapes: bool = True) -> list[ManifestRow]:
    """Read and validate a manifest; ``check_shapes`` compares image headers (not voxels) of CT and masks."""
    path = Path(path)
    if not path.is_file():
        raise MedSynError(f"manifest {path} does not exist; write one as described in docs/training-data.md")
    records = _read_records(path)
    if not records:
        raise MedSynError(f"manifest {path} has no rows; add one row per case")
    rows = [_parse_row(number, record, path.parent) for number, record in records]
    seen: dict[str, int] = {}
    for row in rows:
        if row.case_id in seen:
            raise MedSynError(f"{row.where()}: id repeats manifest row {seen[row.case_id]}; give every case its own id")
        seen[row.case_id] = row.row
        if check_shapes:
            _check_shapes(row)
    return rows


def _read_records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(row number, raw fields) pairs; row numbers count data rows from 1, as a user counts them in an editor."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        return [(number, {k: v for k, v in record.items() if k is not None})
                for number, record in enumerate(reader, start=1)]
    records = []
    lines = [line for line in text.splitlines() if line.strip()]
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MedSynError(f"manifest row {number} of {path} is not valid JSON ({exc.msg}); "
                              "write one JSON object per line") from exc
        if not isinstance(record, dict):
            raise MedSynError(f"manifest row {number} of {path} is not a JSON object; write one object per line")
        records.append((number, record))
    return records


def _parse_row(number: int, record: dict[str, Any], root: Path) -> ManifestRow:
    ct_value = _text(record.get("ct"))
    case_id = _text(record.get("id")) or (Path(ct_value).name.split(".")[0] if ct_value else f"row{number}")
    where = f"manifest row {number} ({case_id})"
    if not ct_value:
        raise MedSynError(f"{where}: no 'ct' file given; every case needs a CT volume")
    masks = {name: _existing(root, _text(record.get(name)), where) if _text(record.get(name)) else None
             for name in MASK_COLUMNS}
    return ManifestRow(number, case_id, _existing(root, ct_value, where), masks, _report(record, root, where))


def _report(record: dict[str, Any], root: Path, where: str) -> str:
    text, file_name = record.get("report"), _text(record.get("report_file"))
    if file_name and _text(text):
        raise MedSynError(f"{where}: has both 'report' and 'report_file'; keep one")
    if file_name:
        text = _existing(root, file_name, where).read_text(encoding="utf-8")
    if text is None:
        raise MedSynError(f"{where}: missing report; add a 'report' text or a 'report_file' column")
    if not isinstance(text, str) or not text.strip():
        raise MedSynError(f"{where}: empty report; every case needs its findings text")
    return text.strip()


def _existing(root: Path, name: str, where: str) -> Path:
    path = Path(name) if Path(name).is_absolute() else root / name
    if not path.is_file():
        raise MedSynError(f"{where}: file {name} not found (relative paths start at the manifest's folder)")
    return path


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _check_shapes(row: ManifestRow) -> None:
    """Masks must share the CT's voxel grid size; spacing and placement are resampled later, a shape mismatch is not."""
    ct_size = _image_size(row.ct, row)
    for name, mask in row.masks.items():
        if mask is not None and _image_size(mask, row) != ct_size:
            raise MedSynError(f"{row.where()}: {name} {mask.name} has shape {_image_size(mask, row)} but the CT has "
                              f"{ct_size} (x, y, z); segment the same CT file")


def _image_size(path: Path, row: ManifestRow) -> tuple[int, ...]:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise MedSynError(f"{row.where()}: {path.name} is not a readable NIfTI or NRRD image") from None
    if reader.GetDimension() != 3:
        raise MedSynError(f"{row.where()}: {path.name} is {reader.GetDimension()}-D; export a single 3-D volume")
    return tuple(reader.GetSize())
