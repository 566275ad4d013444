"""Folders that appear complete or not at all: prepared data, checkpoints and exported models are built beside their
target and renamed into place, so a run killed at any moment never leaves a half-written one behind a valid name."""
from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """Yield a hidden partial folder beside ``target``; if the block finishes it replaces ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.partial-*"):  # left by a writer that was killed
        shutil.rmtree(stale, ignore_errors=True)
    partial = target.with_name(f".{target.name}.partial-{uuid.uuid4().hex[:8]}")
    partial.mkdir()
    try:
        yield partial
        if target.exists():
            shutil.rmtree(target)
        os.replace(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
