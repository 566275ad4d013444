"""The down and up paths shared by the low-res and SR U-Nets, including the two official up-path orders.

A level is a ModuleList ``[block1, block2, <padding Identities>, temporal, resample]``: the low-res net has no padding
(indices 0-3); the SR net has two Identities where its disabled attention entries sit, so its parameterised entries are
0, 1, 4, 5 as in the official state_dict.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import MedSynError
from .blocks import ResnetBlock, downsample, upsample

UP_ORDERS = ("eval", "train")


def check_up_order(up_order: str) -> str:
    """Validate an up-path order: "eval" (block1, block2, temporal, upsample) or "train" (block1, upsample, ...)."""
    if up_order not in UP_ORDERS:
        raise MedSynError(f"unknown up_order {up_order!r}; use 'eval' or 'train'")
    return up_order


class UpOrderSwitch:
    """Mixin for the U-Nets: a validated, settable ``up_order`` so one set of loaded weights can run either order."""

    @property
    def up_order(self) -> str:
        return self._up_order

    @up_order.setter
    def up_order(self, value: str) -> None:
        self._up_order = check_up_order(value)


def level_dims(dim: int, dim_mults: tuple[int, ...]) -> list[tuple[int, int]]:
    """(in, out) channels per level: dims = [dim, dim·m1, dim·m2, ...]."""
    dims = [dim, *(dim * mult for mult in dim_mults)]
    return list(zip(dims[:-1], dims[1:]))


def build_down_levels(dim: int, dim_mults: tuple[int, ...], time_dim: int, groups: int, padding: int) -> nn.ModuleList:
    """Down levels; every level but the last halves H and W."""
    in_out = level_dims(dim, dim_mults)
    levels = []
    for index, (dim_in, dim_out) in enumerate(in_out):
        is_last = index == len(in_out) - 1
        levels.append(nn.ModuleList([
            ResnetBlock(dim_in, dim_out, time_dim, groups),
            ResnetBlock(dim_out, dim_out, time_dim, groups),
            *(nn.Identity() for _ in range(padding)),
            ResnetBlock(dim_out, dim_out, time_dim, groups, temporal=True),
            nn.Identity() if is_last else downsample(dim_out),
        ]))
    return nn.ModuleList(levels)


def build_up_levels(dim: int, dim_mults: tuple[int, ...], time_dim: int, groups: int, padding: int) -> nn.ModuleList:
    """Up levels mirroring the down levels; block1 takes cat(x, skip); every level but the last doubles H and W."""
    in_out = list(reversed(level_dims(dim, dim_mults)))
    levels = []
    for index, (dim_in, dim_out) in enumerate(in_out):
        is_last = index == len(in_out) - 1
        levels.append(nn.ModuleList([
            ResnetBlock(dim_out * 2, dim_in, time_dim, groups),
            ResnetBlock(dim_in, dim_in, time_dim, groups),
            *(nn.Identity() for _ in range(padding)),
            ResnetBlock(dim_in, dim_in, time_dim, groups, temporal=True),
            nn.Identity() if is_last else upsample(dim_in),
        ]))
    return nn.ModuleList(levels)


def run_down(levels: nn.ModuleList, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """block1 → block2 → push skip → downsample → temporal (the temporal block runs at the lower resolution)."""
    skips = []
    for level in levels:
        block1, block2, temporal, resample = level[0], level[1], level[-2], level[-1]
        x = block2(block1(x, t), t)
        skips.append(x)
        x = temporal(resample(x), t)
    return x, skips


def run_up(levels: nn.ModuleList, x: torch.Tensor, skips: list[torch.Tensor], t: torch.Tensor,
           up_order: str) -> torch.Tensor:
    """Each level: cat(x, skip) → block1, then the rest in the eval or train order (same weights, other function)."""
    for level, skip in zip(levels, reversed(skips)):
        block1, block2, temporal, resample = level[0], level[1], level[-2], level[-1]
        x = block1(torch.cat((x, skip), dim=1), t)
        if up_order == "eval":
            x = resample(temporal(block2(x, t), t))
        else:
            x = temporal(block2(resample(x), t), t)
    return x


def last_module_of_up_level(level: nn.ModuleList, up_order: str) -> nn.Module:
    """The module whose output is the level's output: the resampler in eval order, the temporal block in train order."""
    return level[-1] if up_order == "eval" else level[-2]
