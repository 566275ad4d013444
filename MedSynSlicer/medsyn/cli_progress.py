"""Terminal progress for long runs: a tqdm bar per stage on a TTY, plain 'stage step/total' lines otherwise."""
from __future__ import annotations

import sys
from typing import Optional

from .progress import ProgressEvent


class TerminalProgress:
    """Callable progress sink; one bar per diffusion stage (lowres, sr) so users see both stages advance."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._bar = None
        self._stage: Optional[str] = None

    def __call__(self, event: ProgressEvent) -> None:
        if self.tty:
            self._update_bar(event)
        elif event.step == event.total or event.step == 1 or event.step % 10 == 0:
            print(f"{event.stage} {event.step}/{event.total}", file=self.stream, flush=True)

    def _update_bar(self, event: ProgressEvent) -> None:
        from tqdm import tqdm

        if event.stage != self._stage:
            self.close()
            self._bar = tqdm(total=event.total, desc=event.stage, file=self.stream, leave=True)
            self._stage = event.stage
        self._bar.n = event.step
        self._bar.refresh()
        if event.step == event.total:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar, self._stage = None, None
