"""The prompts of an evaluation and the comparisons between them, read from JSON, JSONL or plain text.

JSONL (one object per line)::

    {"name": "effusion_large_right", "report": "Findings: ...", "group": "effusion"}
    {"compare": ["effusion_large_right", "effusion_none"], "metric": "effusion_right_ml", "expect": "greater"}

JSON holds the same objects as ``{"prompts": [...], "comparisons": [...]}`` or as a bare list of prompts. A text file
holds one report per line, optionally ``name<TAB>report``; lines starting with ``#`` are comments.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsyn.errors import MedSynError
from medsyn.evaluation.metrics import METRICS

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
EXPECTATIONS = ("greater", "less")


@dataclass(frozen=True)
class EvalPrompt:
    """A named report; ``name`` also names its preview files, ``group`` colours it in the plots."""

    name: str
    report: str
    group: str = ""


@dataclass(frozen=True)
class Comparison:
    """The claim that ``metric`` of prompt ``first`` is ``expect`` ("greater" or "less") than that of ``second``."""

    first: str
    second: str
    metric: str
    expect: str

    @property
    def label(self) -> str:
        return f"{self.first} {'>' if self.expect == 'greater' else '<'} {self.second}"


@dataclass(frozen=True)
class PromptSet:
    prompts: tuple[EvalPrompt, ...]
    comparisons: tuple[Comparison, ...]


def read_prompt_set(path: str | Path) -> PromptSet:
    """Parse and check a prompts file; every problem is a one-line error naming the file and entry."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MedSynError(f"cannot read prompts file {path}: {exc.strerror}") from exc
    if path.suffix.lower() == ".json":
        entries = _json_entries(text, path)
    elif path.suffix.lower() == ".jsonl":
        entries = [(f"{path} line {number}", _json_line(line, path, number))
                   for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    else:
        entries = _text_entries(text, path)
    prompts = [_prompt(entry, where) for where, entry in entries if "compare" not in entry]
    if not prompts:
        raise MedSynError(f"prompts file {path} holds no prompts; add at least one report")
    names = [prompt.name for prompt in prompts]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise MedSynError(f"prompts file {path}: prompt name {duplicates[0]!r} is used twice; names must be unique")
    comparisons = [_comparison(entry, where, set(names)) for where, entry in entries if "compare" in entry]
    return PromptSet(tuple(prompts), tuple(comparisons))


def _json_entries(text: str, path: Path) -> list[tuple[str, dict]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MedSynError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if isinstance(data, dict):
        unknown = set(data) - {"prompts", "comparisons"}
        if unknown:
            raise MedSynError(f"{path}: unknown top-level key {sorted(unknown)[0]!r}; use 'prompts' and 'comparisons'")
        items = [("prompts", item) for item in data.get("prompts", [])]
        items += [("comparisons", item) for item in data.get("comparisons", [])]
    elif isinstance(data, list):
        items = [("prompts", item) for item in data]
    else:
        raise MedSynError(f"{path}: expected a list of prompts or an object with 'prompts' and 'comparisons'")
    entries = []
    for index, (section, item) in enumerate(items):
        if not isinstance(item, dict):
            raise MedSynError(f"{path}: entry {index + 1} of {section} must be a JSON object")
        if section == "comparisons" and "compare" not in item:
            raise MedSynError(f"{path}: comparison {index + 1} needs a 'compare' pair of prompt names")
        entries.append((f"{path} {section} entry {index + 1}", item))
    return entries


def _json_line(line: str, path: Path, number: int) -> dict:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as exc:
        raise MedSynError(f"{path} line {number} is not valid JSON ({exc.msg})") from None
    if not isinstance(entry, dict):
        raise MedSynError(f"{path} line {number} must be a JSON object with 'name' and 'report'")
    return entry


def _text_entries(text: str, path: Path) -> list[tuple[str, dict]]:
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, tab, report = line.partition("\t")
        entry = {"name": name.strip(), "report": report} if tab else {"report": line}
        entries.append((f"{path} line {number}", entry))
    for index, (_, entry) in enumerate(entries, start=1):
        entry.setdefault("name", f"prompt_{index:02d}")
    return entries


def _prompt(entry: dict[str, Any], where: str) -> EvalPrompt:
    unknown = set(entry) - {"name", "report", "group"}
    if unknown:
        raise MedSynError(f"{where}: unknown key {sorted(unknown)[0]!r}; a prompt has name, report and group")
    name, report, group = entry.get("name"), entry.get("report"), entry.get("group", "")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise MedSynError(f"{where}: name {name!r} must be letters, digits, '_', '-' or '.' (it names files)")
    if not isinstance(report, str) or not report.strip():
        raise MedSynError(f"{where}: prompt {name!r} needs a non-empty 'report' string")
    if not isinstance(group, str):
        raise MedSynError(f"{where}: 'group' of prompt {name!r} must be a string")
    return EvalPrompt(name, report.strip(), group)


def _comparison(entry: dict[str, Any], where: str, names: set[str]) -> Comparison:
    unknown = set(entry) - {"compare", "metric", "expect"}
    if unknown:
        raise MedSynError(f"{where}: unknown key {sorted(unknown)[0]!r}; a comparison has compare, metric, expect")
    pair, metric, expect = entry.get("compare"), entry.get("metric"), entry.get("expect", "greater")
    if not (isinstance(pair, list) and len(pair) == 2 and pair[0] != pair[1]):
        raise MedSynError(f"{where}: 'compare' must list two different prompt names")
    missing = [name for name in pair if name not in names]
    if missing:
        raise MedSynError(f"{where}: compares unknown prompt {missing[0]!r}; define it as a prompt first")
    if metric not in METRICS:
        raise MedSynError(f"{where}: unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if expect not in EXPECTATIONS:
        raise MedSynError(f"{where}: 'expect' must be 'greater' or 'less', got {expect!r}")
    return Comparison(pair[0], pair[1], metric, expect)
