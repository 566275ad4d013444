"""Read side of a prepared folder (see ``prepare.py``): per-case tensors read lazily, crops read without the rest."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import MedSynError
from ..models.card import GridCard
from .prepare import FORMAT_VERSION, INDEX_FILE


class PreparedDataset:
    """Cases of a prepared folder by index; nothing is held in memory but the index, so it scales to large sets."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        try:
            index = json.loads((self.folder / INDEX_FILE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise MedSynError(f"{self.folder} is not a prepared training folder ({exc}); prepare it again") from exc
        if index.get("format") != FORMAT_VERSION:
            raise MedSynError(f"{self.folder} was prepared by another medsyn version; delete it to prepare it again")
        self.grid = GridCard(**index["grid"])
        self.hu_window: list[float] = index["hu_window"]
        self.has_text: bool = index["has_text"]
        self._cases: list[dict] = index["cases"]

    def __len__(self) -> int:
        return len(self._cases)

    def case_id(self, index: int) -> str:
        return self._cases[index]["id"]

    def loss_mask(self, index: int) -> torch.Tensor:
        """(4,) float: 1 for channels this case has, 0 for masks it lacks."""
        return self._read(index, "loss_mask")

    def lowres(self, index: int) -> torch.Tensor:
        """(4, d, h, w) low-res volume, made from the SR image as the grid's ``lowres_ct`` and ``lowres_masks`` say."""
        return self._read(index, "lowres").float()

    def image_crop(self, index: int, start_zyx: tuple[int, int, int], size_zyx: tuple[int, int, int]
                   ) -> torch.Tensor:
        """(4, *size_zyx) crop of the SR image starting at ``start_zyx``; only the crop's bytes are read."""
        (z0, y0, x0), (depth, height, width) = start_zyx, size_zyx
        with safe_open(str(self.folder / self._cases[index]["file"]), framework="pt") as handle:
            return handle.get_slice("image")[:, z0:z0 + depth, y0:y0 + height, x0:x0 + width].float()

    def text_features(self, index: int) -> torch.Tensor:
        """(192, H) frozen-encoder features of the case's report."""
        if not self.has_text:
            raise MedSynError(f"{self.folder} was prepared without a text encoder; the low-res stage needs one")
        path = self.folder / "text" / f"{self._cases[index]['report']}.safetensors"
        with safe_open(str(path), framework="pt") as handle:
            return handle.get_tensor("features")

    def _read(self, index: int, key: str) -> torch.Tensor:
        with safe_open(str(self.folder / self._cases[index]["file"]), framework="pt") as handle:
            return handle.get_tensor(key)
