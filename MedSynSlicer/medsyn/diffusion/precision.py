"""Reduced-precision network evaluation that leaves every sampler computation in float32.

Only the network forward runs under autocast (convolutions, attention and matmuls in bf16/fp16; PyTorch keeps
GroupNorm and softmax in fp32); its output is cast back to float32 before guidance, tile blending, the known-region
composite, clipping and the schedule arithmetic see it. The official code also sampled in fp32 (reference §3).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..errors import MedSynError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES: dict[str, Optional[torch.dtype]] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' → bf16 on a CUDA GPU that supports it, else fp16 on CUDA, fp32 on CPU; checks explicit choices."""
    if precision not in PRECISIONS:
        raise MedSynError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device.type != "cuda":
        raise MedSynError("fp16 needs a CUDA GPU; use --precision fp32 or bf16 on CPU")
    return precision


class PrecisionNetwork:
    """Calls ``net`` under autocast to ``precision`` and returns float32; exposes what the denoisers read from nets."""

    def __init__(self, net: nn.Module, precision: str, device_type: str) -> None:
        self.net, self.precision, self.device_type = net, precision, device_type
        self.dtype: torch.dtype = _DTYPES[precision]

    @property
    def null_cond_emb(self) -> torch.Tensor:
        return self.net.null_cond_emb

    def __call__(self, *args: Optional[torch.Tensor]) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = self.net(*args)
        return out.float()


def with_precision(net: nn.Module, precision: str, device_type: str) -> nn.Module | PrecisionNetwork:
    """``net`` itself for fp32 (no wrapper, bit-identical to before), else its autocast wrapper."""
    return net if _DTYPES[precision] is None else PrecisionNetwork(net, precision, device_type)
