"""The ``medsyn`` command line. Each subcommand parses arguments and calls the Python API; user errors print one line."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Optional

from .cli_sampling import add_sampling_arguments, sampling_kwargs
from .cli_report import add_report_arguments, read_report
from .errors import MedSynError


def cmd_generate(args: argparse.Namespace) -> int:
    from . import api
    from .cli_progress import TerminalProgress

    from .editing.cli import anatomy_kwargs

    anatomy = anatomy_kwargs(args)
    operation = api.generate_conditioned if anatomy else api.generate
    progress = TerminalProgress()
    try:
        paths = operation(read_report(args), args.out, seed=args.seed, callback=progress, overwrite=args.overwrite,
                          **sampling_kwargs(args), **anatomy)
    finally:
        progress.close()
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .models.card import load_card
    from .models.registry import list_models, resolve_model

    if args.action == "info":
        folder = resolve_model(args.name)
        print(json.dumps(load_card(folder).to_dict(), indent=2))
    elif args.action == "download":
        print(resolve_model(args.name, allow_download=True))
    else:
        for row in list_models():
            print(f"{row['name']:28s} {row['license']:24s} {row['path']}")
    return 0


def cmd_check_fixture(args: argparse.Namespace) -> int:
    from .fixture_check import run_check_fixture

    return run_check_fixture(Path(args.folder))


def cmd_import_official(args: argparse.Namespace) -> int:
    from .models.import_official import import_official

    folder = import_official(Path(args.lowres), Path(args.sr) if args.sr else None, Path(args.text_encoder),
                             Path(args.out), weights=args.weights, up_order=args.up_order, name=args.name,
                             resnet_groups=args.resnet_groups, overwrite=args.overwrite)
    print(f"model written to {folder}")
    return 0


def cmd_phantom(args: argparse.Namespace) -> int:
    from .phantom.cli import run_phantom

    run_phantom(args.n, args.seed, args.size, args.spacing, Path(args.out))
    return 0


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate a synthetic chest CT + lobes/airway/vessels from a report")
    add_report_arguments(p, required=True)
    p.add_argument("--seed", type=int, default=0)
    add_sampling_arguments(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")
    p.add_argument("--out", required=True, help="output folder (created; must not exist or be empty)")
    from .editing.cli import add_anatomy_arguments

    add_anatomy_arguments(p)
    p.set_defaults(func=cmd_generate)


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list models, show a model card, or fetch a hub model into the cache")
    p.add_argument("action", nargs="?", choices=["list", "info", "download"], default="list")
    p.add_argument("name", nargs="?", default=None)
    p.set_defaults(func=cmd_models)


def _add_tools(sub) -> None:
    p = sub.add_parser("check-fixture", help="check our networks and sampler against an official-code fixture")
    p.add_argument("folder")
    p.set_defaults(func=cmd_check_fixture)

    p = sub.add_parser("import-official", help="turn official MedSyn checkpoints into a model folder")
    p.add_argument("--lowres", required=True, help="low-res checkpoint: <N>_ckpt folder, results folder or file")
    p.add_argument("--sr", default=None, help="super-resolution checkpoint (folder or file)")
    p.add_argument("--text-encoder", required=True, help="CXR-BERT folder (config + vocab [+ fine-tuned weights])")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--weights", choices=["ema", "online"], default="ema")
    p.add_argument("--up-order", choices=["eval", "train"], default="eval")
    p.add_argument("--name", default="medsyn-official")
    p.add_argument("--resnet-groups", type=int, default=8, help="GroupNorm groups of the checkpoint (official: 8)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_import_official)

    p = sub.add_parser("phantom", help="write procedural chest phantoms with ground truth and reports")
    p.add_argument("--n", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=128, help="grid size D (D×D×D voxels)")
    p.add_argument("--spacing", type=float, default=None, help="voxel size in mm (default: field of view / size)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_phantom)


def _add_training(sub) -> None:
    from .training.cli import add_training_commands

    add_training_commands(sub)


def _add_editing(sub) -> None:
    from .editing.cli import add_editing_commands

    add_editing_commands(sub)


def _add_evaluation(sub) -> None:
    from .evaluation.cli import add_evaluate_command

    add_evaluate_command(sub)


def _add_batch(sub) -> None:
    from .batch_cli import add_batch_commands

    add_batch_commands(sub)


COMMAND_GROUPS: list[Callable] = [_add_generate, _add_models, _add_tools, _add_training, _add_editing, _add_evaluation,
                                  _add_batch]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medsyn", description="MedSyn synthetic chest CT generation and editing")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMAND_GROUPS:
        add(sub)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MedSynError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
