"""``medsyn inpaint | outpaint | segment`` and the anatomy options of ``medsyn generate``.

Register with ``add_editing_commands(subparsers)``; ``medsyn generate`` adds ``add_anatomy_arguments(parser)`` and, when
``anatomy_kwargs(args)`` is not empty, calls ``medsyn.editing.api.generate_conditioned(report, out, **those)``.
Like every subcommand, the functions return an exit code and let ``MedSynError`` reach ``medsyn.cli.main``.
"""
from __future__ import annotations

import argparse
from typing import Any, Callable

from medsyn.cli_report import add_report_arguments, read_report
from medsyn.cli_sampling import add_sampling_arguments, sampling_kwargs
from medsyn.diffusion.known_region import Resampling
from medsyn.errors import MedSynError


def add_anatomy_arguments(parser: argparse.ArgumentParser) -> None:
    """--lobes / --airway / --vessels (labelmap or .seg.nrrd, any subset), --segment-map and --center-lps."""
    group = parser.add_argument_group("anatomy to keep (labelmap .nii.gz/.nrrd or Slicer .seg.nrrd)")
    group.add_argument("--lobes", help="lobe labelmap (0 background, LUL=1 LLL=2 RUL=3 RML=4 RLL=5) or .seg.nrrd")
    group.add_argument("--airway", help="airway mask (0/1) or .seg.nrrd")
    group.add_argument("--vessels", help="vessel mask (0/1) or .seg.nrrd")
    group.add_argument("--segment-map", help="extra segment names, e.g. 'My LUL=lobe:LUL,Trachea=airway,Art=vessels'")
    _add_centre(group)


def anatomy_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The anatomy options that were given, as keyword arguments of the editing API (empty: plain generation)."""
    kwargs = {name: getattr(args, name) for name in ("lobes", "airway", "vessels") if getattr(args, name)}
    if args.segment_map and not kwargs:
        raise MedSynError("--segment-map needs --lobes, --airway or --vessels")
    if kwargs:
        kwargs["segment_map"] = args.segment_map
    if args.center_lps is not None:
        kwargs["center_lps"] = args.center_lps
    return kwargs


def add_editing_commands(sub: argparse._SubParsersAction) -> None:
    """Register inpaint, outpaint and segment."""
    p = sub.add_parser("inpaint", help="regenerate a masked region of a CT from a report; the rest stays identical")
    p.add_argument("--input", required=True, help="CT volume (.nii.gz / .nrrd, HU)")
    p.add_argument("--mask", required=True, help="0/1 labelmap or .seg.nrrd of the region to regenerate")
    add_report_arguments(p, required=False)
    add_anatomy_arguments(p)
    _add_harmonisation(p)
    p.add_argument("--whole-volume", action="store_true",
                   help="sample the whole grid at both stages, not only windows around the edit (slower; also "
                   "generates the anatomy everywhere)")
    _add_sampling(p)
    p.set_defaults(func=cmd_inpaint)

    p = sub.add_parser("outpaint", help="extend a CT beyond its field of view")
    p.add_argument("--input", required=True, help="CT volume (.nii.gz / .nrrd, HU)")
    canvas = p.add_mutually_exclusive_group(required=True)
    canvas.add_argument("--canvas", help="volume whose grid is the field of view to fill")
    canvas.add_argument("--margin-mm", type=_millimetres, metavar="X,Y,Z", help="margin added on both sides (mm)")
    add_report_arguments(p, required=False)
    _add_centre(p)
    _add_harmonisation(p)
    _add_sampling(p)
    p.set_defaults(func=cmd_outpaint)

    p = sub.add_parser("segment", help="generate lobes, airway and vessels for a CT (the CT is kept)")
    p.add_argument("--input", required=True, help="CT volume (.nii.gz / .nrrd, HU)")
    add_report_arguments(p, required=False)
    _add_centre(p)
    _add_sampling(p)
    p.set_defaults(func=cmd_segment)


def cmd_inpaint(args: argparse.Namespace) -> int:
    from . import api

    return _run(api.inpaint, args, args.input, args.mask, args.out, report=read_report(args), **anatomy_kwargs(args),
                local=not args.whole_volume, **_harmonisation_kwargs(args))


def cmd_outpaint(args: argparse.Namespace) -> int:
    from . import api

    return _run(api.outpaint, args, args.input, args.out, canvas_path=args.canvas, margin_mm=args.margin_mm,
                report=read_report(args), center_lps=args.center_lps, **_harmonisation_kwargs(args))


def cmd_segment(args: argparse.Namespace) -> int:
    from . import api

    return _run(api.segment, args, args.input, args.out, report=read_report(args) or None,
                center_lps=args.center_lps)


def _run(operation: Callable[..., dict], args: argparse.Namespace, *positional: Any, **kwargs: Any) -> int:
    """Call ``operation`` with the shared sampling options of ``args`` added, showing progress; print the outputs."""
    from medsyn.cli_progress import TerminalProgress

    progress = TerminalProgress()
    try:
        paths = operation(*positional, seed=args.seed, overwrite=args.overwrite, callback=progress, **kwargs,
                          **sampling_kwargs(args))
    finally:
        progress.close()
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def _add_centre(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--center-lps", type=_millimetres, metavar="X,Y,Z",
                   help="centre the model's field of view here (LPS mm) instead of on the lungs; write "
                        "--center-lps=-10,0,5 when the first value is negative")


def _add_harmonisation(p: argparse.ArgumentParser) -> None:
    p.add_argument("--feather", type=int, default=0, metavar="VOXELS",
                   help="soft low-res boundary of this many voxels between kept and generated parts")
    p.add_argument("--repaint", type=_jump_repeats, default=None, metavar="JUMP,REPEATS",
                   help="RePaint resampling at low res, e.g. 2,3 (costs about REPEATS times the low-res steps)")
    p.add_argument("--seam-blend", type=float, default=None, metavar="MM",
                   help="fade the CT intensity step at the border with the kept voxels out over this width "
                        "(generated side only; default 16 for outpaint, 0 = off for inpaint)")


def _add_sampling(p: argparse.ArgumentParser) -> None:
    """The options ``medsyn generate`` has too (``cli_sampling``), plus seed and output folder."""
    p.add_argument("--seed", type=int, default=0)
    add_sampling_arguments(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")
    p.add_argument("--out", required=True, help="output folder (created; must not exist or be empty)")


def _harmonisation_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    resampling = None if args.repaint is None else Resampling(*args.repaint, seed=args.seed)
    blend = {} if args.seam_blend is None else {"seam_blend_mm": args.seam_blend}
    return {"feather_voxels": args.feather, "resampling": resampling, **blend}


def _millimetres(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three numbers X,Y,Z in mm, got {text!r}")
    return values


def _jump_repeats(text: str) -> tuple[int, int]:
    try:
        jump, repeats = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected JUMP,REPEATS as two integers, got {text!r}") from None
    return jump, repeats
