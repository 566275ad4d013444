"""Network-level benchmarks on this machine: one evaluation of the low-res and SR networks (random weights), whole
volume vs tiles, fp32 vs bf16, with peak memory; plus the memory model the presets use."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from measure import materialise, measure
from medsyn.diffusion.guidance import SRDenoiser
from medsyn.diffusion.precision import with_precision
from medsyn.diffusion.dpm_solver import dpmpp2m_sample
from medsyn.diffusion.tiled import FallbackSRDenoiser, Tile, TiledDenoiser, tiled_cost, window_count
from medsyn.networks.config import OFFICIAL_LOWRES, OFFICIAL_SR, LowResConfig, SRConfig
from medsyn.presets import SR_ACTIVATION_BYTES_PER_VOXEL, VOLUME_BYTES_PER_VOXEL
from rows import Row, shape_text

MIB = 2**20
CPU = torch.device("cpu")


@dataclass(frozen=True)
class NetworkSizes:
    label: str
    lowres: LowResConfig
    lowres_shape: tuple[int, int, int]
    sr: SRConfig
    sr_shape: tuple[int, int, int]
    sr_tiles: tuple[Tile, ...]  # the 2×2 and 3×3 in-plane window layouts of the 12 GB and 8 GB presets, at sr_shape


QUICK_SIZES = NetworkSizes(
    "small random configs", LowResConfig(dim=16, cond_dim=32, dim_mults=(1, 2, 4, 8), attn_heads=2),
    (16, 16, 16), SRConfig(dim=8, dim_mults=(1, 2, 4, 8), attn_heads=2), (8, 48, 48), ((8, 32, 32), (8, 24, 24)))
# SR whole-volume fp32 at 256³ needs ~38 GB, beyond this 24 GB machine: measured at 32×128×128 and scaled per voxel.
FULL_SIZES = NetworkSizes(
    "official size, random weights", OFFICIAL_LOWRES, (64, 64, 64), OFFICIAL_SR, (32, 128, 128),
    ((32, 80, 80), (32, 56, 56)))


def _build(config, seed: int):
    with torch.device("meta"):
        net = config.build()
    return materialise(net, seed)


def _evaluate(fn, warmup) -> tuple[torch.Tensor, object]:
    """Warm the kernels up on a small input, then measure one call."""
    with torch.inference_mode():
        warmup()
        result = {}
        measurement = measure(lambda: result.setdefault("out", fn()), CPU)
    return result["out"], measurement


def lowres_rows(sizes: NetworkSizes) -> tuple[list[Row], dict[str, float]]:
    """One low-res evaluation (text-conditioned, no CFG) in fp32 and bf16; returns rows and peak MiB by precision."""
    net = _build(sizes.lowres, seed=1)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, *sizes.lowres_shape, generator=generator)
    small = torch.randn(1, 4, 2, 16, 16, generator=generator)
    cond = torch.randn(1, 192, sizes.lowres.cond_dim, generator=generator)
    time = torch.full((1,), 500.0)
    rows, peaks, outputs = [], {}, {}
    for precision in ("fp32", "bf16"):
        call = with_precision(net, precision, "cpu")
        outputs[precision], m = _evaluate(lambda: call(x, time, cond), lambda: call(small, time, cond))
        peaks[precision] = m.peak_bytes / MIB
        rows.append(Row("low-res network, 1 evaluation", f"wall time + peak RSS added ({sizes.label})", "cpu",
                        precision, "1 NFE", shape_text(sizes.lowres_shape), m.seconds, peaks[precision]))
    rows[-1].result = f"bf16 vs fp32: {_agreement(outputs['bf16'], outputs['fp32'])}"
    return rows, peaks


def _agreement(a: torch.Tensor, b: torch.Tensor) -> str:
    """Relative L2 and max |Δ| of ``a`` against reference ``b`` (model space, range [-1, 1] after clipping)."""
    diff = (a.float() - b.float())
    return f"rel L2 {float(diff.norm() / b.norm()):.3g}, max abs Δ {float(diff.abs().max()):.3g}"


def sr_rows(sizes: NetworkSizes) -> tuple[list[Row], dict[str, float]]:
    """SR whole vs tiled (fp32, bf16): time, peak, agreement with whole fp32; returns rows and bytes/voxel."""
    net = _build(sizes.sr, seed=2)
    generator = torch.Generator().manual_seed(0)
    x_t = torch.randn(1, 4, *sizes.sr_shape, generator=generator)
    x_lr = torch.rand(1, 4, *sizes.sr_shape, generator=generator) * 2 - 1
    small = x_t[..., :2, :32, :32]
    time = torch.full((1,), 500.0)
    voxels = math.prod(sizes.sr_shape)
    rows, per_voxel, whole = [], {}, {}
    for precision in ("fp32", "bf16"):
        call = with_precision(net, precision, "cpu")
        whole[precision], m = _evaluate(lambda: SRDenoiser(call, x_lr)(x_t, time),
                                        lambda: call(small, time, small))
        per_voxel[precision] = m.peak_bytes / voxels
        whole[f"{precision}_peak"] = m.peak_bytes / MIB
        whole[f"{precision}_s"] = m.seconds
        rows.append(Row("SR network, whole volume", f"wall time + peak RSS added ({sizes.label})", "cpu", precision,
                        "1 NFE", shape_text(sizes.sr_shape), m.seconds, m.peak_bytes / MIB,
                        f"{per_voxel[precision]:.0f} B/voxel"
                        + (f" (presets use {SR_ACTIVATION_BYTES_PER_VOXEL[precision]})" if sizes.sr == OFFICIAL_SR
                           else "")
                        + ("" if precision == "fp32" else
                           f"; bf16 vs fp32: {_agreement(whole['bf16'], whole['fp32'])}")))
    for index, tile in enumerate(sizes.sr_tiles):
        for precision in ("fp32", "bf16") if index == len(sizes.sr_tiles) - 1 else ("fp32",):
            call = with_precision(net, precision, "cpu")
            out, m = _evaluate(lambda: TiledDenoiser(call, x_lr, tile)(x_t, time), lambda: call(small, time, small))
            rows.append(Row(
                "SR network, tiled", f"wall time + peak RSS added, {window_count(sizes.sr_shape, tile)} windows "
                f"{shape_text(tile)}, Gaussian blending", "cpu", precision, "1 NFE", shape_text(sizes.sr_shape),
                m.seconds, m.peak_bytes / MIB,
                f"peak {m.peak_bytes / MIB / whole[precision + '_peak']:.2f}× whole, time "
                f"{m.seconds / whole[precision + '_s']:.2f}× whole (work {tiled_cost(sizes.sr_shape, tile):.2f}×); "
                f"vs whole {precision}: {_agreement(out, whole[precision])}"))
    return rows, per_voxel


def sampler_buffer_row(sizes: NetworkSizes) -> Row:
    """Full-volume memory of SR sampling besides one window's activations, per volume voxel: a 1-step tiled
    DPM-Solver++ run (2 NFE) minus one window's forward, plus the noise and x_lr the pipeline holds before (4 fp32
    channels each). A small SR net suffices: these buffers do not depend on the network."""
    net = QUICK_SIZES.sr.build().eval()
    tile = sizes.sr_tiles[0]
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 4, *sizes.sr_shape, generator=generator)
    x_lr = torch.rand(1, 4, *sizes.sr_shape, generator=generator) * 2 - 1
    window, time = noise[..., :tile[0], :tile[1], :tile[2]].clone(), torch.full((1,), 500.0)
    _, one = _evaluate(lambda: net(window, time, window), lambda: net(window, time, window))
    _, run = _evaluate(lambda: dpmpp2m_sample(FallbackSRDenoiser(net, x_lr, [tile]), noise, 1, stage="sr"),
                       lambda: None)
    per_voxel = (run.peak_bytes - one.peak_bytes) / math.prod(sizes.sr_shape) + 2 * 4 * 4
    return Row("SR sampling, full-volume buffers", "peak RSS of a 1-step tiled DPM-Solver++ run minus one window's "
               "forward, + noise and x_lr", "cpu", "fp32", "dpmpp2m 1 (2 NFE)", shape_text(sizes.sr_shape),
               run.seconds, run.peak_bytes / MIB,
               f"{per_voxel:.0f} B per volume voxel (presets use {VOLUME_BYTES_PER_VOXEL})")


def projected_sr_rows(per_voxel: dict[str, float], label: str) -> list[Row]:
    """Whole-volume SR peak at 256³ from the measured bytes per voxel (the network's maps scale with voxels)."""
    voxels = 256**3
    return [Row("SR network, whole volume 256³", f"projection: measured B/voxel × 256³ ({label})", "cpu/gpu",
                precision, "1 NFE", "256×256×256", None, per_voxel[precision] * voxels / MIB,
                "projection, not measured") for precision in ("fp32", "bf16")]
