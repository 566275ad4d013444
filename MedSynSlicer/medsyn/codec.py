"""Encodings between clinical units and MedSyn's model space [-1, 1] (channels 0=CT, 1=lobe, 2=airway, 3=vessel).

numpy only at module scope: torch is imported inside ``lowres_to_sr_condition`` so decoding and file writing work
without it (e.g. in Slicer's process).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from medsyn.errors import MedSynError

if TYPE_CHECKING:
    import torch

DEFAULT_HU_WINDOW: tuple[float, float] = (-1024.0, 600.0)
NUM_LOBE_LABELS = 5  # LUL=1, LLL=2, RUL=3, RML=4, RLL=5; 0 = outside the lungs


@dataclass(frozen=True)
class DecodedVolume:
    """One generated volume in clinical units, arrays in (z, y, x)."""

    ct_hu: np.ndarray  # int16 Hounsfield units
    lobes: np.ndarray  # uint8 0..5
    airway: np.ndarray  # uint8 0/1
    vessels: np.ndarray  # uint8 0/1

    def __post_init__(self) -> None:
        # Writers store these dtypes as they are, so a float CT would silently become a float NIfTI.
        expected = {"ct_hu": np.int16, "lobes": np.uint8, "airway": np.uint8, "vessels": np.uint8}
        for name, dtype in expected.items():
            if getattr(self, name).dtype != dtype:
                raise ValueError(f"DecodedVolume.{name} must be {np.dtype(dtype)}, got {getattr(self, name).dtype}")
        if len({getattr(self, name).shape for name in expected}) != 1:
            raise ValueError("DecodedVolume arrays must share one shape")


def hu_to_model(ct_hu: np.ndarray, hu_window: tuple[float, float] = DEFAULT_HU_WINDOW) -> np.ndarray:
    """Clip HU to the window and map it linearly onto [-1, 1] (float32)."""
    low, high = _checked_window(hu_window)
    clipped = np.clip(np.asarray(ct_hu, dtype=np.float32), low, high)
    return ((clipped - low) / (high - low) * 2.0 - 1.0).astype(np.float32)


def model_to_hu(values: np.ndarray, hu_window: tuple[float, float] = DEFAULT_HU_WINDOW) -> np.ndarray:
    """Inverse of ``hu_to_model``, rounded to int16 and saturating at the window.

    Rounding, not the official cast's truncation toward zero, which shifts every voxel by up to 1 HU.
    """
    low, high = _checked_window(hu_window)
    unit = (np.clip(np.asarray(values, dtype=np.float32), -1.0, 1.0) + 1.0) / 2.0
    return np.rint(unit * (high - low) + low).astype(np.int16)


def lobes_to_model(lobes: np.ndarray) -> np.ndarray:
    """Lobe label k in 0..5 -> 2k/5 - 1, one grey level per lobe in a single channel."""
    return (np.asarray(lobes, dtype=np.float32) * (2.0 / NUM_LOBE_LABELS) - 1.0).astype(np.float32)


def model_to_lobes(values: np.ndarray) -> np.ndarray:
    """Nearest lobe label of each value: round((v + 1) * 5 / 2), clipped to 0..5."""
    labels = np.rint((np.asarray(values, dtype=np.float32) + 1.0) * (NUM_LOBE_LABELS / 2.0))
    return np.clip(labels, 0, NUM_LOBE_LABELS).astype(np.uint8)


def mask_to_model(mask: np.ndarray) -> np.ndarray:
    """Binary mask {0, 1} -> {-1, +1}."""
    return (np.asarray(mask, dtype=np.float32) * 2.0 - 1.0).astype(np.float32)


def model_to_mask(values: np.ndarray) -> np.ndarray:
    """Positive values are inside the structure."""
    return (np.asarray(values) > 0).astype(np.uint8)


def encode_volume(
    ct_hu: np.ndarray,
    lobes: np.ndarray,
    airway: np.ndarray,
    vessels: np.ndarray,
    hu_window: tuple[float, float] = DEFAULT_HU_WINDOW,
) -> np.ndarray:
    """Stack CT and anatomy into the model's (4, D, H, W) float32 array; reject what the model cannot represent."""
    named = {"CT": ct_hu, "lobes": lobes, "airway": airway, "vessels": vessels}
    arrays = {name: np.asarray(array) for name, array in named.items()}
    for name, array in arrays.items():
        if array.ndim != 3:
            raise MedSynError(f"{name} must be a 3-D volume, got shape {array.shape}")
        if array.dtype.kind == "f" and np.isnan(array).any():
            raise MedSynError(f"{name} contains NaN voxels; fill or mask them before encoding")
    shapes = {name: array.shape for name, array in arrays.items()}
    if len(set(shapes.values())) != 1:
        raise MedSynError(f"CT and anatomy volumes differ in shape {shapes}; resample them onto one grid")
    _check_labels(arrays["lobes"], "lobes", NUM_LOBE_LABELS)
    _check_labels(arrays["airway"], "airway", 1)
    _check_labels(arrays["vessels"], "vessels", 1)
    return np.stack(
        [
            hu_to_model(arrays["CT"], hu_window),
            lobes_to_model(arrays["lobes"]),
            mask_to_model(arrays["airway"]),
            mask_to_model(arrays["vessels"]),
        ]
    )


def decode_volume(x4: np.ndarray, hu_window: tuple[float, float] = DEFAULT_HU_WINDOW) -> DecodedVolume:
    """Split a (4, D, H, W) model-space volume into CT HU and label maps."""
    values = np.asarray(x4)
    if values.ndim != 4 or values.shape[0] != 4:
        raise ValueError(f"expected a (4, D, H, W) volume, got shape {values.shape}")
    return DecodedVolume(
        ct_hu=model_to_hu(values[0], hu_window),
        lobes=model_to_lobes(values[1]),
        airway=model_to_mask(values[2]),
        vessels=model_to_mask(values[3]),
    )


def lowres_to_sr_condition(x_lowres: "torch.Tensor", factor: int) -> "torch.Tensor":
    """Nearest ×factor upsampling of a (B, 4, d, h, w) low-res result in [-1, 1]: the SR network's ``x_lr`` input.

    The official code goes through [0, 1] and back ((up((x+1)/2) - 0.5) * 2); nearest upsampling only copies values, so
    upsampling in [-1, 1] directly gives the same tensor.
    """
    import torch.nn.functional as F

    if x_lowres.ndim != 5:
        raise ValueError(f"expected a (B, C, D, H, W) tensor, got shape {tuple(x_lowres.shape)}")
    return F.interpolate(x_lowres, scale_factor=factor, mode="nearest")


def _checked_window(hu_window: tuple[float, float]) -> tuple[float, float]:
    low, high = (float(v) for v in hu_window)
    if not low < high:
        raise MedSynError(f"HU window {hu_window} must be (low, high) with low < high; fix the model card")
    return low, high


def _check_labels(array: np.ndarray, name: str, max_label: int) -> None:
    if array.dtype.kind == "f" and not np.array_equal(array, np.rint(array)):
        raise MedSynError(f"{name} must hold integer labels 0..{max_label}, found fractional values")
    low, high = array.min(), array.max()
    if low < 0 or high > max_label:
        raise MedSynError(f"{name} labels must lie in 0..{max_label}, found {low}..{high}; relabel the segmentation")
