"""``medsyn import-official``: official MedSyn checkpoints (+ CXR-BERT) → a validated model folder with a card.

The network sizes are read off the tensors (so any official-format checkpoint imports, not only the 716 M / 54 M
ones); only GroupNorm's group count is invisible in a state_dict and is a parameter (official: 8).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from safetensors.torch import save_file
import torch

from ..errors import MedSynError
from .card import GridCard, ModelCard, StageCard, save_card
from .weights import (find_checkpoint_weights, load_state_dict_strict, normalize_official_state_dict,
                      read_weight_file, sha256_file)

ATTN_HEAD_DIM = 32  # the official Attention/CrossAttention always use 32-wide heads (attn_dim_head is ignored)
OFFICIAL_LICENSE = "MedSyn weights: CC BY-NC 4.0 and the MedSyn data-use terms (research, non-commercial only)"
# The official atlas grid (reference §6): 316×316×292 mm at 1 mm, LAS voxel axes, resized to 256³.
OFFICIAL_GRID = GridCard(
    lowres_shape_zyx=[64, 64, 64], sr_factor=4, spacing_xyz=[1.234375, 1.234375, 1.140625],
    direction_lps=[1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0], origin_lps=[-135.3828125, 162.7628125, -320.9296875])


def _levels(sd: dict[str, torch.Tensor]) -> list[int]:
    """Output widths of the down levels (downs.<i>.0.block1.proj.weight), which give dim·dim_mults."""
    widths, level = [], 0
    while f"downs.{level}.0.block1.proj.weight" in sd:
        widths.append(int(sd[f"downs.{level}.0.block1.proj.weight"].shape[0]))
        level += 1
    if not widths:
        raise MedSynError("checkpoint has no downs.0.0.block1 weights; it is not a MedSyn UNet")
    return widths


def infer_lowres_config(sd: dict[str, torch.Tensor], resnet_groups: int, up_order: str) -> dict:
    """Low-res constructor arguments recovered from tensor shapes."""
    init = sd["init_conv.weight"]
    dim = int(init.shape[0])
    return {"dim": dim, "cond_dim": int(sd["null_cond_emb"].shape[-1]), "dim_mults": [w // dim for w in _levels(sd)],
            "channels": int(init.shape[1]), "init_kernel_size": int(init.shape[2]),
            "attn_heads": int(sd["mid_spatial_attn1.fn.fn.fn.to_qkv.weight"].shape[0]) // (3 * ATTN_HEAD_DIM),
            "resnet_groups": resnet_groups, "up_order": up_order}


def infer_sr_config(sd: dict[str, torch.Tensor], resnet_groups: int, up_order: str) -> dict:
    """SR constructor arguments recovered from tensor shapes (input = [x_lr, x_t], so channels = in/2)."""
    init = sd["init_conv0.weight"]
    dim = int(init.shape[0])
    return {"dim": dim, "dim_mults": [w // dim for w in _levels(sd)], "channels": int(init.shape[1]) // 2,
            "init_kernel_size": int(init.shape[2]),
            "attn_heads": int(sd["mid_spatial_attn.fn.fn.fn.to_qkv.weight"].shape[0]) // (3 * ATTN_HEAD_DIM),
            "resnet_groups": resnet_groups, "up_order": up_order}


def _import_stage(src: Path, kind: str, weights: str, resnet_groups: int, up_order: str,
                  dst: Path, steps: int) -> tuple[StageCard, list[str]]:
    from ..networks.config import LowResConfig, SRConfig

    path = find_checkpoint_weights(src, weights)
    sd, notes = normalize_official_state_dict(read_weight_file(path), kind)
    infer = infer_lowres_config if kind == "lowres" else infer_sr_config
    try:
        network = infer(sd, resnet_groups, up_order)
    except KeyError as exc:
        raise MedSynError(f"{path} lacks key {exc}; is it a MedSyn {kind} checkpoint?") from exc
    net = (LowResConfig if kind == "lowres" else SRConfig).from_dict(network).build()
    load_state_dict_strict(net, sd, source=str(path))
    out = dst / f"{kind}.safetensors"
    save_file({k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}, str(out))
    notes = [f"{kind}: read {path}"] + [f"{kind}: {n}" for n in notes]
    return StageCard(network=network, weights=out.name, sha256=sha256_file(out), steps=steps), notes


def import_official(lowres: Path, sr: Optional[Path], text_encoder: Path, out: Path, weights: str = "ema",
                    up_order: str = "eval", name: str = "medsyn-official", resnet_groups: int = 8,
                    overwrite: bool = False, lowres_steps: int = 50, sr_steps: int = 20) -> Path:
    """Write ``out`` (model_card.json, lowres/sr .safetensors, text_encoder/); nothing is left behind on failure."""
    from ..io.outputs import AtomicOutputDir
    from ..text.official_import import prepare_official_text_encoder

    with AtomicOutputDir(out, overwrite=overwrite) as tmp:
        low_card, notes = _import_stage(lowres, "lowres", weights, resnet_groups, up_order, tmp, lowres_steps)
        sr_card = None
        if sr is not None:
            sr_card, sr_notes = _import_stage(sr, "sr", weights, resnet_groups, up_order, tmp, sr_steps)
            notes += sr_notes
        notes += prepare_official_text_encoder(text_encoder, tmp / "text_encoder")
        card = ModelCard(
            name=name, license=OFFICIAL_LICENSE,
            description="Official MedSyn (Xu et al., IEEE TMI 2024) imported from the authors' checkpoints.",
            intended_use="Research on synthetic chest CT. Not for clinical use. Outputs are synthetic.",
            lowres=low_card, sr=sr_card, text_encoder="text_encoder", grid=OFFICIAL_GRID,
            training={"source": "official MedSyn checkpoints", "weights": weights, "import_notes": notes})
        save_card(card, tmp)
    return out

