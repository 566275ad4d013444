"""MedSyn performance benchmarks (issue 6): one command, a Markdown table and JSON.

    python benchmarks/run_benchmarks.py --quick --out /tmp/bench   # seconds, small random configs (CI runs this)
    nice -n 10 python benchmarks/run_benchmarks.py                 # by hand, minutes: writes benchmarks/RESULTS.md

Full mode measures official-size networks with random weights on this machine (time and peak memory per evaluation,
whole vs tiled SR, fp32 vs bf16), the demo model end to end, inpainting edits and the fast sampler; GPU figures are
projections from counted FLOPs and bytes, labelled as such. Ratios in a row come from the same run.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import cpu_peak_supported, use_mmap_for_large_allocations  # noqa: E402
from network_bench import (FULL_SIZES, QUICK_SIZES, lowres_rows, projected_sr_rows, sampler_buffer_row,  # noqa: E402
                           sr_rows)
from pipeline_bench import build_tiny, demo_rows, tiny_rows  # noqa: E402
from projection_bench import projection_rows  # noqa: E402
from rows import markdown_table, write_results  # noqa: E402

HERE = Path(__file__).resolve().parent

NOTES = [
    "Peak memory: resident-set high-water mark (Linux VmHWM, reset via /proc/self/clear_refs) minus the resident size "
    "before the call, with glibc serving allocations ≥ 64 KiB by mmap so freed tensors leave at once; on a GPU the "
    "same tensors would live in device memory.",
    "Times are wall-clock on a CPU shared with other work: one evaluation each after a small warm-up, so expect "
    "±20 %; ratios within one row come from the same run.",
    "Random weights: tiled vs whole agreement here is a worst case. The SR's GroupNorm statistics and bottleneck "
    "attention see only the tile, and a random network has no reason to be smooth; a trained SR is dominated by its "
    "low-res input and was itself trained on 256×72×72 crops. The 'SR sampling, demo model' rows measure the same "
    "comparison with trained weights (the bundled demo SR, whole DDIM run from one low-res volume and noise).",
    "Rows on device 'meta' or an H100 are projections (counted FLOPs and bytes, per-op roofline at the stated "
    "fractions of peak), not measurements. No GPU was available for this run.",
    "Presets ('official pipeline, N GB preset'): what medsyn.presets.choose_preset picks on a CUDA GPU with N GB "
    "free, for the official 256³ SR; peak_mib is its memory model (SR activations per tile voxel and full-volume "
    "sampler buffers, both measured above, plus weights; low-res weights included unless offloaded). An "
    "out-of-memory error at run time falls back to the next, smaller tile plan listed by the preset.",
    "Text k/v reuse: the network already attends with all voxels of a volume at once instead of the official "
    "per-slice text tiling; computing k/v once per sampling run instead of once per step saves the FLOPs stated in "
    "the low-res FLOP row, which is negligible.",
]


def run(quick: bool) -> list:
    sizes = QUICK_SIZES if quick else FULL_SIZES
    low, low_peaks = lowres_rows(sizes)
    sr, per_voxel = sr_rows(sizes)
    rows = low + sr
    if not quick:
        rows += [sampler_buffer_row(sizes)] + projected_sr_rows(per_voxel, sizes.label)
    rows += projection_rows(None if quick else low_peaks["bf16"])
    with tempfile.TemporaryDirectory() as work:
        rows += tiny_rows(build_tiny(Path(work) / "tiny"))
    rows += demo_rows() if not quick else []
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small random configs, a few seconds")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for RESULTS.md and results.json (default: benchmarks/ in full mode, none in "
                             "quick mode)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: 1 quick, 2 full)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads or (1 if args.quick else 2))
    use_mmap_for_large_allocations()
    if not cpu_peak_supported():
        NOTES.append("This platform cannot reset the resident high-water mark: peak memory columns are empty.")
    rows = run(args.quick)
    print(markdown_table(rows))
    out = args.out if args.out is not None else (None if args.quick else HERE)
    if out is not None:
        mode = "quick (small random configs)" if args.quick else "full"
        for path in write_results(out, "MedSyn benchmarks", mode, rows, NOTES):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
