"""The ``--report`` / ``--report-file`` pair shared by every CLI command that takes a radiology report."""
from __future__ import annotations

import argparse
from pathlib import Path

from .errors import MedSynError


def add_report_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    src = parser.add_mutually_exclusive_group(required=required)
    src.add_argument("--report", help="report text (Findings / Impression)")
    src.add_argument("--report-file", help="file holding the report text")


def read_report(args: argparse.Namespace) -> str:
    """The report text from ``--report-file`` or ``--report`` ("" when neither was given)."""
    if args.report_file:
        try:
            return Path(args.report_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise MedSynError(f"cannot read report file {args.report_file}: {exc.strerror}") from exc
    return args.report or ""
