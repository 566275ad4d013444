"""Super-resolution denoising in overlapping tiles, so peak memory follows the tile rather than the 256³ volume.

MONAI's ``sliding_window_inference`` cuts x_t and the fixed low-res condition x_lr into the same windows and blends the
windows' x̂0 with Gaussian weights. The SR net is convolutional except for its GroupNorm statistics and the bottleneck
self-attention over all in-plane tokens of a slice; both then see the tile only, so tiled x̂0 is close to, not equal
to, the whole-volume x̂0 (test_performance.py and benchmarks/RESULTS.md state by how much). The official SR was trained
on 256×72×72 crops, so a tile is the context it learned from.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from monai.data.utils import dense_patch_slices
from monai.inferers import sliding_window_inference

from ..errors import MedSynError
from .guidance import SRDenoiser

Tile = tuple[int, int, int]  # window (depth, height, width) in SR voxels
TilePlan = Optional[Tile]  # None: the whole volume in one forward
DEFAULT_OVERLAP = 0.25  # MONAI's default; with Gaussian blending, seams fall where both windows have low weight


def clip_tile(tile: Tile, shape: Sequence[int]) -> Tile:
    """The window actually used: never larger than the volume (MONAI would zero-pad, which the net never saw)."""
    return tuple(min(t, s) for t, s in zip(tile, shape))  # type: ignore[return-value]


def window_count(shape: Sequence[int], tile: Tile, overlap: float = DEFAULT_OVERLAP) -> int:
    """How many windows sliding_window_inference runs (its scan interval: int(roi·(1−overlap)), or roi if whole)."""
    tile = clip_tile(tile, shape)
    count = 1
    for size, roi in zip(shape, tile):
        interval = roi if roi == size else max(int(roi * (1 - overlap)), 1)
        count *= len(dense_patch_slices((size,), (roi,), (interval,)))
    return count


def tiled_cost(shape: Sequence[int], plan: TilePlan, overlap: float = DEFAULT_OVERLAP) -> float:
    """Network work of a plan relative to one whole-volume forward (overlap makes it > 1)."""
    if plan is None:
        return 1.0
    tile = clip_tile(plan, shape)
    return window_count(shape, tile, overlap) * math.prod(tile) / math.prod(shape)


class TiledDenoiser:
    """SR denoiser ``(x_t, t_raw) -> x̂0`` evaluated window by window (one window in memory at a time)."""

    def __init__(self, net, x_lr: torch.Tensor, tile: Tile, overlap: float = DEFAULT_OVERLAP) -> None:
        self.net, self.x_lr, self.tile, self.overlap = net, x_lr, tile, overlap

    def _window(self, x_t: torch.Tensor, time: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return self.net(x_t, time.expand(x_t.shape[0]), condition).float()

    def __call__(self, x_t: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        roi = clip_tile(self.tile, x_t.shape[2:])
        # One volume at a time: each has its own time, and sw_batch_size 1 keeps one window in memory.
        return torch.cat([
            sliding_window_inference(x_t[i:i + 1], roi, 1, self._window, self.overlap, mode="gaussian",
                                     time=time[i:i + 1], condition=self.x_lr[i:i + 1].to(x_t))
            for i in range(x_t.shape[0])])


class FallbackSRDenoiser:
    """SR denoiser over a chain of plans, largest first: when a step runs out of GPU memory (torch.OutOfMemoryError)
    it is retried with the next plan, which is then kept for the remaining steps. ``plan`` tells which one ran."""

    def __init__(self, net, x_lr: torch.Tensor, plans: Sequence[TilePlan], overlap: float = DEFAULT_OVERLAP) -> None:
        if not plans:
            raise ValueError("at least one SR plan is needed")
        self.net, self.x_lr, self.plans, self.overlap = net, x_lr, list(plans), overlap
        self.index = 0

    @property
    def plan(self) -> TilePlan:
        return self.plans[self.index]

    def _denoiser(self):
        if self.plan is None:
            return SRDenoiser(self.net, self.x_lr)
        return TiledDenoiser(self.net, self.x_lr, self.plan, self.overlap)

    def __call__(self, x_t: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        while True:
            try:
                return self._denoiser()(x_t, time)
            except torch.OutOfMemoryError:
                if self.index + 1 == len(self.plans):
                    raise MedSynError(f"out of memory in super-resolution even with {self.plan or 'whole'} tiles; "
                                      "close other GPU programs or use --device cpu") from None
            # Outside the except block the failed attempt's traceback, and with it its tensors, are already freed.
            self.index += 1
            if x_t.device.type == "cuda":
                torch.cuda.empty_cache()
