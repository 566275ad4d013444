"""Findings on a voxel grid: dependent pleural fluid and emphysema patches sized to hit their targets exactly."""
from __future__ import annotations

import numpy as np

from medsyn.phantom.space import Coords

# Supine fluid lies posteriorly and thickens toward the posterior costophrenic recess: its surface tilts by this much
# (mm of depth per mm of height), which also lets the volume grow voxel by voxel instead of slab by slab.
EFFUSION_TILT = 0.15
LAA_THRESHOLD_HU = -950.0


def pleural_fluid(envelope: np.ndarray, coords: Coords, target_ml: dict[str, float]) -> np.ndarray:
    """Bool mask of pleural fluid: per side, the most dependent voxels of the pleural cavity, ``target_ml`` in all."""
    fluid = np.zeros(coords.shape, dtype=bool)
    for side, volume_ml in target_ml.items():
        cavity = envelope & ((coords.xx > 0) if side == "left" else (coords.xx < 0))
        k, j, i = np.nonzero(cavity)
        count = min(int(round(volume_ml / coords.voxel_ml)), k.size)
        if count == 0:
            continue
        dependency = coords.y[j] + EFFUSION_TILT * coords.z[k]
        lowest = np.argpartition(dependency, count - 1)[:count]
        fluid[k[lowest], j[lowest], i[lowest]] = True
    return fluid


def emphysema_voxels(ct: np.ndarray, lungs: np.ndarray, candidates: np.ndarray, pattern: np.ndarray,
                     target_percent: float) -> np.ndarray:
    """Candidate voxels to turn into emphysema so that %LAA-950 of ``lungs`` reaches ``target_percent``.

    Low-attenuation voxels already in ``ct`` (airway lumen, bullae, noise) count toward the target; the rest is taken
    where ``pattern`` is highest, so the patches follow the pattern's blobs and its upper-zone bias.
    """
    already_low = int(np.count_nonzero((ct < LAA_THRESHOLD_HU) & lungs))
    needed = int(round(target_percent / 100.0 * np.count_nonzero(lungs))) - already_low
    selected = np.zeros(ct.shape, dtype=bool)
    k, j, i = np.nonzero(candidates)
    needed = min(needed, k.size)
    if needed <= 0:
        return selected
    strongest = np.argpartition(-pattern[k, j, i], needed - 1)[:needed]
    selected[k[strongest], j[strongest], i[strongest]] = True
    return selected


def laa950_percent(ct: np.ndarray, lungs: np.ndarray) -> float:
    """Percentage of lung voxels below -950 HU, the standard CT emphysema index."""
    total = np.count_nonzero(lungs)
    return 100.0 * np.count_nonzero((ct < LAA_THRESHOLD_HU) & lungs) / total if total else 0.0
