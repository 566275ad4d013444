"""Time and peak memory of one call on this machine, and random-weight networks of any size.

Peak memory on CPU is the process's resident high-water mark (Linux VmHWM, reset through /proc/self/clear_refs before
the call) minus the resident size before it. glibc is told to serve every allocation of 64 KiB or more with mmap, so
freed tensors leave the resident set at once and each measurement starts clean. On CUDA the caching allocator's own
peak counter is used.
"""
from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

_M_MMAP_THRESHOLD = -3
_CLEAR_REFS = Path("/proc/self/clear_refs")


def use_mmap_for_large_allocations() -> None:
    """Make freed tensors return to the OS (glibc only; elsewhere the CPU peaks are less exact)."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
    except OSError:
        pass


def _status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} missing from /proc/self/status")


def cpu_peak_supported() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


@dataclass
class Measurement:
    seconds: float
    peak_bytes: Optional[int]  # None where this platform cannot tell


def measure(fn: Callable[[], object], device: torch.device) -> Measurement:
    """Run ``fn`` once; wall time and the peak memory it added on ``device``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        return Measurement(time.perf_counter() - start, torch.cuda.max_memory_allocated(device) - base)
    tracked = cpu_peak_supported()
    base = _status_bytes("VmRSS") if tracked else 0
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    return Measurement(seconds, _status_bytes("VmHWM") - base if tracked else None)


def materialise(net: nn.Module, seed: int = 0) -> nn.Module:
    """Give a meta-device network real random weights on CPU: PyTorch's default init where a module has one,
    unit gains for the channel LayerNorms and N(0, 1) for the rest (the null text embedding)."""
    torch.manual_seed(seed)
    net = net.to_empty(device="cpu")
    with torch.no_grad():
        for name, param in net.named_parameters():
            param.fill_(1.0) if name.endswith("gamma") else param.normal_()
        for module in net.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return net.eval().requires_grad_(False)
