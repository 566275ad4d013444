"""Reading and strictly loading MedSyn weights: safetensors or pickle-free ``.bin``, official key layouts normalised.

The official code loads with ``strict=False``, so a wrong prefix, a missing EMA file or a stale buffer silently leaves
random weights. Here every deviation is either a known, reported normalisation or a ``MedSynError`` with a key report.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import load_file
from torch import nn

from ..errors import MedSynError

WRAPPER_PREFIXES = ("module.", "denoise_fn.")  # DDP/accelerate wrapping, GaussianDiffusion(denoise_fn=Unet3D)

# Top-level buffers of older GaussianDiffusion versions (conditional_generalization.py); unused by DDIM sampling.
STALE_DIFFUSION_BUFFERS = frozenset({
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
    "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2", "ddim_sigmas", "ddim_alphas",
    "ddim_alphas_prev", "ddim_sqrt_one_minus_alphas", "ddim_sigmas_for_original_num_steps",
})

# The four low-res mid_spatial_attn{k} share one attention module; safetensors saves may keep only the first copy.
_SHARED_ATTENTION_KEY = re.compile(r"^mid_spatial_attn(\d+)\.fn\.norm\.gamma$")
_SHARED_ATTENTION_WEIGHTS = ("fn.fn.fn.to_qkv.weight", "fn.fn.fn.to_out.weight")

# Accelerate's save_state file names: model index 0 = online weights, index 1 = EMA.
CHECKPOINT_FILES = {
    "online": ("model.safetensors", "pytorch_model.bin"),
    "ema": ("model_1.safetensors", "pytorch_model_1.bin"),
}
_CHECKPOINT_FOLDER = re.compile(r"^(\d+)_ckpt$")
_REPORT_KEYS = 5


def read_weight_file(path: Path | str) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or ``.bin/.pt/.pth`` state_dict, on CPU, without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise MedSynError(f"weight file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".safetensors", ".bin", ".pt", ".pth"):
        raise MedSynError(f"unsupported weight file {path.name}; use .safetensors, .bin, .pt or .pth")
    try:
        if suffix == ".safetensors":
            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated or pickled non-tensor content: all mean "not a usable weight file"
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise MedSynError(f"cannot read {path} (corrupt or not a state_dict): {reason}") from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MedSynError(f"{path} is not a flat state_dict of tensors; export the model's state_dict()")
    return dict(state)


def sha256_file(path: Path | str) -> str:
    """Hex SHA-256 of a file, read in chunks (weights can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _strip_wrappers(key: str) -> str:
    while key.startswith(WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def _tie_shared_attention(state: dict[str, torch.Tensor]) -> int:
    """Fill missing mid_spatial_attn{k} weights from mid_spatial_attn1; refuse copies that disagree. Returns #tied."""
    rounds = sorted(int(m.group(1)) for m in map(_SHARED_ATTENTION_KEY.match, state) if m)
    tied = 0
    for suffix in _SHARED_ATTENTION_WEIGHTS:
        source = state.get(f"mid_spatial_attn1.{suffix}")
        if source is None:
            continue
        for k in rounds[1:]:
            key = f"mid_spatial_attn{k}.{suffix}"
            if key not in state:
                state[key] = source
                tied += 1
            elif not torch.equal(state[key], source):
                raise MedSynError(f"{key} differs from mid_spatial_attn1 although the official network shares it; "
                                  "the file is not a MedSyn low-res checkpoint")
    return tied


def normalize_official_state_dict(state: Mapping[str, torch.Tensor], kind: str
                                  ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map an official checkpoint's keys onto our networks' (``kind`` "lowres" or "sr"); also returns what was done."""
    if kind not in ("lowres", "sr"):
        raise MedSynError(f"unknown network kind {kind!r}; use 'lowres' or 'sr'")
    notes = []
    stripped = {_strip_wrappers(key): value for key, value in state.items()}
    if len(stripped) != len(state):
        raise MedSynError("checkpoint holds the same key with and without a module./denoise_fn. prefix; "
                          "save a single model's state_dict")
    renamed = sum(old != new for old, new in zip(state, stripped))
    if renamed:
        notes.append(f"stripped module./denoise_fn. prefixes from {renamed} keys")
    stale = sorted(key for key in stripped if key in STALE_DIFFUSION_BUFFERS)
    for key in stale:
        del stripped[key]
    if stale:
        notes.append(f"dropped {len(stale)} stale GaussianDiffusion buffers ({', '.join(stale[:3])}...)")
    if kind == "lowres":
        tied = _tie_shared_attention(stripped)
        if tied:
            notes.append(f"tied {tied} omitted shared spatial-attention keys to mid_spatial_attn1")
    return stripped, notes


def _shape_report(module: nn.Module, state: Mapping[str, torch.Tensor]) -> str:
    expected = module.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched = [f"{key}: file {tuple(state[key].shape)} vs network {tuple(value.shape)}"
                  for key, value in expected.items() if key in state and state[key].shape != value.shape]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatches", mismatched)):
        if items:
            more = f", ... (+{len(items) - _REPORT_KEYS})" if len(items) > _REPORT_KEYS else ""
            parts.append(f"{len(items)} {label} [{', '.join(items[:_REPORT_KEYS])}{more}]")
    return "; ".join(parts)


def load_state_dict_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load every key or none; a mismatch raises one readable line naming ``source`` and the first offending keys."""
    report = _shape_report(module, state)
    if report:
        raise MedSynError(f"{source} does not fit {type(module).__name__}: {report}; "
                          "check the model card's network config and the weight file")
    module.load_state_dict(state, strict=True)


def find_checkpoint_weights(path: Path | str, weights: str = "ema") -> Path:
    """The weight file to load from a file, an accelerate ``<N>_ckpt`` folder, or a results folder (largest N)."""
    if weights not in CHECKPOINT_FILES:
        raise MedSynError(f"unknown weights {weights!r}; use 'ema' or 'online'")
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise MedSynError(f"checkpoint not found: {path}")
    for name in CHECKPOINT_FILES[weights]:
        if (path / name).is_file():
            return path / name
    checkpoints = [(int(m.group(1)), child) for child in path.iterdir()
                   if child.is_dir() and (m := _CHECKPOINT_FOLDER.match(child.name))]
    if checkpoints:
        return find_checkpoint_weights(max(checkpoints)[1], weights)
    raise MedSynError(f"no {weights} weights in {path}: expected one of {', '.join(CHECKPOINT_FILES[weights])} "
                      "or <N>_ckpt sub-folders")
