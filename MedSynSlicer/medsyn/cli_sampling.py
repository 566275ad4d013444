"""Command-line options shared by ``medsyn generate``, ``generate-batch``, ``inpaint``, ``outpaint`` and ``segment``:
model, steps, guidance, device, sampler and how to run (precision, SR tiles). Names are checked by the API (one-line
errors), which keeps torch out of argument parsing."""
from __future__ import annotations

import argparse
from typing import Any, Union


def _sr_tile(text: str) -> Union[str, tuple[int, int, int]]:
    if text in ("auto", "whole"):
        return text
    try:
        tile = tuple(int(part) for part in text.split(","))
    except ValueError:
        tile = ()
    if len(tile) != 3:
        raise argparse.ArgumentTypeError("use auto, whole, or three sizes DEPTH,HEIGHT,WIDTH such as 256,152,152")
    return tile  # type: ignore[return-value]


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """The options; ``sampling_kwargs`` turns the parsed values into API keyword arguments."""
    parser.add_argument("--model", default=None,
                        help="model name, folder, or hf://owner/repo@rev (default: bundled demo)")
    parser.add_argument("--steps", type=int, default=None, help="low-res sampler steps (default: model card)")
    parser.add_argument("--sr-steps", type=int, default=None,
                        help="super-resolution sampler steps (default: model card)")
    parser.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance scale (default: model card)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--low-res-only", action="store_true", help="skip the super-resolution stage")
    parser.add_argument("--sampler", default="ddim",
                        help="ddim (official) or dpmpp2m (DPM-Solver++(2M), second order: the same ODE in fewer "
                             "steps)")
    parser.add_argument("--precision", default="auto",
                        help="auto (bf16/fp16 on a GPU, fp32 on CPU), fp32, bf16 or fp16")
    parser.add_argument("--sr-tile", type=_sr_tile, default="auto",
                        help="super-resolution tiles: auto (from free GPU memory), whole, or DEPTH,HEIGHT,WIDTH")


def sampling_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"model": args.model, "steps": args.steps, "sr_steps": args.sr_steps, "guidance": args.guidance,
            "device": args.device, "low_res_only": args.low_res_only, "sampler": args.sampler,
            "precision": args.precision, "sr_tile": args.sr_tile}
