"""Work of one network evaluation counted on the meta device (no memory, no compute), and a GPU time projection.

Every ATen op is recorded with its FLOPs (PyTorch's own flop formulas, the ones FlopCounterMode uses) and the bytes
of its tensor inputs and outputs (views move nothing and count nothing). A per-op roofline then bounds the time on a
GPU: each op takes at least max(FLOPs / peak compute, bytes / memory bandwidth); the projection divides those peaks by
assumed achievable fractions. It is a projection, not a measurement.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry


@dataclass(frozen=True)
class Gpu:
    name: str
    peak_flops: float  # dense bf16 tensor-core FLOP/s
    bandwidth: float  # bytes/s
    compute_fraction: float = 0.5  # achievable share of peak for 3-D convolutions (assumption)
    bandwidth_fraction: float = 0.7  # achievable share of bandwidth for normalisation / elementwise ops (assumption)


H100_SXM = Gpu("NVIDIA H100 SXM (projection)", peak_flops=989e12, bandwidth=3.35e12)


@dataclass
class OpCost:
    flops: int
    bytes: int


class OpCostMode(TorchDispatchMode):
    """Records (FLOPs, bytes moved) for every op run inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[OpCost] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func._overloadpacket
        if packet not in flop_registry:  # composite ops (conv3d, linear…) are recorded as the ops they consist of
            with self:  # the mode is switched off while it dispatches; re-enter it for the parts
                decomposed = func.decompose(*args, **kwargs)
            if decomposed is not NotImplemented:
                return decomposed
        out = func(*args, **kwargs)
        flops = flop_registry[packet](*args, **kwargs, out_val=out) if packet in flop_registry else 0
        moved = 0 if func.is_view else sum(t.numel() * t.element_size() for t in tree_leaves((args, kwargs, out))
                                           if isinstance(t, torch.Tensor))
        self.ops.append(OpCost(int(flops), int(moved)))
        return out

    @property
    def flops(self) -> int:
        return sum(op.flops for op in self.ops)

    @property
    def bytes(self) -> int:
        return sum(op.bytes for op in self.ops)

    def projected_seconds(self, gpu: Gpu) -> float:
        """Σ over ops of max(compute time, memory time) at the achievable fractions of the GPU's peaks."""
        compute = gpu.peak_flops * gpu.compute_fraction
        memory = gpu.bandwidth * gpu.bandwidth_fraction
        return sum(max(op.flops / compute, op.bytes / memory) for op in self.ops)


def count_ops(fn) -> OpCostMode:
    """Run ``fn`` (on meta tensors) under the recorder and return it."""
    mode = OpCostMode()
    with mode, torch.inference_mode():
        fn()
    return mode
