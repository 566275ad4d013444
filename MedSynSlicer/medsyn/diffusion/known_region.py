"""The one known-region mechanism: anatomy fixing, inpainting, outpainting and segmentation are masks over x̂0.

At every sampler step the predicted clean volume is overwritten by the known values where the mask holds (MedSyn's
channel fixing, generalised to per-voxel, per-channel masks). A float mask in [0, 1] blends (feathered boundary).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import MedSynError


@dataclass
class KnownRegion:
    """Known values ``values`` (B,C,D,H,W, model space) enforced where ``mask`` (broadcastable to values) is set."""

    mask: torch.Tensor
    values: torch.Tensor

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
        return KnownRegion(self.mask.to(device), self.values.to(device))
