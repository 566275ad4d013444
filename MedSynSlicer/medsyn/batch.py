"""Batch generation bookkeeping for data-augmentation runs: items (report × seed), their sharding across ``torchrun``
ranks, which outputs are finished, and the summary manifest. Sampling itself stays in the pipeline.

Sharding needs no communication: rank r takes items r, r + W, r + 2W, …; a gloo barrier only lets rank 0 write the
summary once every rank is done. The item order and folder names do not depend on the number of ranks, so a run can
resume with another number of GPUs.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.distributed as dist

from .errors import MedSynError
from .io.provenance import write_text_atomic

SUMMARY_NAME = "summary.jsonl"


@dataclass(frozen=True)
class BatchItem:
    """One volume to generate: a report (by its index in the prompts) and a seed."""

    report_index: int
    seed: int
    report: str

    @property
    def name(self) -> str:
        return f"{self.report_index:04d}_seed{self.seed}"

    def row(self) -> dict:
        return {"report_index": self.report_index, "seed": self.seed, "report": self.report, "dir": self.name}


def batch_items(reports: Sequence[str], seeds: Sequence[int]) -> list[BatchItem]:
    """Every report × seed, report-major (all seeds of report 0 first)."""
    if not reports:
        raise MedSynError("no reports given; pass at least one report")
    if not seeds:
        raise MedSynError("no seeds given; pass at least one seed")
    return [BatchItem(index, int(seed), report) for index, report in enumerate(reports) for seed in seeds]


def read_prompts(path: str | os.PathLike) -> list[str]:
    """Reports from a text file (one per line) or JSONL (one object with a "report" field per line); blank lines
    are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise MedSynError(f"cannot read prompts file {path}: {exc.strerror}") from exc
    reports = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if line:
            reports.append(_report_from_line(line, path, number))
    if not reports:
        raise MedSynError(f"prompts file {path} holds no reports; write one report per line")
    return reports


def _report_from_line(line: str, path: str | os.PathLike, number: int) -> str:
    if not line.startswith("{"):
        return line
    try:
        report = json.loads(line).get("report")
    except (json.JSONDecodeError, AttributeError):
        report = None
    if not isinstance(report, str) or not report.strip():
        raise MedSynError(f"{path} line {number}: a JSON line needs a non-empty \"report\" string")
    return report


def is_finished(case_dir: Path) -> bool:
    """Outputs are published as a whole folder, so its provenance file marks a complete volume."""
    return (case_dir / "provenance.json").is_file()


def chunks(items: Sequence[BatchItem], size: int) -> list[list[BatchItem]]:
    """Consecutive groups of ``size`` items, one batched forward each."""
    if size < 1:
        raise MedSynError(f"batch size must be at least 1, got {size}")
    return [list(items[start:start + size]) for start in range(0, len(items), size)]


@contextmanager
def ranks() -> Iterator[tuple[int, int]]:
    """(rank, world size) of this process; under torchrun a gloo process group is opened (and closed) for the final
    barrier unless the caller already has one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    created = world > 1 and not dist.is_initialized()
    if created:
        dist.init_process_group("gloo")
    try:
        if dist.is_initialized():
            yield dist.get_rank(), dist.get_world_size()
        else:
            yield 0, 1
    finally:
        if created:
            dist.destroy_process_group()


def rank_device(device: str) -> str:
    """Under torchrun, 'auto' / 'cuda' mean this rank's own GPU (LOCAL_RANK)."""
    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is not None and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{int(local_rank) % torch.cuda.device_count()}"
    return device


def finish(out_root: Path, items: Sequence[BatchItem], rank: int) -> list[dict]:
    """Wait for every rank, then rank 0 writes the summary (one JSON line per item, item order); returns the rows."""
    if dist.is_initialized():
        dist.barrier()
    rows = [item.row() for item in items]
    if rank == 0:
        missing = [item.name for item in items if not is_finished(out_root / item.name)]
        if missing:
            raise MedSynError(f"{len(missing)} volumes are missing (first: {missing[0]}); run the batch again to "
                              "resume")
        out_root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out_root / SUMMARY_NAME, "".join(json.dumps(row) + "\n" for row in rows))
    return rows
