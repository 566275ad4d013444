"""Provenance sidecar: how a synthetic volume was made, and the flag that it is synthetic."""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from medsyn import __version__
from medsyn.io.atomic import atomic_write

SOFTWARE_NAME = "MedSynSlicer"


def build_provenance(**fields: Any) -> dict[str, Any]:
    """Provenance record: ``synthetic: true``, software, UTC creation time, then the caller's fields.

    Callers may supply their own ``software`` or ``created_utc``, but not ``synthetic``: every record must say it.
    """
    if "synthetic" in fields:
        raise ValueError("'synthetic' is always true and set by build_provenance itself")
    return {
        "synthetic": True,
        "software": {"name": SOFTWARE_NAME, "version": __version__},
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **fields,
    }


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented UTF-8 JSON; paths and numpy scalars become plain JSON values, NaN is refused."""
    text = json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False, default=_to_json)
    return write_text_atomic(path, text + "\n")


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Replace ``path`` with UTF-8 ``text`` in one step, so readers never see a partial file."""
    target = Path(path)
    with atomic_write(target) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return target


def _to_json(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
