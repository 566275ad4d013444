"""Counted work of the official networks (meta device) and the projected official pipeline per GPU-memory preset.

Nothing here runs on a GPU: times are roofline projections (``projection.py``) labelled as such; the presets' peaks
come from the memory model in ``medsyn.presets`` (constants measured on CPU by ``network_bench``).
"""
from __future__ import annotations

from typing import Optional

import torch

from medsyn.diffusion.tiled import clip_tile, tiled_cost, window_count
from medsyn.networks.blocks import reuse_text_keys
from medsyn.networks.config import OFFICIAL_LOWRES, OFFICIAL_SR
from medsyn.presets import OFFICIAL_SR_SHAPE, preset_table
from projection import H100_SXM, OpCostMode, count_ops
from rows import Row, shape_text

LOWRES_SHAPE = (64, 64, 64)
# (name, low-res steps, SR steps): the official settings and the fast sampler's candidate setting.
SAMPLER_SETTINGS = (("ddim", 50, 20), ("dpmpp2m", 20, 10))
GIB = 2**30


def _official_networks():
    with torch.device("meta"):
        return OFFICIAL_LOWRES.build().eval(), OFFICIAL_SR.build().eval()


def _lowres_cost(lowres) -> tuple[OpCostMode, int]:
    """Ops of one low-res evaluation, and the FLOPs the text k/v reuse saves on each later step."""
    with torch.device("meta"):
        x, time, cond = torch.zeros(1, 4, *LOWRES_SHAPE), torch.zeros(1), torch.zeros(1, 192, 768)
        with reuse_text_keys(lowres):
            first = count_ops(lambda: lowres(x, time, cond))
            later = count_ops(lambda: lowres(x, time, cond))
    return first, first.flops - later.flops


def _sr_cost(sr, shape) -> OpCostMode:
    with torch.device("meta"):
        x, time = torch.zeros(1, 4, *shape), torch.zeros(1)
        return count_ops(lambda: sr(x, time, x))


def _bf16_seconds(cost: OpCostMode) -> float:
    """Projected bf16 time: same FLOPs, half the bytes (every tensor is 2 bytes instead of 4)."""
    compute = H100_SXM.peak_flops * H100_SXM.compute_fraction
    memory = H100_SXM.bandwidth * H100_SXM.bandwidth_fraction
    return sum(max(op.flops / compute, op.bytes / 2 / memory) for op in cost.ops)


def _lowres_stage_bytes(lowres, activation_bytes: float) -> float:
    """Low-res stage on a GPU under bf16 autocast: fp32 weights, their cached bf16 copies, the activations."""
    weights = sum(p.numel() for p in lowres.parameters())
    return weights * 4 + weights * 2 + activation_bytes


def projection_rows(lowres_bf16_activation_mib: Optional[float] = None) -> list[Row]:
    """``lowres_bf16_activation_mib``: the measured peak of one official-size bf16 low-res evaluation, if any."""
    lowres, sr = _official_networks()
    low_cost, kv_saved = _lowres_cost(lowres)
    whole = _sr_cost(sr, OFFICIAL_SR_SHAPE)
    rows = [
        Row("low-res network, official 716 M params", "FLOPs counted on meta (torch flop formulas)", "meta", "-",
            "1 NFE", shape_text(LOWRES_SHAPE), _bf16_seconds(low_cost), None,
            f"{low_cost.flops / 1e12:.2f} TFLOP, {low_cost.bytes / 1e9:.1f} GB moved (fp32); seconds = H100 "
            f"bf16 projection; text k/v reuse saves {kv_saved / 1e9:.2f} GFLOP per later step"),
        Row("SR network, official 54 M params", "FLOPs counted on meta (torch flop formulas)", "meta", "-", "1 NFE",
            shape_text(OFFICIAL_SR_SHAPE), _bf16_seconds(whole), None,
            f"{whole.flops / 1e12:.2f} TFLOP, {whole.bytes / 1e9:.0f} GB moved (fp32); seconds = H100 bf16 "
            "projection"),
    ]
    low_s = _bf16_seconds(low_cost)
    lowres_bytes = sum(p.numel() * 4 for p in lowres.parameters())
    sr_bytes = sum(p.numel() * 4 for p in sr.parameters())
    for memory_gb, preset in preset_table(lowres_bytes, sr_bytes, align=8):
        plan = preset.sr_plans[0]
        if plan is None:
            sr_s, layout = _bf16_seconds(whole), "whole volume"
        else:
            tile = clip_tile(plan, OFFICIAL_SR_SHAPE)
            windows = window_count(OFFICIAL_SR_SHAPE, tile)
            sr_s = windows * _bf16_seconds(_sr_cost(sr, tile))
            layout = f"{windows} tiles {shape_text(tile)} (work {tiled_cost(OFFICIAL_SR_SHAPE, plan):.2f}×)"
        stage_note = ""
        if lowres_bf16_activation_mib is not None:
            low_stage = _lowres_stage_bytes(lowres, lowres_bf16_activation_mib * 2**20) + sr_bytes
            stage_note = (f"; low-res stage {low_stage / GIB:.1f} GiB (weights + bf16 copies + measured "
                          f"activations), so pipeline peak {max(low_stage, preset.predicted_sr_peak_bytes) / GIB:.1f}"
                          " GiB")
        for sampler, steps, sr_steps in SAMPLER_SETTINGS:
            total = (steps + 1) * low_s + (sr_steps + 1) * sr_s
            rows.append(Row(
                f"official pipeline, {memory_gb} GB preset", "projection: roofline per op, 50 % of bf16 peak, "
                "70 % of bandwidth", H100_SXM.name, preset.precision, f"{sampler} {steps}+{sr_steps}",
                shape_text(OFFICIAL_SR_SHAPE), total, preset.predicted_sr_peak_bytes / 2**20,
                f"SR {layout}; low-res offload {'on' if preset.offload else 'off'}; peak = SR stage by the memory "
                f"model{stage_note}"))
    return rows

