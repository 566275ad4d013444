"""``export_model``: turn training runs into a model folder the pipeline loads like any other model.

The folder gets ``lowres.safetensors`` (and ``sr.safetensors``), EMA weights unless asked otherwise, a copy of the text
encoder the features were computed with, and a validated ``model_card.json`` whose sha256 entries pin the exact weights
and whose ``training`` section says how they were made. It is assembled beside the target and renamed into place.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Optional

from ..io.outputs import AtomicOutputDir, check_output_dir
from ..errors import MedSynError
from ..models.card import GridCard, ModelCard, StageCard, save_card
from ..models.weights import sha256_file
from .checkpoint import EMA_FILE, MODEL_FILE, STATE_FILE, latest_checkpoint, read_trainer_state

WEIGHT_CHOICES = {"ema": EMA_FILE, "online": MODEL_FILE}
TEXT_ENCODER_DIR = "text_encoder"
LOSS_WEIGHT_OPTIONS = ("channel_weights", "structure_ct_weights", "fluid_ct_weight", "min_snr_gamma")


def export_model(lowres: Path, out_dir: Path, *, name: str, license: str, sr: Optional[Path] = None,
                 description: str = "MedSyn model trained with medsyn train",
                 intended_use: str = "Research only; not for diagnosis or treatment decisions.",
                 text_encoder: Optional[Path] = None, weights: str = "ema", lowres_steps: int = 50,
                 sr_steps: int = 20, guidance_scale: float = 1.0) -> Path:
    """Write a model folder from a low-res run (and optionally an SR run).

    ``lowres`` / ``sr`` may each be a run folder (its latest checkpoint), a ``step_<N>`` checkpoint folder or a
    ``.safetensors`` file inside one. ``text_encoder`` defaults to the folder the low-res run was trained with.
    """
    if weights not in WEIGHT_CHOICES:
        raise MedSynError(f"unknown weights {weights!r}; use 'ema' or 'online'")
    out_dir = Path(out_dir)
    check_output_dir(out_dir)  # before any weight is read
    low_file, low_state = _resolve(Path(lowres), "lowres", weights)
    sr_source = _resolve(Path(sr), "sr", weights) if sr is not None else None
    if sr_source is not None:
        _check_same_grid(low_state, sr_source[1])
    encoder = Path(text_encoder or low_state["config"]["text_encoder"])
    if not encoder.is_dir():
        raise MedSynError(f"text encoder folder {encoder} not found; pass the one the low-res run was trained with")
    with AtomicOutputDir(out_dir) as partial:
        training = {"lowres": _training_summary(low_state, low_file)}
        low_card = _copy_stage(low_file, low_state, partial / "lowres.safetensors", lowres_steps, guidance_scale)
        sr_card = None
        if sr_source is not None:
            sr_card = _copy_stage(sr_source[0], sr_source[1], partial / "sr.safetensors", sr_steps, 1.0)
            training["sr"] = _training_summary(sr_source[1], sr_source[0])
        shutil.copytree(encoder, partial / TEXT_ENCODER_DIR)
        card = ModelCard(name=name, description=description, license=license, intended_use=intended_use,
                         lowres=low_card, sr=sr_card, text_encoder=TEXT_ENCODER_DIR,
                         grid=GridCard(**low_state["grid"]), hu_window=low_state["hu_window"], training=training)
        save_card(card, partial)
    return out_dir


def _resolve(path: Path, stage: str, weights: str) -> tuple[Path, dict[str, Any]]:
    """(weight file, trainer state) of a run folder, checkpoint folder or weight file."""
    if path.is_file():
        folder, weight_file = path.parent, path
    else:
        folder = path if (path / STATE_FILE).is_file() else latest_checkpoint(path)
        if folder is None:
            raise MedSynError(f"{path} holds no training checkpoint; pass a run folder or a step_<N> folder")
        weight_file = folder / WEIGHT_CHOICES[weights]
    state = read_trainer_state(folder)
    if state.get("stage") != stage:
        raise MedSynError(f"{path} is a {state.get('stage')} checkpoint, not {stage}; swap the arguments")
    if not weight_file.is_file():
        raise MedSynError(f"weight file {weight_file} is missing; the checkpoint is incomplete")
    return weight_file, state


def _check_same_grid(low_state: dict[str, Any], sr_state: dict[str, Any]) -> None:
    for key in ("grid", "hu_window"):
        if low_state[key] != sr_state[key]:
            raise MedSynError(f"the low-res and SR runs were trained with different {key} ({low_state[key]} vs "
                              f"{sr_state[key]}); train both stages with the same model config")


def _copy_stage(source: Path, state: dict[str, Any], target: Path, steps: int, guidance_scale: float) -> StageCard:
    shutil.copyfile(source, target)
    return StageCard(network=state["network"], weights=target.name, sha256=sha256_file(target), steps=steps,
                     guidance_scale=guidance_scale)


def _training_summary(state: dict[str, Any], weight_file: Path) -> dict[str, Any]:
    """What a reader of the card needs to judge the weights: how long, on what, how far the loss came."""
    config = state["config"]
    return {"steps": state["step"], "wall_time_s": round(state["wall_time_s"], 1), "loss": state["loss"],
            "weights": {file: kind for kind, file in WEIGHT_CHOICES.items()}.get(weight_file.name, weight_file.name),
            "global_batch": state["global_batch"], "world_size": state["world_size"], "lr": config["lr"],
            "seed": state["seed"], "data": config["data"], "checkpoint": str(weight_file.parent),
            "init_weights": config.get("init_weights"), "init_weights_sha256": state.get("init_weights_sha256"),
            "rendered_lowres": config.get("rendered_lowres"), "lowres_mask_dropout": config.get("lowres_mask_dropout"),
            "loss_weights": {key: config.get(key) for key in LOSS_WEIGHT_OPTIONS}}
