"""Atomic file replacement, so a crash or a reader never sees a half-written output file."""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``path``; it replaces ``path`` only if the block finishes.

    The temporary name ends with the target's full name, so writers that choose the format from the suffix
    (SimpleITK, pynrrd) produce the right one, and the same folder makes ``os.replace`` an atomic rename.
    """
    target = Path(path)
    temporary = target.with_name(f".{uuid.uuid4().hex[:12]}.{target.name}")
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
