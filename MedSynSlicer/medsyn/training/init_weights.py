"""Where a fine-tuning run starts: another model's weights instead of a fresh initialisation.

A research group fine-tunes the official MedSyn weights on its own data, and a changed data encoding (e.g. a new
``grid.lowres_masks``) is learned faster from a trained network than from scratch; neither is a resume, because the
data, grid or options differ from the run the weights came from.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import MedSynError
from ..models.card import load_card
from ..models.weights import load_state_dict_strict, normalize_official_state_dict, read_weight_file, sha256_file


def init_weight_file(source: Path, stage: str) -> Path:
    """The weight file to start ``stage`` from: ``source`` itself, or the stage's weights in a model folder."""
    source = Path(source)
    if not source.is_dir():
        return source  # read_weight_file says what is wrong with a missing or unreadable file
    card = load_card(source)  # a folder without a card is a one-line error naming it
    stage_card = card.lowres if stage == "lowres" else card.sr
    if stage_card is None:
        raise MedSynError(f"model folder {source} has no {stage} stage to fine-tune from")
    return source / stage_card.weights


def load_init_weights(net: torch.nn.Module, source: Path, stage: str) -> str:
    """Load the starting weights strictly into ``net`` (official key layouts are mapped first); returns their sha256."""
    path = init_weight_file(source, stage)
    state, _ = normalize_official_state_dict(read_weight_file(path), stage)
    load_state_dict_strict(net, state, source=str(path))
    return sha256_file(path)
