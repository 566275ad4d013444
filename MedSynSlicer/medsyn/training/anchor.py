"""The anchor of a fine-tune: a frozen trained network whose own x̂0 is the target for chosen channels.

Why: a fine-tune that teaches one channel something new (the demo low-res network's empty airway channel) also moves
the shared weights behind the other channels, and in every such attempt the demo lost the effusion and heart
calibration its CT had. With an anchor, the other channels are trained towards what the original network predicts
for the same noisy input (distillation) rather than towards the data, so the fine-tune has no reason to change them.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .config import StageSpec
from .init_weights import load_init_weights


def load_anchor(spec: StageSpec, source: Path, stage: str, device: torch.device) -> tuple[torch.nn.Module, str]:
    """The stage's network with ``source``'s weights (file or model folder), frozen, in eval mode; and their sha256."""
    net = spec.network.build()
    sha256 = load_init_weights(net, source, stage)
    net.requires_grad_(False)
    return net.to(device).eval(), sha256
