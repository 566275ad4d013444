"""Training checkpoints: ``<run>/checkpoints/step_<N>/`` with online and EMA weights, optimizer and trainer state.

A checkpoint is written into a hidden partial folder and renamed into place (AtomicOutputDir), so a run killed at any
moment leaves either a complete checkpoint or none. RNG states are stored as JSON lists, so resuming never unpickles anything.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from ..io.outputs import AtomicOutputDir
from ..errors import MedSynError
from ..models.card import GridCard
from ..models.weights import load_state_dict_strict, read_weight_file
from ..networks.config import LowResConfig, SRConfig

CHECKPOINTS_DIR = "checkpoints"
MODEL_FILE, EMA_FILE, OPTIMIZER_FILE, STATE_FILE = "model.safetensors", "ema.safetensors", "optimizer.pt", \
    "trainer_state.json"
_FOLDER = re.compile(r"^step_(\d+)$")


def save_weights(module: nn.Module, path: Path) -> None:
    """Every state_dict key as its own CPU tensor, so shared modules (the low-res mid attention) load strictly."""
    save_file({key: value.detach().to("cpu", copy=True).contiguous() for key, value in module.state_dict().items()},
              str(path))


def load_weights(module: nn.Module, path: Path) -> None:
    load_state_dict_strict(module, read_weight_file(path), source=str(path))


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states as JSON-ready lists."""
    version, mt_state, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": [version, list(mt_state), gauss],
        "numpy": {**numpy_state, "state": {"key": numpy_state["state"]["key"].tolist(),
                                           "pos": int(numpy_state["state"]["pos"])}},
        "torch": torch.get_rng_state().tolist(),
        "cuda": [state.tolist() for state in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    numpy_state = dict(state["numpy"])
    numpy_state["state"] = {"key": np.asarray(numpy_state["state"]["key"], dtype=np.uint32),
                            "pos": numpy_state["state"]["pos"]}
    np.random.set_state(numpy_state)
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def checkpoint_folder(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR / f"step_{step}"


def save_checkpoint(run_dir: Path, step: int, online: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer,
                    trainer_state: dict[str, Any]) -> Path:
    """Write ``step_<step>`` atomically; ``trainer_state`` (JSON-ready) gets the RNG states added."""
    final = checkpoint_folder(run_dir, step)
    with AtomicOutputDir(final, overwrite=True) as partial:
        save_weights(online, partial / MODEL_FILE)
        save_weights(ema, partial / EMA_FILE)
        torch.save(optimizer.state_dict(), partial / OPTIMIZER_FILE)
        state = {**trainer_state, "step": step, "rng": capture_rng_state()}
        (partial / STATE_FILE).write_text(json.dumps(state), encoding="utf-8")
    return final


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    """The complete checkpoint with the highest step, or None."""
    parent = Path(run_dir) / CHECKPOINTS_DIR
    if not parent.is_dir():
        return None
    found = [(int(match.group(1)), child) for child in parent.iterdir()
             if (match := _FOLDER.match(child.name)) and (child / STATE_FILE).is_file()]
    return max(found)[1] if found else None


_NETWORKS = {"lowres": LowResConfig, "sr": SRConfig}


def read_trainer_state(folder: Path) -> dict[str, Any]:
    """The checkpoint's trainer state; its grid and network are filled up to the current GridCard and network config
    fields (their defaults), so a run saved before such a field existed resumes and exports like one saved now."""
    try:
        state = json.loads((Path(folder) / STATE_FILE).read_text(encoding="utf-8"))
        if isinstance(state.get("grid"), dict):
            state["grid"] = asdict(GridCard(**state["grid"]))
        network = _NETWORKS.get(state.get("stage"))
        if network is not None and isinstance(state.get("network"), dict):
            state["network"] = network.from_dict(state["network"]).to_dict()
        return state
    except (OSError, json.JSONDecodeError, TypeError) as exc:
        raise MedSynError(f"{folder} is not a complete training checkpoint ({exc}); pick another step_<N> folder") \
            from exc


def load_checkpoint(folder: Path, online: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer
                    ) -> dict[str, Any]:
    """Restore weights, optimizer and RNG states in place; returns the trainer state."""
    state = read_trainer_state(folder)
    load_weights(online, folder / MODEL_FILE)
    load_weights(ema, folder / EMA_FILE)
    optimizer.load_state_dict(torch.load(folder / OPTIMIZER_FILE, map_location="cpu", weights_only=True))
    restore_rng_state(state["rng"])
    return state
