"""Measurements of one generated chest CT and its mask channels: findings, volumes and mask/image consistency.

``measure_volume`` is the entry point; the small functions below it are the individual metrics, each computed from
masks in the patient-aligned (inferior→superior, anterior→posterior, right→left) frame of ``ct_segmentation``.
A metric that cannot be computed (no lungs, no trachea, no heart found) is NaN with a note saying why, so one
degenerate sample never stops an evaluation run.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medsyn.codec import DecodedVolume
from medsyn.evaluation import ct_segmentation as seg
from medsyn.geometry import Grid, to_lps_array
from medsyn.models.card import LOBE_LABELS

LAA_THRESHOLD_HU = -950.0
# A mask voxel whose centre lies inside a tube holds at least half of it; half air next to soft tissue is about
# -500 HU and half blood next to aerated lung about -415 HU, so -500 splits "mostly air" from "mostly tissue".
HALF_AIR_HU = -500.0
NAN = float("nan")


@dataclass(frozen=True)
class MetricInfo:
    """How a metric is shown: column label and decimals."""

    label: str
    digits: int


_LOBE_METRICS = {f"lobe_{name}_ml": MetricInfo(f"{name} (mL)", 0) for name in LOBE_LABELS}
METRICS: dict[str, MetricInfo] = {
    "effusion_right_ml": MetricInfo("Effusion R (mL)", 0),
    "effusion_left_ml": MetricInfo("Effusion L (mL)", 0),
    "ctr": MetricInfo("CTR", 3),
    "laa950_percent": MetricInfo("%LAA-950", 2),
    "lung_ct_ml": MetricInfo("Lungs, CT (mL)", 0),
    "lung_mask_ml": MetricInfo("Lungs, lobe mask (mL)", 0),
    **_LOBE_METRICS,
    "airway_ml": MetricInfo("Airway (mL)", 1),
    "vessel_ml": MetricInfo("Vessels (mL)", 1),
    "dice_lungs": MetricInfo("Dice lungs", 3),
    "dice_airway": MetricInfo("Dice airway", 3),
    "airway_ct_coverage": MetricInfo("CT airway covered", 3),
    "airway_air_fraction": MetricInfo("Airway voxels air", 3),
    "vessel_blood_fraction": MetricInfo("Vessel voxels dense", 3),
}


@dataclass
class Measurement:
    """Metric name -> value (NaN when it could not be measured) and the reasons for every NaN."""

    values: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def unmeasurable(self, names: list[str], reason: str) -> None:
        for name in names:
            self.values[name] = NAN
        self.notes.append(reason)


def voxel_ml(spacing_xyz: tuple[float, float, float]) -> float:
    return float(np.prod(spacing_xyz)) / 1000.0


def volume_ml(mask: np.ndarray, spacing_xyz: tuple[float, float, float]) -> float:
    """Voxel count × voxel volume, in millilitres."""
    return float(np.count_nonzero(mask)) * voxel_ml(spacing_xyz)


def effusion_ml(fluid: np.ndarray, body: np.ndarray, spacing_xyz: tuple[float, float, float]) -> dict[str, float]:
    """Pleural fluid per side (mL), split at the body's left-right centre of mass.

    The fluid mask is ``ct_segmentation.pleural_fluid_mask``: fluid-density voxels against the lung with nothing
    aerated behind them. Partial volume at the lung border and chest-wall speckle give a floor of a few mL, and
    consolidated dependent lung would be counted as fluid.
    """
    right = np.arange(fluid.shape[2]) <= seg.midline_column(body)
    return {"right": volume_ml(fluid[:, :, right], spacing_xyz), "left": volume_ml(fluid[:, :, ~right], spacing_xyz)}


def max_axial_width_mm(mask: np.ndarray, spacing_x: float) -> float:
    """Largest left-right extent of ``mask`` on any one axial slice, edge to edge (0 when empty)."""
    columns_hit = mask.any(axis=1)  # (slices, columns)
    if not columns_hit.any():
        return 0.0
    first = np.argmax(columns_hit, axis=1)
    last = columns_hit.shape[1] - 1 - np.argmax(columns_hit[:, ::-1], axis=1)
    widths = np.where(columns_hit.any(axis=1), last - first + 1, 0)
    return float(widths.max()) * spacing_x


def cardiothoracic_ratio(heart: np.ndarray, thorax: np.ndarray, spacing_x: float) -> float:
    """Widest axial heart diameter over the widest internal thoracic diameter (lungs plus pleural fluid).

    The CT analogue of the radiographic ratio (0.5 = cardiomegaly threshold); both widths are maxima over axial
    slices, not necessarily the same slice, as on a radiograph. The heart is ``ct_segmentation.heart_mask``, so it
    includes great vessels within its outline and omits its part just above the diaphragm.
    """
    thorax_width = max_axial_width_mm(thorax, spacing_x)
    return max_axial_width_mm(heart, spacing_x) / thorax_width if thorax_width > 0 else NAN


def laa950_percent(ct: np.ndarray, lungs: np.ndarray) -> float:
    """%LAA-950: share of lung voxels below -950 HU, the CT emphysema index (sensitive to HU calibration)."""
    total = np.count_nonzero(lungs)
    return 100.0 * float(np.count_nonzero((ct < LAA_THRESHOLD_HU) & lungs)) / total if total else NAN


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """2|A∩B| / (|A|+|B|); NaN when both are empty (nothing to agree on)."""
    total = np.count_nonzero(a) + np.count_nonzero(b)
    return 2.0 * float(np.count_nonzero(a & b)) / total if total else NAN


def fraction_where(condition: np.ndarray, mask: np.ndarray) -> float:
    """Share of ``mask`` voxels where ``condition`` holds; NaN for an empty mask."""
    total = np.count_nonzero(mask)
    return float(np.count_nonzero(condition & mask)) / total if total else NAN


def mask_volumes(lobes: np.ndarray, airway: np.ndarray, vessels: np.ndarray,
                 spacing_xyz: tuple[float, float, float]) -> dict[str, float]:
    """Lung, per-lobe, airway and vessel volumes (mL) of the generated mask channels, as the model drew them."""
    volumes = {f"lobe_{name}_ml": volume_ml(lobes == label, spacing_xyz) for name, label in LOBE_LABELS.items()}
    volumes.update(lung_mask_ml=volume_ml(lobes > 0, spacing_xyz), airway_ml=volume_ml(airway > 0, spacing_xyz),
                   vessel_ml=volume_ml(vessels > 0, spacing_xyz))
    return volumes


def measure_volume(volume: DecodedVolume, grid: Grid) -> Measurement:
    """Every metric of one generated sample: CT-derived findings, mask volumes and mask/image consistency."""
    ct, spacing = to_lps_array(volume.ct_hu, grid)
    ct = ct.astype(np.float32)
    lobes, airway_channel, vessel_channel = (to_lps_array(array, grid)[0] for array in
                                             (volume.lobes, volume.airway > 0, volume.vessels > 0))
    result = Measurement(mask_volumes(lobes, airway_channel, vessel_channel, spacing))
    _measure_channel_density(result, ct, airway_channel, vessel_channel)
    body = seg.body_mask(ct)
    airway = seg.airway_mask(ct, body, voxel_ml(spacing))
    _measure_airway(result, airway, airway_channel)
    lungs = seg.lung_mask(ct, body, airway)
    if lungs.any():
        _measure_findings(result, ct, body, lungs, lobes > 0, spacing)
    else:
        result.unmeasurable(["lung_ct_ml", "laa950_percent", "dice_lungs", "effusion_right_ml", "effusion_left_ml",
                             "ctr"], "no aerated lung found in the CT (nothing below -400 HU inside the body)")
    return result


def _measure_channel_density(result: Measurement, ct: np.ndarray, airway_channel: np.ndarray,
                             vessel_channel: np.ndarray) -> None:
    """Share of airway-channel voxels that are mostly air and of vessel-channel voxels that are mostly tissue."""
    for name, channel, agrees in (("airway_air_fraction", airway_channel, ct < HALF_AIR_HU),
                                  ("vessel_blood_fraction", vessel_channel, ct >= HALF_AIR_HU)):
        if channel.any():
            result.values[name] = fraction_where(agrees, channel)
        else:
            result.unmeasurable([name], f"the generated {name.split('_')[0]} channel is empty")


def _measure_findings(result: Measurement, ct: np.ndarray, body: np.ndarray, lungs: np.ndarray,
                      lobe_channel: np.ndarray, spacing: tuple[float, float, float]) -> None:
    """Lung volume, %LAA-950 and lung Dice, pleural effusion per side and the cardiothoracic ratio."""
    result.values.update(lung_ct_ml=volume_ml(lungs, spacing), laa950_percent=laa950_percent(ct, lungs),
                         dice_lungs=dice(lungs, lobe_channel))
    smooth = seg.denoise(ct)
    fluid = seg.pleural_fluid_mask(ct, smooth, body, lungs, voxel_ml(spacing))
    sides = effusion_ml(fluid, body, spacing)
    result.values.update(effusion_right_ml=sides["right"], effusion_left_ml=sides["left"])
    heart = seg.heart_mask(smooth, lungs, fluid, body, spacing)
    if heart.any():
        result.values["ctr"] = cardiothoracic_ratio(heart, lungs | fluid, spacing[0])
    else:
        result.unmeasurable(["ctr"], "no heart found (no soft-tissue blob between the lungs above the diaphragm)")


def _measure_airway(result: Measurement, airway: np.ndarray, airway_channel: np.ndarray) -> None:
    """Dice of the airway channel with the CT's visible tree, and the share of that tree the channel covers.

    Partial volume hides thin bronchi from the CT tree, so even a perfect channel has Dice well below 1 (about
    0.55-0.7 on 64³-96³ phantoms); coverage of the visible tree is the number that should be near 1.
    """
    if not airway.any():
        result.unmeasurable(["dice_airway", "airway_ct_coverage"],
                            "no trachea found in the CT (no dark air column near the midline above the lungs)")
        return
    result.values["dice_airway"] = dice(airway, airway_channel)
    result.values["airway_ct_coverage"] = fraction_where(airway_channel, airway)
