"""Client side of the worker protocol (docs/worker-protocol.md): start, talk to, watch and restart the backend process.

The Slicer UI must never block, so a background thread reads the worker's events into a queue and the UI drains it
with ``poll()`` from a QTimer. Liveness is judged by heartbeats: a worker that exits, or stays silent longer than
``heartbeat_timeout_s``, is reported in one line and replaced by a fresh one on the next request. The transport (how
lines travel) is separate from the protocol, so a worker on another host can be plugged in later.
"""
from __future__ import annotations

import collections
import itertools
import json
import os
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Protocol, Sequence

WORKER_MODULE = "medsyn.worker"
STDERR_LINES_KEPT = 200


class Transport(Protocol):
    """A bidirectional line channel to one worker instance."""

    def send(self, line: str) -> None: ...

    def lines(self) -> Iterator[str]:
        """Blocking iterator over incoming lines; ends when the worker goes away."""

    def alive(self) -> bool: ...

    def describe_exit(self) -> str:
        """Why the worker is gone, for the one-line error (exit code, last log line)."""

    def close(self, grace_s: float = 3.0) -> None:
        """Stop the worker for good: gracefully within ``grace_s``, then by force."""


class SubprocessTransport:
    """A local worker: ``<python> -m medsyn.worker`` with the medsyn package's folder on PYTHONPATH.

    ``python`` is PythonSlicer inside Slicer (or a configured interpreter) and sys.executable in tests.
    """

    def __init__(self, python: str, package_root: Path, args: Sequence[str] = (),
                 env: Optional[dict[str, str]] = None) -> None:
        environment = dict(os.environ if env is None else env)
        environment["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(package_root), environment.get("PYTHONPATH", "")) if p)
        environment["PYTHONUNBUFFERED"] = "1"
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_LINES_KEPT)
        self._process = subprocess.Popen(
            [python, "-m", WORKER_MODULE, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=environment, text=True, encoding="utf-8", errors="replace", bufsize=1,
            creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
        threading.Thread(target=self._drain_stderr, name="medsyn-worker-stderr", daemon=True).start()

    @property
    def pid(self) -> int:
        return self._process.pid

    def _drain_stderr(self) -> None:
        for line in self._process.stderr:
            self.stderr_tail.append(line.rstrip("\n"))

    def send(self, line: str) -> None:
        self._process.stdin.write(line + "\n")
        self._process.stdin.flush()

    def lines(self) -> Iterator[str]:
        return iter(self._process.stdout)

    def alive(self) -> bool:
        return self._process.poll() is None

    def describe_exit(self) -> str:
        code = self._process.poll()
        last = next((line for line in reversed(self.stderr_tail) if line.strip()), "")
        status = "is not responding" if code is None else f"exited with code {code}"
        return f"{status}{': ' + last.strip() if last else ''}"

    def close(self, grace_s: float = 3.0) -> None:
        """Close stdin (the worker exits at end of input); kill the process tree if it is still there after
        ``grace_s`` (PythonSlicer is a launcher, so the Python process is its child)."""
        try:
            self._process.stdin.close()
        except OSError:
            pass
        try:
            self._process.wait(grace_s)
        except subprocess.TimeoutExpired:
            _kill_tree(self._process)


def _kill_tree(process: subprocess.Popen) -> None:
    for child in _children(process.pid):
        try:
            child.kill()
        except Exception:  # noqa: BLE001 - already gone
            pass
    process.kill()
    process.wait()


def _children(pid: int) -> list:
    """Descendant processes via psutil when Slicer has it; without it only the direct child can be killed."""
    try:
        import psutil

        return psutil.Process(pid).children(recursive=True)
    except Exception:  # noqa: BLE001 - psutil missing or the process already gone
        return []


EventHandler = Callable[[dict[str, Any]], None]
FINAL_EVENTS = ("result", "error", "cancelled")


class WorkerClient:
    """Sends requests with ids and hands back the worker's events, detecting a dead or hung worker."""

    def __init__(self, transport_factory: Callable[[], Transport], heartbeat_timeout_s: float = 30.0) -> None:
        self._factory = transport_factory
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self._transport: Optional[Transport] = None
        self._generation = 0
        self._events: "queue.Queue[tuple[int, dict[str, Any]]]" = queue.Queue()
        self._ids = itertools.count(1)
        self.pending: dict[str, Optional[EventHandler]] = {}  # request id -> its handler, until its final event
        self._last_seen = 0.0

    @property
    def running(self) -> bool:
        return self._transport is not None

    @property
    def transport(self) -> Optional[Transport]:
        return self._transport

    def request(self, op: str, params: Optional[dict[str, Any]] = None,
                on_event: Optional[EventHandler] = None) -> str:
        """Send one request (starting the worker if needed) and return its id; ``on_event`` gets every event of
        this request during ``poll()``, including the error reporting a dead or hung worker."""
        self._ensure_started()
        request_id = f"r{next(self._ids)}"
        self._send({"id": request_id, "op": op, "params": params or {}})
        self.pending[request_id] = on_event
        return request_id

    def cancel(self, request_id: str) -> None:
        """Ask the worker to stop ``request_id`` at its next step; a ``cancelled`` event follows."""
        if self._transport is not None and request_id in self.pending:
            self._send({"id": f"r{next(self._ids)}", "op": "cancel", "params": {"target": request_id}})

    def poll(self) -> list[dict[str, Any]]:
        """Deliver the events received since the last call (heartbeats excluded) to their requests' handlers and
        return them; a dead or hung worker yields one error per pending request. Call it from the GUI thread."""
        events = []
        while True:
            try:
                generation, event = self._events.get_nowait()
            except queue.Empty:
                break
            if generation != self._generation:
                continue  # late line from a worker that was already replaced
            self._last_seen = time.monotonic()
            if event.get("event") != "heartbeat":
                events.append(event)
        events += self._check_health()
        for event in events:
            self._deliver(event)
        return events

    def _deliver(self, event: dict[str, Any]) -> None:
        request_id = event.get("id")
        if request_id not in self.pending:
            return
        handler = self.pending[request_id]
        if event.get("event") in FINAL_EVENTS:
            del self.pending[request_id]
        if handler is not None:
            handler(event)

    def wait_for(self, request_id: str, timeout_s: float, interval_s: float = 0.02) -> dict[str, Any]:
        """Poll until ``request_id`` has a final event and return it (scripts and tests; the UI polls with a timer)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for event in self.poll():
                if event.get("id") == request_id and event.get("event") in FINAL_EVENTS:
                    return event
            time.sleep(interval_s)
        raise TimeoutError(f"no answer to {request_id} within {timeout_s:.0f} s")

    def shutdown(self) -> None:
        """Stop the worker (Slicer exit, module cleanup); the next request starts a fresh one."""
        if self._transport is not None:
            try:
                self._send({"id": f"r{next(self._ids)}", "op": "shutdown", "params": {}})
            except OSError:
                pass
            self._discard(None)

    # -- internals -------------------------------------------------------------------------------------------------

    def _ensure_started(self) -> None:
        if self._transport is not None and self._transport.alive():
            return
        self._discard(None)
        self._transport = self._factory()
        self._last_seen = time.monotonic()
        threading.Thread(target=self._read, args=(self._transport, self._generation), name="medsyn-worker-reader",
                         daemon=True).start()

    def _send(self, message: dict[str, Any]) -> None:
        self._transport.send(json.dumps(message))

    def _read(self, transport: Transport, generation: int) -> None:
        for line in transport.lines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # the worker keeps stray output off this stream; ignore anything that slips through
            if isinstance(event, dict):
                self._events.put((generation, event))

    def _check_health(self) -> list[dict[str, Any]]:
        transport = self._transport
        if transport is None:
            return []
        if not transport.alive():
            reason = f"the MedSyn worker {transport.describe_exit()}"
        elif time.monotonic() - self._last_seen > self.heartbeat_timeout_s:
            reason = f"the MedSyn worker sent nothing for {self.heartbeat_timeout_s:.0f} s and was stopped"
        else:
            return []
        message = f"{reason}; it restarts on the next Apply"
        failed = [{"event": "error", "id": request_id, "message": message} for request_id in self.pending]
        self._discard(transport, grace_s=0.0, keep_pending=True)
        return failed or [{"event": "error", "id": None, "message": message}]

    def _discard(self, transport: Optional[Transport], grace_s: float = 3.0, keep_pending: bool = False) -> None:
        """Forget the current worker (stopping it if still running); its late events are ignored. Pending requests
        are kept only until the errors reporting their loss have been delivered."""
        transport = transport or self._transport
        self._transport = None
        self._generation += 1
        if not keep_pending:
            self.pending.clear()
        if transport is not None:
            transport.close(grace_s)
