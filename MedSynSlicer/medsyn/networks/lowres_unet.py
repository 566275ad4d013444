"""MedSyn's text-conditioned low-res U-Net (official ``Unet3D`` of eval_low_res_given_prompt.py), state_dict-exact.

Predicts x0 from (x_t, raw time 0..1000, text tokens (B, 192, cond_dim)). The middle runs four rounds of per-slice
self-attention (one shared attention module, separate norms), text cross-attention and a 3×3×3 ResNet block.
``parameterization="v"`` (never set by the official weights) reads the head as v and returns
x̂0 = √ᾱ·x_t − √(1−ᾱ)·v: the identity at low noise is built in, which a small network otherwise misses by tens of HU.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ..diffusion.schedule import NUM_TIMESTEPS, alpha_cumprod
from ..errors import MedSynError
from .blocks import CrossAttention, PreNorm, Residual, ResnetBlock, SliceTokens, SpatialAttention
from .blocks import final_conv, init_conv, time_mlp
from .unet_levels import UpOrderSwitch, build_down_levels, build_up_levels, run_down, run_up

TEXT_TOKENS = 192  # hard-coded text length of the official null embedding
PARAMETERIZATIONS = ("x0", "v")
MID_ROUNDS = 4


class LowResUNet3D(UpOrderSwitch, nn.Module):
    """Low-res MedSyn denoiser; ``up_order`` ("eval" | "train") selects the official up-path order and may be changed
    after loading, because both orders share one state_dict."""

    def __init__(self, dim: int, cond_dim: int, dim_mults: Sequence[int], channels: int = 4, attn_heads: int = 8,
                 resnet_groups: int = 8, init_kernel_size: int = 7, up_order: str = "eval",
                 parameterization: str = "x0") -> None:
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise MedSynError(f"unknown parameterization {parameterization!r}; use one of {PARAMETERIZATIONS}")
        dim_mults = tuple(dim_mults)
        self.up_order, self.parameterization = up_order, parameterization
        time_dim = dim * 4
        mid_dim = dim * dim_mults[-1]
        self.null_cond_emb = nn.Parameter(torch.randn(1, TEXT_TOKENS, cond_dim))
        self.init_conv = init_conv(channels, dim, init_kernel_size)
        self.time_mlp = time_mlp(dim, time_dim)
        self.downs = build_down_levels(dim, dim_mults, time_dim, resnet_groups, padding=0)
        self.ups = build_up_levels(dim, dim_mults, time_dim, resnet_groups, padding=0)
        self.mid_block1 = ResnetBlock(mid_dim, mid_dim, time_dim, resnet_groups)
        shared_attention = SpatialAttention(mid_dim, attn_heads)
        for k in range(1, MID_ROUNDS + 1):
            self.add_module(f"mid_spatial_attn{k}", Residual(PreNorm(mid_dim, SliceTokens(shared_attention))))
            self.add_module(f"mid_cross_attn{k}", Residual(PreNorm(mid_dim, CrossAttention(mid_dim, attn_heads,
                                                                                           cond_dim))))
            self.add_module(f"mid_temporal_attn{k}", ResnetBlock(mid_dim, mid_dim, time_dim, resnet_groups,
                                                                 temporal=True))
        self.mid_block2 = ResnetBlock(mid_dim, mid_dim, time_dim, resnet_groups)
        self.final_conv = final_conv(dim, channels, resnet_groups)

    def forward(self, x: torch.Tensor, time: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x̂0 for x (B,C,D,H,W) at raw times (B,); ``cond=None`` uses the learned null text embedding."""
        if cond is None:
            cond = self.null_cond_emb
        cond = cond.to(x.dtype)  # (1 or B, tokens, cond_dim): cross-attention shares one row across the batch
        x_t = x
        x = self.init_conv(x)
        stem = x
        t = self.time_mlp(time)
        x, skips = run_down(self.downs, x, t)
        x = self.mid_block1(x, t)
        for k in range(1, MID_ROUNDS + 1):
            x = getattr(self, f"mid_spatial_attn{k}")(x)
            x = getattr(self, f"mid_cross_attn{k}")(x, cond)
            x = getattr(self, f"mid_temporal_attn{k}")(x, t)
        x = self.mid_block2(x, t)
        x = run_up(self.ups, x, skips, t, self.up_order)
        out = self.final_conv(torch.cat((x, stem), dim=1))
        if self.parameterization == "x0":
            return out
        alpha = alpha_cumprod(time.float() / NUM_TIMESTEPS).view(-1, 1, 1, 1, 1).to(out)
        return alpha.sqrt() * x_t - (1 - alpha).sqrt() * out
