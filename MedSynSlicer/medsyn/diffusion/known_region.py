"""The one known-region mechanism: anatomy fixing, inpainting, outpainting and segmentation are masks over x̂0.

At every sampler step the predicted clean volume is overwritten by the known values where the mask holds (MedSyn's
channel fixing, generalised to per-voxel, per-channel masks). A float mask in [0, 1] blends (feathered boundary).
An optional RePaint-style ``Resampling`` lets the sampler revisit noisier times so generated and known parts agree.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..errors import MedSynError


@dataclass(frozen=True)
class Resampling:
    """RePaint's jump schedule: after every ``jump_length`` steps, re-noise back up ``jump_length`` steps and denoise
    them again, so each block is walked ``repeats`` times; ``seed`` makes the fresh re-noising reproducible."""

    jump_length: int
    repeats: int
    seed: int = 0

    def __post_init__(self) -> None:
        if self.jump_length < 1 or self.repeats < 1:
            raise MedSynError(f"resampling needs jump length and repeats of at least 1, got "
                              f"{self.jump_length} and {self.repeats}")


@dataclass
class KnownRegion:
    """Known values ``values`` (B,C,D,H,W, model space) enforced where ``mask`` (broadcastable to values) is set."""

    mask: torch.Tensor
    values: torch.Tensor
    resampling: Optional[Resampling] = None

    def __post_init__(self) -> None:
        try:
            torch.broadcast_shapes(self.mask.shape, self.values.shape)
        except RuntimeError as exc:
            raise MedSynError(f"known-region mask {tuple(self.mask.shape)} does not fit values "
                              f"{tuple(self.values.shape)}") from exc
        if torch.isnan(self.values).any():
            raise MedSynError("known values contain NaN; fix the input volume or mask")

    @classmethod
    def channels(cls, values: torch.Tensor, channels: list[int]) -> "KnownRegion":
        """Fix whole channels (the official ``modal`` list)."""
        mask = torch.zeros(1, values.shape[1], 1, 1, 1, dtype=torch.bool, device=values.device)
        mask[:, channels] = True
        return cls(mask, values)

    def apply(self, x0: torch.Tensor) -> torch.Tensor:
        """Return x̂0 with the known region replaced (exact copy for boolean masks, blend for float masks)."""
        mask = self.mask.to(x0.device)
        values = self.values.to(device=x0.device, dtype=x0.dtype)
        if mask.dtype == torch.bool:
            return torch.where(mask, values, x0)
        mask = mask.to(x0.dtype)
        return mask * values + (1 - mask) * x0

    def to(self, device: torch.device | str) -> "KnownRegion":
        return KnownRegion(self.mask.to(device), self.values.to(device), self.resampling)


def feather(mask: torch.Tensor, width: int) -> torch.Tensor:
    """Soft weights for a boolean (B,C,D,H,W) known mask: min(d, width)/width at chessboard distance d from the unknown
    region, so the generated part fades into the known part instead of meeting it at a hard edge.

    The ramp lies inside the known region: the unknown part stays fully free, nothing known leaks into it.
    """
    if width < 1:
        raise MedSynError(f"feather width must be at least 1 voxel, got {width}")
    grown = (~mask).float()
    weight = torch.zeros_like(grown)
    for _ in range(width):
        weight += 1 - grown
        grown = F.max_pool3d(grown, kernel_size=3, stride=1, padding=1)
    return weight / width
