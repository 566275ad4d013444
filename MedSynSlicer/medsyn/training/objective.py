"""MedSyn's training objective: x0-prediction MSE on the continuous cosine schedule (reference §3)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ..codec import DEFAULT_HU_WINDOW, NUM_LOBE_LABELS, hu_to_model
from ..data.transforms import TREE_CHANNELS
from ..diffusion.schedule import NUM_TIMESTEPS, alpha_cumprod, q_sample
from ..evaluation.ct_segmentation import FLUID_HU

LOBE_BACKGROUND_BELOW = -1.0 + 1.0 / NUM_LOBE_LABELS  # below it the lobe channel rounds to label 0 (background)


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, loss_mask: torch.Tensor,
               channel_weights: Optional[Sequence[float]] = None,
               sample_weights: Optional[torch.Tensor] = None,
               ct_voxel_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Channel-weighted mean squared error over the known channels only; ``loss_mask`` is (B, C) with 1 = known.
    Equals plain MSE when every channel is known and the weights are equal. ``sample_weights`` (B,) and
    ``ct_voxel_weights`` (B, 1, D, H, W; the CT channel's voxels) scale their share without renormalising, so
    up-weighted voxels add to the loss rather than shrink everyone else's."""
    weights = loss_mask.to(prediction.dtype)
    if channel_weights is not None:
        weights = weights * torch.as_tensor(channel_weights, dtype=prediction.dtype, device=prediction.device)
    total = weights.sum() * prediction[0, 0].numel()
    if sample_weights is not None:
        weights = weights * sample_weights.to(weights)[:, None]
    squared = (prediction - target) ** 2 * weights[:, :, None, None, None]
    if ct_voxel_weights is not None:
        squared = torch.cat([squared[:, :1] * ct_voxel_weights.to(squared), squared[:, 1:]], dim=1)
    return squared.sum() / total


def ct_voxel_weights(x0: torch.Tensor, structure_weights: Sequence[float], fluid_weight: float = 1.0,
                     hu_window: Sequence[float] = DEFAULT_HU_WINDOW) -> Optional[torch.Tensor]:
    """(B, 1, D, H, W) CT loss weights: ``structure_weights`` = (airway, vessels) where the target's channel is
    foreground, ``fluid_weight`` where the target CT has pleural-fluid density (the evaluation's fluid window) outside
    the lung lobes; the largest where several apply, 1 elsewhere; None when all are 1 (the official loss)."""
    if fluid_weight == 1.0 and all(weight == 1.0 for weight in structure_weights):
        return None
    regions = [(x0[:, channel:channel + 1] > 0, weight) for channel, weight in zip(TREE_CHANNELS, structure_weights)]
    low, high = (float(hu_to_model(hu, tuple(hu_window))) for hu in FLUID_HU)
    ct = x0[:, :1]
    regions.append(((ct >= low) & (ct <= high) & (x0[:, 1:2] < LOBE_BACKGROUND_BELOW), fluid_weight))
    voxel = torch.ones_like(ct)
    for inside, weight in regions:
        voxel = torch.where(inside, torch.maximum(voxel, torch.full_like(voxel, weight)), voxel)
    return voxel


def min_snr_weights(t: torch.Tensor, gamma: float) -> torch.Tensor:
    """min(SNR(t), γ)/γ with SNR = ᾱ/(1 − ᾱ): 1 at low noise, SNR/γ where noise dominates (Min-SNR for x0 targets)."""
    alpha = alpha_cumprod(t)
    return (alpha / (1 - alpha)).clamp(max=gamma) / gamma


def x0_loss(model: nn.Module, null_cond_emb: Optional[torch.Tensor], batch: dict[str, torch.Tensor], stage: str,
            channel_weights: Optional[Sequence[float]] = None, min_snr_gamma: Optional[float] = None,
            structure_weights: Sequence[float] = (1.0, 1.0), fluid_weight: float = 1.0,
            hu_window: Sequence[float] = DEFAULT_HU_WINDOW, anchor: Optional[nn.Module] = None,
            anchor_share: Sequence[float] = (0.0, 0.0, 0.0, 0.0)) -> torch.Tensor:
    """Noise x0 to time t ~ U(0, 1), predict x0 from it (time fed as t·1000, as the training scripts do).

    Low-res: samples flagged ``drop_text`` see the learned null embedding instead of their report, which is what
    classifier-free guidance later contrasts against. SR: the degraded low-res volume ``x_lr`` is the condition.
    With an ``anchor`` network, each channel's target is ``anchor_share`` of the way from the data to the anchor's own
    x̂0 for the same noisy input, so a fine-tune keeps what the anchor does on those channels (see anchor.py).
    """
    x0, t = batch["x0"], batch["t"]
    x_t = q_sample(x0, t, batch["noise"])
    time = t * NUM_TIMESTEPS
    prediction = _predict(model, null_cond_emb, batch, x_t, time, stage)
    target = x0
    if anchor is not None:
        with torch.no_grad():
            anchored = _predict(anchor, getattr(anchor, "null_cond_emb", None), batch, x_t, time, stage).float()
        share = torch.as_tensor(anchor_share, dtype=x0.dtype, device=x0.device)[None, :, None, None, None]
        target = torch.lerp(x0, anchored, share)
    sample_weights = min_snr_weights(t, min_snr_gamma) if min_snr_gamma is not None else None
    return masked_mse(prediction.float(), target, batch["loss_mask"], channel_weights, sample_weights,
                      ct_voxel_weights(x0, structure_weights, fluid_weight, hu_window))


def _predict(model: nn.Module, null_cond_emb: Optional[torch.Tensor], batch: dict[str, torch.Tensor],
             x_t: torch.Tensor, time: torch.Tensor, stage: str) -> torch.Tensor:
    if stage == "lowres":
        cond = batch["cond"]
        cond = torch.where(batch["drop_text"][:, None, None], null_cond_emb.expand_as(cond), cond)
        return model(x_t, time, cond)
    return model(x_t, time, batch["x_lr"])
