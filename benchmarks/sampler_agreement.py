"""Does a fast sampler match DDIM-50 on the demo evaluation? Compares two `medsyn evaluate` summaries (issue 6).

    medsyn evaluate --prompts Resources/Evaluation/demo_acceptance.jsonl --seeds 8 --out eval_ddim
    medsyn evaluate --prompts Resources/Evaluation/demo_acceptance.jsonl --seeds 8 --sampler dpmpp2m --steps 20 \
        --out eval_dpm
    python benchmarks/sampler_agreement.py eval_ddim/summary.json eval_dpm/summary.json --out SAMPLERS.md

"Within the seed-to-seed spread": for each prompt and metric, the difference of the two means is at most the
reference's standard deviation over seeds (the same seeds, so the samplers start from the same noise). The
comparisons of the prompt file (e.g. effusion "large right" > "none") must also reach the same verdict.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

METRICS = ("effusion_right_ml", "effusion_left_ml", "ctr", "laa950_percent", "lung_ct_ml", "lung_mask_ml",
           "airway_ml", "vessel_ml", "dice_lungs")


def agreement_rows(reference: dict, candidate: dict) -> list[dict]:
    """One row per (prompt, metric) both summaries measured."""
    rows = []
    for prompt, ref_prompt in reference["prompts"].items():
        cand_prompt = candidate["prompts"].get(prompt)
        if cand_prompt is None:
            continue
        for metric in METRICS:
            ref, cand = ref_prompt["metrics"].get(metric), cand_prompt["metrics"].get(metric)
            if not ref or not cand or ref["mean"] is None or cand["mean"] is None:
                continue
            difference = cand["mean"] - ref["mean"]
            rows.append({"prompt": prompt, "metric": metric, "reference": ref, "candidate": cand,
                         "difference": difference, "within": abs(difference) <= ref["sd"] + 1e-9})
    return rows


def verdicts(summary: dict) -> dict[str, bool]:
    return {f"{c['label']} ({c['metric']})": bool(c["holds"]) for c in summary.get("comparisons", [])}


def markdown(reference: dict, candidate: dict) -> str:
    rows = agreement_rows(reference, candidate)
    ref_run, cand_run = reference["run"], candidate["run"]
    lines = ["# Sampler agreement on the demo evaluation",
             "",
             f"Reference: {ref_run['sampler']}, {ref_run['steps']} + {ref_run['sr_steps']} steps; candidate: "
             f"{cand_run['sampler']}, {cand_run['steps']} + {cand_run['sr_steps']} steps; model "
             f"`{ref_run['model']}`, guidance {ref_run['guidance']}, seeds {reference['seeds']}.",
             "",
             f"**{sum(r['within'] for r in rows)} of {len(rows)}** prompt × metric means agree within the "
             "reference's seed-to-seed standard deviation.",
             "",
             "| prompt | metric | reference | candidate | difference | within 1 sd |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        ref, cand = row["reference"], row["candidate"]
        lines.append(f"| `{row['prompt']}` | {row['metric']} | {ref['mean']:.4g} ± {ref['sd']:.3g} | "
                     f"{cand['mean']:.4g} ± {cand['sd']:.3g} | {row['difference']:+.3g} | "
                     f"{'yes' if row['within'] else 'no'} |")
    ref_verdicts, cand_verdicts = verdicts(reference), verdicts(candidate)
    lines += ["", "| comparison | reference holds | candidate holds |", "|---|---|---|"]
    for name, holds in ref_verdicts.items():
        lines.append(f"| {name} | {holds} | {cand_verdicts.get(name)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path, help="summary.json of the DDIM-50 run")
    parser.add_argument("candidate", type=Path, help="summary.json of the fast-sampler run")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    text = markdown(json.loads(args.reference.read_text()), json.loads(args.candidate.read_text()))
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
