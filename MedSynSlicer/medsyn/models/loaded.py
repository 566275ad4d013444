"""A model ready to sample: card + networks with verified weights + text encoder, on one device."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..errors import MedSynError
from ..text.encoder import FeatureCache, TextEncoder
from .card import ModelCard, StageCard, load_card
from .registry import resolve_model


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' → CUDA when present, else CPU; asking for CUDA on a machine without it is a user error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MedSynError("--device cuda was requested but no CUDA GPU is available; use --device cpu or auto")
    if device != "cpu" and not device.startswith("cuda"):
        raise MedSynError(f"unknown device '{device}'; use auto, cpu or cuda")
    return torch.device(device)


@dataclass
class LoadedModel:
    """Networks in eval mode on ``device``; ``weights_sha256`` names the exact weights for provenance."""

    card: ModelCard
    folder: Path
    device: torch.device
    lowres: nn.Module
    sr: Optional[nn.Module]
    text: TextEncoder
    features: FeatureCache

    @property
    def weights_sha256(self) -> dict[str, str]:
        shas = {"lowres": self.card.lowres.sha256}
        if self.card.sr is not None:
            shas["sr"] = self.card.sr.sha256
        return shas

    def encode(self, report: str) -> torch.Tensor:
        """Token features (1, 192, H) on the model's device, cached per report."""
        return self.features.get(report).to(self.device)


def _load_stage(folder: Path, stage: StageCard, kind: str, device: torch.device) -> nn.Module:
    from ..networks.config import LowResConfig, SRConfig
    from .weights import load_state_dict_strict, read_weight_file, sha256_file

    path = folder / stage.weights
    if not path.is_file():
        raise MedSynError(f"weights file {path} is missing; re-import or re-download the model")
    digest = sha256_file(path)
    if digest != stage.sha256:
        raise MedSynError(f"{path} is corrupt or was replaced (sha256 {digest[:12]}… ≠ card {stage.sha256[:12]}…)")
    config = (LowResConfig if kind == "lowres" else SRConfig).from_dict(stage.network)
    net = config.build()
    load_state_dict_strict(net, read_weight_file(path), source=str(path))
    return net.to(device).eval().requires_grad_(False)


def load_model(name_or_path: Optional[str] = None, device: str = "auto") -> LoadedModel:
    """Resolve, validate and load a model; every failure is a one-line MedSynError."""
    folder = resolve_model(name_or_path)
    card = load_card(folder)
    dev = resolve_device(device)
    lowres = _load_stage(folder, card.lowres, "lowres", dev)
    sr = _load_stage(folder, card.sr, "sr", dev) if card.sr is not None else None
    text = TextEncoder.from_folder(folder / card.text_encoder)
    if text.hidden_size != lowres.null_cond_emb.shape[-1]:
        raise MedSynError(f"text encoder width {text.hidden_size} does not match the network's cond_dim "
                          f"{lowres.null_cond_emb.shape[-1]}; the model card points at the wrong text encoder")
    return LoadedModel(card, folder, dev, lowres, sr, text, FeatureCache(text))
