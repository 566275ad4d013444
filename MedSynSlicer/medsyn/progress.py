"""Progress reporting and cooperative cancellation shared by the sampler, pipeline, CLI and Slicer worker."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Optional


class Cancelled(Exception):
    """Raised at the next sampler step after a cancel was requested."""


@dataclass(frozen=True)
class ProgressEvent:
    """One finished unit of work: ``step`` of ``total`` in ``stage`` (e.g. "lowres", "sr", "write")."""

    stage: str
    step: int
    total: int


ProgressCallback = Callable[[ProgressEvent], None]


class CancelToken:
    """Thread-safe flag checked by the sampler between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled by user")


def report(callback: Optional[ProgressCallback], stage: str, step: int, total: int,
           cancel: Optional[CancelToken] = None) -> None:
    """Send one progress event and honour a pending cancel request."""
    if callback is not None:
        callback(ProgressEvent(stage, step, total))
    if cancel is not None:
        cancel.raise_if_cancelled()
