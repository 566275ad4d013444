"""``medsyn generate-batch``: many volumes for data augmentation, batched on one device and sharded under torchrun.

    medsyn generate-batch --prompts reports.txt --seeds 4 --out synth/ --batch-size 2
    torchrun --nproc_per_node 8 -m medsyn.cli generate-batch --prompts reports.jsonl --seeds 100 --out synth/
"""
from __future__ import annotations

import argparse

from .cli_sampling import add_sampling_arguments, sampling_kwargs


def cmd_generate_batch(args: argparse.Namespace) -> int:
    from . import api
    from .batch import SUMMARY_NAME, read_prompts
    from .cli_progress import TerminalProgress

    progress = TerminalProgress()
    try:
        rows = api.generate_batch(read_prompts(args.prompts), range(args.first_seed, args.first_seed + args.seeds),
                                  args.out, batch_size=args.batch_size, callback=progress, **sampling_kwargs(args))
    finally:
        progress.close()
    print(f"{len(rows)} volumes in {args.out} (summary: {SUMMARY_NAME})")
    return 0


def add_batch_commands(sub) -> None:
    """Register ``generate-batch`` on the ``medsyn`` subparsers."""
    p = sub.add_parser("generate-batch", help="generate reports × seeds into one folder (resumable, torchrun-aware)")
    p.add_argument("--prompts", required=True, help="text file with one report per line, or JSONL with \"report\"")
    p.add_argument("--seeds", type=int, required=True, help="number of seeds per report")
    p.add_argument("--first-seed", type=int, default=0, help="seeds are FIRST_SEED … FIRST_SEED+SEEDS-1")
    p.add_argument("--batch-size", type=int, default=1, help="volumes per batched forward on one device")
    add_sampling_arguments(p)
    p.add_argument("--out", required=True, help="output folder; finished volumes in it are skipped")
    p.set_defaults(func=cmd_generate_batch)
