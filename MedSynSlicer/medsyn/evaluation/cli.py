"""``medsyn evaluate``: prompt adherence and mask/image consistency of a model, measured on its own samples.

    medsyn evaluate --model medsyn-demo-phantom --prompts Resources/Evaluation/demo_prompts.jsonl --seeds 8 --out eval/
"""
from __future__ import annotations

import argparse
import math
from typing import Any

from medsyn.cli_sampling import add_sampling_arguments, sampling_kwargs

_HEADLINE = (("effusion_right_ml", "effusion R {:.0f} mL"), ("effusion_left_ml", "L {:.0f} mL"), ("ctr", "CTR {:.3f}"),
             ("laa950_percent", "%LAA-950 {:.1f}"), ("dice_lungs", "Dice lungs {:.3f}"))


def cmd_evaluate(args: argparse.Namespace) -> int:
    from medsyn.cli_progress import TerminalProgress
    from medsyn.evaluation.evaluate import MARKDOWN_NAME, run_evaluation

    progress = TerminalProgress()
    try:
        summary = run_evaluation(args.prompts, args.out, range(args.first_seed, args.first_seed + args.seeds),
                                 batch_size=args.batch_size, previews=args.previews, callback=progress,
                                 on_sample=_print_sample, **sampling_kwargs(args))
    finally:
        progress.close()
    for result in summary["comparisons"]:
        verdict = "holds" if result["holds"] else "does not hold"
        print(f"{result['label']} on {result['metric']}: {verdict} "
              f"({result['seeds_ordered']}/{result['seeds_paired']} seeds ordered)")
    print(f"results: {args.out}/{MARKDOWN_NAME}")
    return 0


def _print_sample(row: dict[str, Any]) -> None:
    values = [text.format(row["metrics"][name]) for name, text in _HEADLINE if math.isfinite(row["metrics"][name])]
    print(f"{row['prompt']} seed {row['seed']}: {', '.join(values) or 'no metric measurable'} "
          f"({row['generation_s']:.1f} s)", flush=True)


def add_evaluate_command(sub) -> None:
    """Register ``evaluate`` on the ``medsyn`` subparsers."""
    p = sub.add_parser("evaluate", help="generate prompts × seeds and measure effusion, CTR, %%LAA-950, volumes "
                                        "and mask/image consistency")
    p.add_argument("--prompts", required=True,
                   help="JSON/JSONL of named prompts and comparisons, or text with one report per line "
                        "(see Resources/Evaluation/demo_prompts.jsonl)")
    p.add_argument("--seeds", type=int, required=True, help="number of seeds per prompt")
    p.add_argument("--first-seed", type=int, default=0, help="seeds are FIRST_SEED … FIRST_SEED+SEEDS-1")
    p.add_argument("--batch-size", type=int, default=1, help="volumes per batched forward on one device")
    p.add_argument("--previews", type=int, default=1, help="preview PNGs per prompt (its first seeds)")
    add_sampling_arguments(p)
    p.add_argument("--out", required=True, help="output folder; rerunning with the same settings resumes it")
    p.set_defaults(func=cmd_evaluate)
