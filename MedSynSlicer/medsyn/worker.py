"""Persistent backend process for the Slicer module: JSON lines on stdin/stdout (see docs/worker-protocol.md).

Slicer starts ``PythonSlicer -m medsyn.worker`` once and keeps it: loaded models and their cached text features stay in
memory between requests, so repeated edits do not reload weights. Control requests (ping, cancel, shutdown) are
answered by the reader thread at once; everything else runs one at a time on a compute thread, so a cancel or a
heartbeat is never stuck behind a long sampling run. Nothing a request does can kill the process: user errors become
one-line ``error`` events, unexpected exceptions an ``error`` event plus a traceback on stderr.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import queue
import sys
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, TextIO

from . import __version__
from .errors import MedSynError
from .progress import CancelToken, Cancelled, ProgressEvent

PROTOCOL_VERSION = 1
CONTROL_OPS = ("ping", "cancel", "shutdown")  # answered at once by the reader thread
INFO_OPS = ("load_model", "list_models", "devices")  # queued like the backend operations below


@dataclass(frozen=True)
class Operation:
    """A backend function reachable through the protocol; ``path_params`` arrive as strings and become Paths."""

    module: str
    function: str
    path_params: tuple[str, ...] = ()
    uses_model: bool = True  # receives loaded=, callback=, cancel= and consumes the request's model/device


# Adding a backend operation to Slicer is one line here (and one in MedSynSlicerLib.runner.MODES for the UI).
OPERATIONS: dict[str, Operation] = {
    "generate": Operation("medsyn.api", "generate", ("out_dir",)),
    "generate_conditioned": Operation("medsyn.api", "generate_conditioned", ("out_dir", "lobes", "airway", "vessels")),
    "inpaint": Operation("medsyn.api", "inpaint", ("input_path", "mask_path", "out_dir", "lobes", "airway", "vessels")),
    "outpaint": Operation("medsyn.api", "outpaint", ("input_path", "canvas_path", "out_dir")),
    "segment": Operation("medsyn.api", "segment", ("input_path", "out_dir")),
    "import_official": Operation("medsyn.models.import_official", "import_official",
                                 ("lowres", "sr", "text_encoder", "out"), uses_model=False),
}


class Emitter:
    """Writes events as single JSON lines; one lock so the reader, heartbeat and compute threads never interleave."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def __call__(self, event: str, request_id: Optional[str] = None, **fields: Any) -> None:
        line = json.dumps({"event": event, "id": request_id, **fields}, default=str)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()


def one_line(exc: BaseException) -> str:
    """First line of an exception message, so the Slicer status line never gets a wall of text."""
    text = str(exc).strip().splitlines()
    return text[0] if text else exc.__class__.__name__


class ModelCache:
    """Loaded models by (resolved folder, device); the least recently used one is dropped beyond ``capacity``.

    Text features are cached inside each LoadedModel, so keeping the model keeps its features too.
    """

    def __init__(self, capacity: int = 1) -> None:
        self.capacity = capacity
        self.loads = 0
        self._models: dict[tuple[str, str], Any] = {}

    def get(self, name_or_path: Optional[str], device: str) -> tuple[Any, bool]:
        """(LoadedModel, was_cached) for a model name, folder or hf:// spec."""
        from .models.loaded import load_model, resolve_device
        from .models.registry import resolve_model

        key = (str(resolve_model(name_or_path)), str(resolve_device(device)))
        if key in self._models:
            self._models[key] = self._models.pop(key)  # mark as most recently used
            return self._models[key], True
        while len(self._models) >= self.capacity:
            self._models.pop(next(iter(self._models)))
            _release_gpu_memory()
        loaded = load_model(name_or_path, device)
        self.loads += 1
        self._models[key] = loaded
        return loaded, False

    def names(self) -> list[str]:
        return [f"{Path(folder).name}@{device}" for folder, device in list(self._models)]  # read by the reader thread


def _release_gpu_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def describe_model(loaded: Any, cached: bool) -> dict[str, Any]:
    """What the Slicer panel shows and records as provenance for a loaded model."""
    card = loaded.card
    return {"name": card.name, "license": card.license, "description": card.description,
            "device": str(loaded.device), "weights_sha256": loaded.weights_sha256, "path": str(loaded.folder),
            "cached": cached}


def list_devices() -> list[dict[str, Any]]:
    """Devices the user can pick; GPUs with their free memory, so users see whether a run will fit."""
    import torch

    devices = [{"name": "cpu", "label": "CPU"}]
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        free, total = torch.cuda.mem_get_info(index)
        name = torch.cuda.get_device_name(index)
        label = f"{name} ({free / 2**30:.1f} of {total / 2**30:.1f} GiB free)"
        devices.append({"name": f"cuda:{index}", "label": label, "free_bytes": free, "total_bytes": total})
    return devices


@dataclass
class Job:
    """One queued request with the token its cancel request sets."""

    request_id: Optional[str]
    op: str
    params: dict[str, Any]
    cancel: CancelToken


class Worker:
    """Request dispatcher; ``serve`` runs until shutdown or end of input."""

    def __init__(self, emit: Callable[..., None], heartbeat_s: float = 2.0, cache_capacity: int = 1) -> None:
        self.emit = emit
        self.heartbeat_s = heartbeat_s
        self.models = ModelCache(cache_capacity)
        self._jobs: "queue.Queue[Optional[Job]]" = queue.Queue()
        self._pending: dict[str, Job] = {}
        self._running: Optional[Job] = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    # -- main loop -------------------------------------------------------------------------------------------------

    def serve(self, lines: TextIO) -> None:
        threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True).start()
        compute = threading.Thread(target=self._compute, name="compute", daemon=True)
        compute.start()
        self.emit("ready", protocol=PROTOCOL_VERSION, version=__version__, pid=os.getpid())
        for line in lines:
            if line.strip():
                self.handle_line(line)
            if self._stopped.is_set():
                break
        self._stop()
        compute.join(timeout=5.0)

    def handle_line(self, line: str) -> None:
        """Parse one request and answer control ops at once; queue the rest. A bad request only costs an error."""
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("a request must be a JSON object")
        except ValueError as exc:
            self.emit("error", None, message=f"request is not valid JSON: {one_line(exc)}")
            return
        request_id = request.get("id")
        op, params = request.get("op"), request.get("params") or {}
        if not isinstance(params, dict):
            self.emit("error", request_id, message="params must be a JSON object")
        elif op == "ping":
            self.emit("result", request_id, pong=True, loads=self.models.loads, models=self.models.names(),
                      busy=self._running.request_id if self._running else None)
        elif op == "cancel":
            self.emit("result", request_id, cancelled=self.cancel(params.get("target")))
        elif op == "shutdown":
            self.emit("result", request_id)
            self._stop()
        elif op in OPERATIONS or op in INFO_OPS:
            job = Job(request_id, op, params, CancelToken())
            with self._lock:
                if request_id is not None:
                    self._pending[request_id] = job
            self._jobs.put(job)
        else:
            known = ", ".join(sorted((*CONTROL_OPS, *INFO_OPS, *OPERATIONS)))
            self.emit("error", request_id, message=f"unknown operation '{op}'; known operations: {known}")

    def cancel(self, target: Optional[str]) -> bool:
        """Flag a queued or running request; the sampler stops at its next step."""
        with self._lock:
            job = self._pending.get(target) if target is not None else None
        if job is None:
            return False
        job.cancel.cancel()
        return True

    def _stop(self) -> None:
        self._stopped.set()
        with self._lock:
            for job in self._pending.values():
                job.cancel.cancel()
        self._jobs.put(None)

    def _heartbeat(self) -> None:
        while not self._stopped.wait(self.heartbeat_s):
            running = self._running
            self.emit("heartbeat", None, busy=running.request_id if running else None)

    # -- compute thread --------------------------------------------------------------------------------------------

    def _compute(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            self._running = job
            try:
                self._run(job)
            finally:
                self._running = None
                with self._lock:
                    self._pending.pop(job.request_id, None)

    def _run(self, job: Job) -> None:
        try:
            job.cancel.raise_if_cancelled()
            self.emit("result", job.request_id, **self.execute(job))
        except Cancelled:
            self.emit("cancelled", job.request_id)
        except MedSynError as exc:
            self.emit("error", job.request_id, message=one_line(exc))
        except Exception as exc:  # noqa: BLE001 - the worker must survive any request
            traceback.print_exc(file=sys.stderr)
            self.emit("error", job.request_id,
                      message=f"internal error in {job.op}: {exc.__class__.__name__}: {one_line(exc)} "
                              f"(details in the worker log)")

    def execute(self, job: Job) -> dict[str, Any]:
        """Run one non-control request and return the fields of its ``result`` event."""
        params = dict(job.params)
        if job.op == "list_models":
            from .models.registry import list_models

            return {"models": list_models()}
        if job.op == "devices":
            return {"devices": list_devices()}
        if job.op == "load_model":
            return {"model": describe_model(*self._model_for(params))}
        operation = OPERATIONS[job.op]
        function = resolve_function(job.op, operation)
        kwargs = {key: (Path(value) if key in operation.path_params and value is not None else value)
                  for key, value in params.items() if key not in ("model", "device")}
        if operation.uses_model:
            kwargs.update(loaded=None, cancel=job.cancel, callback=self._progress_sink(job.request_id))
        check_arguments(job.op, function, kwargs)
        fields: dict[str, Any] = {}
        if operation.uses_model:
            kwargs["loaded"], cached = self._model_for(params)
            fields["model"] = describe_model(kwargs["loaded"], cached)
        result = function(**kwargs)
        outputs = result if isinstance(result, dict) else {"folder": result}
        return {"outputs": {name: str(path) for name, path in outputs.items()}, **fields}

    def _model_for(self, params: dict[str, Any]) -> tuple[Any, bool]:
        return self.models.get(params.get("model"), params.get("device") or "auto")

    def _progress_sink(self, request_id: Optional[str]) -> Callable[[ProgressEvent], None]:
        def sink(event: ProgressEvent) -> None:
            self.emit("progress", request_id, stage=event.stage, step=event.step, total=event.total)

        return sink


def resolve_function(op: str, operation: Operation) -> Callable[..., Any]:
    """The backend function for ``op``, or a clear error when this backend version does not have it yet."""
    module = importlib.import_module(operation.module)
    function = getattr(module, operation.function, None)
    if function is None:
        raise MedSynError(f"operation {op} is not available in this backend version; update the MedSyn extension")
    return function


def check_arguments(op: str, function: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    """Refuse unknown or missing parameters with a one-line message instead of a TypeError from deep inside."""
    signature = inspect.signature(function)
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        unknown = [key for key in kwargs if key not in signature.parameters]
        if unknown:
            raise MedSynError(f"option '{unknown[0]}' of {op} is not available in this backend version")
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        raise MedSynError(f"bad parameters for {op}: {one_line(exc)}") from exc


def protect_stdout() -> TextIO:
    """Return a private stream on the real stdout and point fd 1 / sys.stdout at stderr.

    Libraries that print (or C code writing to fd 1) would otherwise corrupt the protocol stream.
    """
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", buffering=1)
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    return protocol


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medsyn.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--heartbeat", type=float, default=2.0, help="seconds between heartbeat events")
    parser.add_argument("--max-models", type=int, default=1, help="models kept loaded (GPU memory is the limit)")
    args = parser.parse_args(argv)
    emit = Emitter(protect_stdout())
    sys.stdin.reconfigure(encoding="utf-8")
    Worker(emit, heartbeat_s=args.heartbeat, cache_capacity=args.max_models).serve(sys.stdin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
