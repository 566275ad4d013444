"""Building blocks of MedSyn's 3-D U-Nets, with the official module names so checkpoints load key-for-key.

Layout everywhere is (B, C, D, H, W); D is what the official code calls "frames". Resampling is in-plane only; depth is
mixed solely by the 3×3×3 "temporal" ResNet blocks. Attention goes through ``scaled_dot_product_attention`` (the
official xformers call is the same maths) with depth folded into the batch, so no Python loop ever runs over slices.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

ATTN_DIM_HEAD = 32  # the official constructors accept attn_dim_head but always build 32-wide heads
TEXT_MEMO_SIZE = 4  # texts kept by ``reuse_text_keys``: cond and null for CFG, with room to spare


class SinusoidalPosEmb(nn.Module):
    """Sinusoidal embedding of the raw timestep (0..1000): [sin(t·f), cos(t·f)] with geometric frequencies."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, time: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        scale = math.log(10000) / (half - 1)
        freqs = torch.exp(torch.arange(half, device=time.device) * -scale)
        angles = time[:, None] * freqs[None, :]
        return torch.cat((angles.sin(), angles.cos()), dim=-1)


class Block(nn.Module):
    """Conv → GroupNorm → optional FiLM ``x·(scale+1)+shift`` → SiLU; in-plane 1×3×3 or full 3×3×3 kernel."""

    def __init__(self, dim: int, dim_out: int, groups: int, temporal: bool) -> None:
        super().__init__()
        kernel, padding = ((3, 3, 3), (1, 1, 1)) if temporal else ((1, 3, 3), (0, 1, 1))
        self.proj = nn.Conv3d(dim, dim_out, kernel, padding=padding)
        self.norm = nn.GroupNorm(groups, dim_out)

    def forward(self, x: torch.Tensor, scale_shift: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        x = self.norm(self.proj(x))
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return F.silu(x)


class ResnetBlock(nn.Module):
    """Two Blocks plus a residual; the time embedding modulates the first Block only.

    ``temporal=True`` is the official ``ResnetBlock3d`` (3×3×3 kernels); ``time_emb_dim=None`` drops the time MLP
    (the head's ResnetBlock).
    """

    def __init__(self, dim: int, dim_out: int, time_emb_dim: Optional[int], groups: int,
                 temporal: bool = False) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_emb_dim, dim_out * 2)) if time_emb_dim else None
        self.block1 = Block(dim, dim_out, groups, temporal)
        self.block2 = Block(dim_out, dim_out, groups, temporal)
        self.res_conv = nn.Conv3d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, time_emb: Optional[torch.Tensor] = None) -> torch.Tensor:
        scale_shift = None
        if self.mlp is not None and time_emb is not None:
            film = self.mlp(time_emb)[:, :, None, None, None]
            scale_shift = film.chunk(2, dim=1)
        h = self.block2(self.block1(x, scale_shift))
        return h + self.res_conv(x)


class LayerNorm(nn.Module):
    """Channel LayerNorm of a 5-D tensor: biased variance, eps 1e-5, gain ``gamma`` (1,C,1,1,1), no bias."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(1, dim, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = torch.var(x, dim=1, unbiased=False, keepdim=True)
        mean = torch.mean(x, dim=1, keepdim=True)
        return (x - mean) / (var + self.eps).sqrt() * self.gamma


class PreNorm(nn.Module):
    """``fn(norm(x), *args)``."""

    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        self.norm = LayerNorm(dim)

    def forward(self, x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x), *args)


class Residual(nn.Module):
    """``fn(x, *args) + x``."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        return self.fn(x, *args) + x


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(N, tokens, heads·32) → (N, heads, tokens, 32), head-major like the official ``(h d)`` split."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(N, heads, tokens, 32) → (N, tokens, heads·32)."""
    return x.transpose(1, 2).flatten(2)


class SpatialAttention(nn.Module):
    """Multi-head self-attention over the tokens of (N, tokens, C) input; no positional bias (as released)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        hidden = heads * ATTN_DIM_HEAD
        self.to_qkv = nn.Linear(dim, hidden * 3, bias=False)
        self.to_out = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (_split_heads(part, self.heads) for part in self.to_qkv(x).chunk(3, dim=-1))
        return self.to_out(_merge_heads(F.scaled_dot_product_attention(q, k, v)))


class SliceTokens(nn.Module):
    """Runs ``fn`` per axial slice: (B,C,D,H,W) → (B·D, H·W, C) tokens → back (the official EinopsToAndFrom)."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        tokens = x.permute(0, 2, 3, 4, 1).reshape(b * d, h * w, c)
        out = self.fn(tokens)
        return out.reshape(b, d, h, w, c).permute(0, 4, 1, 2, 3)


class CrossAttention(nn.Module):
    """Per-slice cross-attention from voxels (queries) to the text tokens (keys/values), no key mask.

    Officially the text is tiled once per slice and each slice attends separately; since every query of every slice
    of one volume sees the same keys, attending with all D·H·W queries of a volume at once is the same computation
    without the tiling.
    """

    def __init__(self, dim: int, heads: int, cond_dim: int) -> None:
        super().__init__()
        self.heads = heads
        hidden = heads * ATTN_DIM_HEAD
        self.to_q = nn.Conv2d(dim, hidden, 1, bias=False)
        self.to_kv = nn.Linear(cond_dim, hidden * 2, bias=False)
        self.to_out = nn.Conv2d(hidden, dim, 1)
        self.text_memo: Optional[dict] = None  # set by ``reuse_text_keys`` for the length of one sampling run

    def _keys_values(self, cond: torch.Tensor) -> torch.Tensor:
        """to_kv(cond), computed once per text tensor while a ``reuse_text_keys`` block runs without autograd."""
        if self.text_memo is None or torch.is_grad_enabled():
            return self.to_kv(cond)
        device = cond.device.type
        autocast = torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)
        key = (id(cond), torch.get_autocast_dtype(device) if autocast else None)
        hit = self.text_memo.get(key)
        if hit is None or hit[0] is not cond:  # the stored reference keeps id(cond) from being reused meanwhile
            if len(self.text_memo) >= TEXT_MEMO_SIZE:  # a caller that builds a new text tensor per step
                self.text_memo.pop(next(iter(self.text_memo)))
            hit = self.text_memo[key] = (cond, self.to_kv(cond))
        return hit[1]

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """``cond`` is (1 or B, tokens, cond_dim); one text row is shared by the whole batch without copying."""
        b, c, d, h, w = x.shape
        tokens = x.permute(0, 2, 3, 4, 1).reshape(b, d * h * w, c)
        q = _split_heads(F.linear(tokens, self.to_q.weight.flatten(1)), self.heads)
        kv = self._keys_values(cond).expand(b, -1, -1)
        k, v = (_split_heads(part, self.heads) for part in kv.chunk(2, dim=-1))
        out = _merge_heads(F.scaled_dot_product_attention(q, k, v))
        out = F.linear(out, self.to_out.weight.flatten(1), self.to_out.bias)
        return out.reshape(b, d, h, w, c).permute(0, 4, 1, 2, 3)


@contextmanager
def reuse_text_keys(net: nn.Module) -> Iterator[None]:
    """Within the block, each cross-attention of ``net`` projects a given text tensor to keys/values only once:
    a sampling run feeds the same text at every step, so this moves that work out of the step loop. Same numbers."""
    attentions = [m for m in net.modules() if isinstance(m, CrossAttention)]
    for attention in attentions:
        attention.text_memo = {}
    try:
        yield
    finally:
        for attention in attentions:
            attention.text_memo = None


def downsample(dim: int) -> nn.Conv3d:
    """In-plane ×½ (depth kept)."""
    return nn.Conv3d(dim, dim, (1, 4, 4), (1, 2, 2), (0, 1, 1))


def upsample(dim: int) -> nn.ConvTranspose3d:
    """In-plane ×2 (depth kept)."""
    return nn.ConvTranspose3d(dim, dim, (1, 4, 4), (1, 2, 2), (0, 1, 1))


def time_mlp(dim: int, time_dim: int) -> nn.Sequential:
    """Raw timestep → (B, time_dim) embedding; exact GELU as in the official code."""
    return nn.Sequential(SinusoidalPosEmb(dim), nn.Linear(dim, time_dim), nn.GELU(), nn.Linear(time_dim, time_dim))


def init_conv(dim_in: int, dim_out: int, kernel_size: int) -> nn.Conv3d:
    """The stem: one isotropic ``kernel_size``³ convolution with 'same' padding."""
    return nn.Conv3d(dim_in, dim_out, kernel_size, padding=kernel_size // 2)


def final_conv(dim: int, out_channels: int, groups: int) -> nn.Sequential:
    """The head applied to cat(x, stem output): ResnetBlock(2·dim → dim, no time) then a 1×1×1 conv."""
    return nn.Sequential(ResnetBlock(dim * 2, dim, None, groups), nn.Conv3d(dim, out_channels, 1))
