"""Deterministic training samples: which case a sample reads and every random draw it makes depend on (seed, position).

A "position" numbers the samples of a run: step s, micro-batch m, rank r, batch slot b is position
s·G + (m·W + r)·B + b with G = B·A·W the global batch. Nothing depends on iterator or RNG state, so a resumed run
reads the same data and draws the same noise as an uninterrupted one, and DDP ranks read disjoint samples.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Iterator, Optional

import numpy as np
import torch

from ..codec import lowres_to_sr_condition
from ..data.dataset import PreparedDataset
from ..data.transforms import BLOCK_MAX_CHANNELS, block_view, lowres_on_grid
from ..errors import MedSynError

if TYPE_CHECKING:  # rendered_lowres draws its noise with this module's seeded_generator
    from .rendered_lowres import RenderedLowres

ORDER_STREAM, SAMPLE_STREAM = 0, 1
OFFICIAL_CROP, OFFICIAL_SIZE = 72, 256  # SR training crops 72×72 in-plane at 256³


def seeded_generator(seed: int, stream: int, counter: int) -> torch.Generator:
    """An independent CPU generator per (seed, stream, counter); SeedSequence decorrelates neighbouring counters."""
    state = np.random.SeedSequence([seed, stream, counter]).generate_state(1, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0]))


@dataclass(frozen=True)
class BatchLayout:
    """How a global batch is split into micro-batches (gradient accumulation) and ranks."""

    batch_size: int
    grad_accum: int
    world_size: int

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.world_size

    def rank_positions(self, rank: int, first_step: int, last_step: int) -> Iterator[int]:
        """Positions rank ``rank`` reads for steps [first_step, last_step), micro-batch by micro-batch."""
        for step in range(first_step, last_step):
            for micro in range(self.grad_accum):
                start = step * self.global_batch + (micro * self.world_size + rank) * self.batch_size
                yield from range(start, start + self.batch_size)


class DataOrder:
    """Epoch-wise shuffling: position p reads case perm_e[p mod N] with e = p div N and perm_e seeded by (seed, e)."""

    def __init__(self, num_cases: int, seed: int) -> None:
        if num_cases < 1:
            raise MedSynError("the training set is empty; add cases to the manifest")
        self.num_cases, self.seed = num_cases, seed

    def case_at(self, position: int) -> int:
        epoch, offset = divmod(position, self.num_cases)
        return self._permutation(epoch)[offset]

    @lru_cache(maxsize=2)
    def _permutation(self, epoch: int) -> list[int]:
        return torch.randperm(self.num_cases, generator=seeded_generator(self.seed, ORDER_STREAM, epoch)).tolist()


def default_crop(shape_zyx: list[int], factor: int) -> tuple[int, int]:
    """The official 72×72-at-256 in-plane crop scaled to this grid, kept a multiple of the SR factor."""
    def scaled(size: int) -> int:
        return min(size, max(factor, round(OFFICIAL_CROP * size / OFFICIAL_SIZE / factor) * factor))

    return scaled(shape_zyx[1]), scaled(shape_zyx[2])


class TrainingSamples(torch.utils.data.Dataset):
    """Map-style dataset indexed by position; yields x0, the diffusion time and noise, and the stage's condition."""

    def __init__(self, data: PreparedDataset, stage: str, seed: int, text_dropout: float = 0.1,
                 crop: Optional[tuple[int, ...]] = None, lr_noise_max: float = 0.4, tree_thinning: float = 0.0,
                 rendered: Optional["RenderedLowres"] = None, rendered_share: float = 0.0,
                 mask_dropout: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> None:
        self.data, self.stage, self.seed = data, stage, seed
        self.order = DataOrder(len(data), seed)
        self.text_dropout, self.lr_noise_max = text_dropout, lr_noise_max
        self.block_max_channels = list(BLOCK_MAX_CHANNELS[data.grid.lowres_masks])
        if tree_thinning and not self.block_max_channels:
            raise MedSynError("tree_thinning needs a grid with block-max trees (lowres_masks = block_max or "
                              "block_max_airway); it thins them")
        self.tree_thinning = tree_thinning
        self.rendered, self.rendered_share = rendered, rendered_share
        self.mask_dropout = mask_dropout
        self.factor = data.grid.sr_factor
        shape_zyx = list(data.grid.shape_zyx)
        crop = crop or default_crop(shape_zyx, self.factor)
        self.crop_zyx = tuple(crop) if len(crop) == 3 else (shape_zyx[0], *crop)  # (H, W): full depth
        if stage == "lowres" and not data.has_text:
            raise MedSynError("the low-res stage needs text features; pass a text encoder folder")
        if stage == "sr":
            _check_crop(self.crop_zyx, shape_zyx, self.factor)

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        generator = seeded_generator(self.seed, SAMPLE_STREAM, position)
        index = self.order.case_at(position)
        sample = {"case": torch.tensor(index), "loss_mask": self.data.loss_mask(index)}
        if self.stage == "lowres":
            x0 = self.data.lowres(index)
            sample["cond"] = self.data.text_features(index)
        else:
            start, x0 = self._random_crop(index, generator)
        sample.update(x0=x0, t=torch.rand((), generator=generator), noise=torch.randn(x0.shape, generator=generator))
        if self.stage == "lowres":
            sample["drop_text"] = torch.rand((), generator=generator) < self.text_dropout
        else:
            sample["x_lr"] = self._degraded_lowres(index, start, x0, generator)
        return sample

    def _random_crop(self, index: int, generator: torch.Generator) -> tuple[tuple[int, int, int], torch.Tensor]:
        """Crop at multiples of the SR factor, so its every f-th voxel lies on the low-res grid (full depth, in-plane
        windows by default as in the official code; a depth slab of whole axial planes when asked for).

        No random flips: left and right lungs differ (two vs three lobes), and a flip would teach impossible anatomy.
        """
        (depth, height, width), (crop_d, crop_h, crop_w) = self.data.grid.shape_zyx, self.crop_zyx
        z0 = self._offset(depth, crop_d, generator) if crop_d < depth else 0  # no draw: full-depth runs as before
        start = (z0, self._offset(height, crop_h, generator), self._offset(width, crop_w, generator))
        return start, self.data.image_crop(index, start, self.crop_zyx)

    def _offset(self, length: int, size: int, generator: torch.Generator) -> int:
        return self.factor * int(torch.randint((length - size) // self.factor + 1, (), generator=generator))

    def _degraded_lowres(self, index: int, start: tuple[int, int, int], x0: torch.Tensor,
                         generator: torch.Generator) -> torch.Tensor:
        """Official "gaussian_aug": nearest down/up by f, then x_lr ← (1−a)·x_lr + a·N(0,1) with a ~ U(0, max)."""
        low = self._lowres_condition(index, start, x0, generator)
        x_lr = lowres_to_sr_condition(low[None], self.factor)[0]
        alpha = torch.rand((), generator=generator) * self.lr_noise_max
        return (1 - alpha) * x_lr + alpha * torch.randn(x_lr.shape, generator=generator)

    def _lowres_condition(self, index: int, start: tuple[int, int, int], x0: torch.Tensor,
                          generator: torch.Generator) -> torch.Tensor:
        """The crop's low-res volume: the low-res network's rendering of the case for a ``rendered_share`` of samples,
        else cut from the crop itself (trees thinned when asked for), then mask channels blanked at their dropout
        chance. Draws happen only for the options in use, so runs without them keep their random stream."""
        if self.rendered is not None and torch.rand((), generator=generator) < self.rendered_share:
            window = tuple(offset // self.factor for offset in start), tuple(s // self.factor for s in x0.shape[1:])
            low = self.rendered.crop(self.data.case_id(index), *window)
        else:
            low = lowres_on_grid(x0, self.data.grid)
            if self.tree_thinning:
                low = self._thinned_trees(x0, low, torch.rand((), generator=generator) * self.tree_thinning)
        return self._masks_dropped(low, generator)

    def _masks_dropped(self, low: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Blank each mask channel (lobes, airway, vessels) to background (-1) at its dropout chance."""
        blanked = [channel for channel, chance in enumerate(self.mask_dropout, start=1)
                   if chance and torch.rand((), generator=generator) < chance]
        if blanked:
            low = low.clone()  # a subsampled low-res volume is a view of x0, the target
            low[blanked] = -1.0
        return low

    def _thinned_trees(self, x0: torch.Tensor, low: torch.Tensor, share: torch.Tensor) -> torch.Tensor:
        """Block-max tree channels keeping only blocks more than ``share`` inside: share 0 is the block max itself."""
        channels = self.block_max_channels
        occupancy = block_view((x0[channels] > 0).float(), self.factor).mean(dim=(-5, -3, -1))
        low = low.clone()
        low[channels] = torch.where(occupancy > share, 1.0, -1.0).to(low.dtype)
        return low


def _check_crop(crop_zyx: tuple[int, int, int], shape_zyx: list[int], factor: int) -> None:
    for size, limit, axis in zip(crop_zyx, shape_zyx, ("depth", "height", "width")):
        if size < factor or size > limit or size % factor:
            raise MedSynError(f"crop {axis} {size} must be a multiple of the SR factor {factor} between {factor} "
                              f"and the grid's {limit}; pass e.g. --crop {limit}x{limit}")
