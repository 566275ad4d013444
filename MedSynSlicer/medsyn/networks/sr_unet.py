"""MedSyn's super-resolution U-Net (official ``Unet3D`` of eval_super_res.py), state_dict-exact.

Predicts the high-res x0 from x_t and the fixed nearest-upsampled low-res volume x_lr, fed as cat([x_lr, x_t]).
No text: the official per-level attention entries are disabled (Identity) and the middle has one self-attention.

``residual=True`` (never set by the official weights) predicts x0 − x_lr instead and adds x_lr back, with the head's
last convolution zero-initialised: an untrained network is then exactly nearest upsampling, so a small network
trained briefly keeps every structure of its low-res input (findings, thin airways) and only has to learn detail.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .blocks import PreNorm, Residual, ResnetBlock, SliceTokens, SpatialAttention, final_conv, init_conv, time_mlp
from .unet_levels import UpOrderSwitch, build_down_levels, build_up_levels, run_down, run_up

DISABLED_ATTENTION_SLOTS = 2  # Identity placeholders at level indices 2, 3 (linear attention, cross-attention)


class SRUNet3D(UpOrderSwitch, nn.Module):
    """SR MedSyn denoiser; ``up_order`` ("eval" | "train") is settable after loading, like the low-res net."""

    def __init__(self, dim: int, dim_mults: Sequence[int], channels: int = 4, attn_heads: int = 4,
                 resnet_groups: int = 8, init_kernel_size: int = 7, up_order: str = "eval",
                 residual: bool = False) -> None:
        super().__init__()
        dim_mults = tuple(dim_mults)
        self.up_order = up_order
        self.residual = residual
        time_dim = dim * 4
        mid_dim = dim * dim_mults[-1]
        self.init_conv0 = init_conv(channels * 2, dim, init_kernel_size)
        self.time_mlp = time_mlp(dim, time_dim)
        self.downs = build_down_levels(dim, dim_mults, time_dim, resnet_groups, DISABLED_ATTENTION_SLOTS)
        self.ups = build_up_levels(dim, dim_mults, time_dim, resnet_groups, DISABLED_ATTENTION_SLOTS)
        self.mid_block1 = ResnetBlock(mid_dim, mid_dim, time_dim, resnet_groups)
        self.mid_spatial_attn = Residual(PreNorm(mid_dim, SliceTokens(SpatialAttention(mid_dim, attn_heads))))
        self.mid_temporal_conv = ResnetBlock(mid_dim, mid_dim, time_dim, resnet_groups, temporal=True)
        self.mid_block2 = ResnetBlock(mid_dim, mid_dim, time_dim, resnet_groups)
        self.final_conv0 = final_conv(dim, channels, resnet_groups)
        if residual:
            nn.init.zeros_(self.final_conv0[-1].weight)
            nn.init.zeros_(self.final_conv0[-1].bias)

    def forward(self, x_t: torch.Tensor, time: torch.Tensor, x_lr: torch.Tensor) -> torch.Tensor:
        """x̂0 for x_t (B,C,D,H,W) at raw times (B,), given x_lr (B,C,D,H,W) in model space."""
        x = self.init_conv0(torch.cat((x_lr, x_t), dim=1))
        stem = x
        t = self.time_mlp(time)
        x, skips = run_down(self.downs, x, t)
        x = self.mid_block2(self.mid_temporal_conv(self.mid_spatial_attn(self.mid_block1(x, t)), t), t)
        x = run_up(self.ups, x, skips, t, self.up_order)
        out = self.final_conv0(torch.cat((x, stem), dim=1))
        return out + x_lr if self.residual else out
