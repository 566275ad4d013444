"""CLI wiring for the training side: ``medsyn train``, ``medsyn render-lowres``, ``medsyn export-model`` and
``medsyn pretrain-text``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

TRAIN_OPTIONS = ("stage", "data", "out", "model_config", "text_encoder", "steps", "batch_size", "grad_accum", "lr",
                 "seed", "resume", "checkpoint_every", "crop", "device", "resample", "precision", "num_workers",
                 "ema_decay", "ema_every", "ema_start", "text_dropout", "data_cache", "channel_weights", "lr_noise_max",
                 "tree_thinning", "min_snr_gamma", "structure_ct_weights", "fluid_ct_weight", "init_weights",
                 "rendered_lowres", "rendered_share", "lowres_mask_dropout", "anchor_model", "anchor_share")


def cmd_train(args: argparse.Namespace) -> int:
    from .config import TrainConfig
    from .trainer import train

    config = TrainConfig.from_cli_args(**{name: getattr(args, name) for name in TRAIN_OPTIONS})
    result = train(config)  # the trainer draws its own progress bar
    print(f"trained {result.steps} steps in {result.wall_time_s:.0f} s; final loss {result.loss:.4f}; "
          f"checkpoint {result.checkpoint}")
    return 0


def cmd_render_lowres(args: argparse.Namespace) -> int:
    from .config import parse_numbers
    from .rendered_lowres import render_lowres

    noise_range = parse_numbers(args.noise_range, ("low", "high"), "noise range")
    folder = render_lowres(args.model, Path(args.data_cache), Path(args.out), noise_range, args.seed,
                           args.batch_size, args.device)
    print(f"rendered low-res conditions written to {folder}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_model

    folder = export_model(Path(args.lowres), Path(args.out), name=args.name, license=args.license,
                          sr=Path(args.sr) if args.sr else None, description=args.description,
                          intended_use=args.intended_use,
                          text_encoder=Path(args.text_encoder) if args.text_encoder else None, weights=args.weights,
                          lowres_steps=args.steps, sr_steps=args.sr_steps, guidance_scale=args.guidance)
    print(f"model written to {folder}")
    return 0


def cmd_pretrain_text(args: argparse.Namespace) -> int:
    from ..text.pretrain import run_pretrain_text

    metrics = run_pretrain_text(args.n_reports, args.steps, args.seed, Path(args.out))
    print(json.dumps(metrics, indent=2))
    return 0


def add_training_commands(sub) -> None:
    p = sub.add_parser("train", help="train the low-res or SR stage on a dataset manifest (torchrun for DDP)")
    p.add_argument("--stage", required=True, choices=["lowres", "sr"])
    p.add_argument("--data", required=True, help="manifest (JSONL or CSV; see docs/training-data.md)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, loss log)")
    p.add_argument("--model-config", required=True, help="model card / template JSON or model folder")
    p.add_argument("--text-encoder", default=None, help="text encoder folder (low-res stage)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--grad-accum", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--resume", action="store_true", default=None, help="continue from the latest checkpoint")
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--crop", default=None,
                   help="SR crop: HxW in-plane at full depth (default: official 72x72 scaled to the grid) or DxHxW, "
                        "e.g. 8x128x128 for slabs of whole axial planes")
    p.add_argument("--device", default=None)
    p.add_argument("--resample", default=None, choices=["spacing", "resize"])
    p.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--ema-decay", type=float, default=None, help="default 0.999 (low-res) / 0.995 (SR)")
    p.add_argument("--ema-every", type=int, default=None, help="default every step (low-res) / 10 steps (SR)")
    p.add_argument("--ema-start", type=int, default=None, help="EMA copies the online weights before this step")
    p.add_argument("--text-dropout", type=float, default=None, help="share of samples trained unconditionally")
    p.add_argument("--data-cache", default=None, help="prepared-data folder to reuse (default: <out>/data)")
    p.add_argument("--lr-noise-max", type=float, default=None,
                   help="SR: largest low-res noise augmentation a (default 0.4, official); 0 turns it off")
    p.add_argument("--tree-thinning", type=float, default=None,
                   help="SR, block_max grids: a low-res airway/vessel voxel of the conditioning needs more than a "
                        "share t ~ U(0, MAX) of its block inside (default 0: any voxel), so the SR stage also learns "
                        "from the thinner trees a low-res network generates")
    p.add_argument("--channel-weights", default=None,
                   help="loss weights of CT,lobes,airway,vessels (default 1,1,1,1; e.g. 1,1,4,4 for thin trees)")
    p.add_argument("--structure-ct-weights", default=None,
                   help="CT loss weights inside the airway,vessels channels (default 1,1; e.g. 10,1 so the SR stage "
                        "carves the airway lumen where the channel is)")
    p.add_argument("--fluid-ct-weight", type=float, default=None,
                   help="CT loss weight where the target has pleural-fluid density (-20..30 HU) outside the lung "
                        "lobes (default 1; e.g. 10 so the low-res stage keeps an effusion at fluid density)")
    p.add_argument("--init-weights", default=None,
                   help="fine-tune: start from this weight file (ours or an official checkpoint) or model folder "
                        "instead of a fresh initialisation; a resumed run continues from its checkpoint instead")
    p.add_argument("--anchor-model", default=None,
                   help="fine-tune: a frozen network (weight file or model folder) whose own prediction is the target "
                        "for the channels given by --anchor-share, so the fine-tune keeps what it does there")
    p.add_argument("--anchor-share", default=None,
                   help="with --anchor-model: per channel CT,lobes,airway,vessels, how far the target moves from the "
                        "data to the anchor's prediction (e.g. 1,1,0,1 trains the airway on data and keeps the rest)")
    p.add_argument("--rendered-lowres", default=None,
                   help="SR: folder from medsyn render-lowres; a share of samples is conditioned on the low-res "
                        "network's rendering of the case instead of the case's own low-res volume")
    p.add_argument("--rendered-share", type=float, default=None,
                   help="SR: share of samples conditioned on --rendered-lowres (default 0.5 when it is given)")
    p.add_argument("--lowres-mask-dropout", default=None,
                   help="SR: chance per sample that the low-res lobes,airway,vessels channel of the condition is "
                        "blanked (default 0,0,0; e.g. 0,0.5,0 so the SR stage learns to draw the airway from the CT "
                        "when the low-res network leaves that channel empty)")
    p.add_argument("--min-snr-gamma", type=float, default=None,
                   help="weight samples by min(SNR, gamma)/gamma (e.g. 5); default: the official uniform x0 MSE")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("render-lowres", help="render every training case's low-res volume with a low-res network, "
                                              "for SR training on the inputs it gets at inference")
    p.add_argument("--model", required=True, help="model folder or name whose low-res stage renders")
    p.add_argument("--data-cache", required=True,
                   help="prepared low-res training folder (with text features from the model's text encoder)")
    p.add_argument("--out", required=True)
    p.add_argument("--noise-range", default="0.3,0.7",
                   help="each batch is diffused to a time drawn from LOW,HIGH (0..1) and denoised back")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_render_lowres)

    p = sub.add_parser("export-model", help="turn training runs into a model folder with a card")
    p.add_argument("--lowres", required=True, help="low-res run folder, step_N folder or weights file")
    p.add_argument("--sr", default=None, help="SR run folder, step_N folder or weights file")
    p.add_argument("--out", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--license", required=True)
    p.add_argument("--description", default="MedSyn model trained with medsyn train")
    p.add_argument("--intended-use", default="Research only; not for diagnosis or treatment decisions.")
    p.add_argument("--text-encoder", default=None)
    p.add_argument("--weights", choices=["ema", "online"], default="ema")
    p.add_argument("--steps", type=int, default=50, help="default low-res DDIM steps written to the card")
    p.add_argument("--sr-steps", type=int, default=20, help="default SR DDIM steps written to the card")
    p.add_argument("--guidance", type=float, default=1.0, help="default guidance scale written to the card")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("pretrain-text", help="pretrain the small demo text encoder on phantom reports")
    p.add_argument("--n-reports", type=int, default=4000)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_pretrain_text)
