"""Rasterise a planned patient into CT + lobe/airway/vessel labels on any grid, with ground truth for evaluation.

Painting order follows what hides what: torso, heart and great vessels, lungs and fissures, fluid, consolidation,
vessels, lesions, airways; noise comes last and emphysema replaces noisy voxels so its %LAA-950 is exact. Tubes and
spheres are blended by their partial volume, so thin branches fade on coarse grids instead of breaking into dots.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import numpy as np
from scipy import ndimage

from medsyn.geometry import Grid
from medsyn.phantom import tissues as hu
from medsyn.phantom.anatomy import Anatomy, Tube
from medsyn.phantom.findings import emphysema_voxels, pleural_fluid
from medsyn.phantom.lungs import lobe_labels, lung_envelope
from medsyn.phantom.params import LOBE_LABEL, PhantomParams
from medsyn.phantom.plan import PatientPlan, plan_patient
from medsyn.phantom.rasterise import BoxedField, coverage, ellipsoid_mask, tube_distance
from medsyn.phantom.space import Coords, phantom_grid
from medsyn.phantom.texture import ct_noise, independent_streams, smooth_field
from medsyn.phantom.torso import paint_torso
from medsyn.phantom.truth import phantom_truth

AIRWAY_WALL_MM = 1.2
NOISE_HU_RANGE = (10.0, 20.0)
HU_LIMITS = (-1024.0, 3071.0)


@dataclass
class Phantom:
    """One phantom on ``grid``: arrays in (z, y, x); ``truth`` holds the measurements an evaluation should recover."""

    ct: np.ndarray  # int16 HU
    lobes: np.ndarray  # uint8, 0 outside the lungs, LUL=1 LLL=2 RUL=3 RML=4 RLL=5
    airway: np.ndarray  # uint8 0/1 lumen
    vessels: np.ndarray  # uint8 0/1
    effusion: np.ndarray  # uint8 0/1 pleural fluid
    grid: Grid
    truth: dict[str, Any]


def generate_phantom(params: PhantomParams, shape: Sequence[int] = (128, 128, 128),
                     spacing_xyz_mm: Optional[Sequence[float]] = None,
                     rng: Union[np.random.Generator, int] = 0) -> Phantom:
    """Phantom of ``params`` on a (D, H, W) grid centred on the atlas FOV; ``rng`` only draws texture and noise.

    Texture, emphysema pattern and noise use separate streams, so two params differing in one finding get the same
    texture and noise: a clean counterfactual pair.
    """
    texture_rng, pattern_rng, noise_rng = independent_streams(rng, 3)
    grid = phantom_grid(shape, spacing_xyz_mm)
    coords = Coords.from_grid(grid)
    plan = plan_patient(params)
    ct = np.empty(coords.shape, dtype=np.float32)
    paint_torso(ct, plan.anatomy, coords)
    heart = _paint_heart_and_great_vessels(ct, plan.anatomy, coords)
    lungs = _LungRegions.build(params, plan.anatomy, coords)
    _paint_lungs(ct, plan.anatomy, lungs, smooth_field(texture_rng, lungs.box_coords, 10.0))
    tubes = _TubeLayers.rasterise(plan, coords)
    airway, vessels = _paint_tubes(ct, tubes, lungs, float(np.mean(coords.spacing)))
    noise = ct_noise(noise_rng, coords.shape, float(noise_rng.uniform(*NOISE_HU_RANGE)))
    ct += noise
    if params.laa950_target > 0:
        _paint_emphysema(ct, noise, params.laa950_target, plan.anatomy, lungs, tubes, pattern_rng)
    ct_hu = np.rint(np.clip(ct, *HU_LIMITS)).astype(np.int16)
    truth = phantom_truth(params, plan, coords, ct_hu, lungs.lobes, heart=heart, envelope=lungs.envelope,
                          fluid=lungs.fluid, airway=airway, vessels=vessels)
    truth["noise_hu"] = float(np.std(noise[::4, ::4, ::4]))
    return Phantom(ct=ct_hu, lobes=lungs.lobes, airway=airway.astype(np.uint8), vessels=vessels.astype(np.uint8),
                   effusion=lungs.fluid.astype(np.uint8), grid=grid, truth=truth)


@dataclass(frozen=True)
class _LungRegions:
    """Masks of the thoracic cavities; lung work runs in ``box`` (the cavities' bounding box, a third of the volume)."""

    envelope: np.ndarray  # pleural cavities
    fluid: np.ndarray
    aerated: np.ndarray  # envelope minus fluid: what the lobes label
    lobes: np.ndarray
    fissure: np.ndarray
    consolidated: np.ndarray
    box: tuple[slice, slice, slice]
    box_coords: Coords

    @classmethod
    def build(cls, params: PhantomParams, anatomy: Anatomy, coords: Coords) -> "_LungRegions":
        envelope = lung_envelope(anatomy, coords)
        fluid = pleural_fluid(envelope, coords, {side: params.effusion_ml for side in params.effusion_sides})
        aerated = envelope & ~fluid
        box, box_coords = coords.bounding_box(envelope)
        lobes, fissure = np.zeros(coords.shape, dtype=np.uint8), np.zeros(coords.shape, dtype=bool)
        lobes[box], fissure[box] = lobe_labels(anatomy, box_coords, aerated[box])
        consolidated_labels = np.zeros(len(LOBE_LABEL) + 1, dtype=bool)
        consolidated_labels[[LOBE_LABEL[lobe] for lobe in params.consolidation]] = True
        consolidated = np.zeros(coords.shape, dtype=bool)
        consolidated[box] = consolidated_labels[lobes[box]]
        return cls(envelope, fluid, aerated, lobes, fissure, consolidated, box, box_coords)


@dataclass(frozen=True)
class _TubeLayers:
    """Signed distance fields of the tube sets."""

    vessels: BoxedField
    airway_lumen: BoxedField
    airway_outer: BoxedField
    nodules: BoxedField
    bullae: BoxedField

    @classmethod
    def rasterise(cls, plan: PatientPlan, coords: Coords) -> "_TubeLayers":
        coarsest = max(coords.spacing)

        # Branches thinner than a third of a voxel are invisible; the rest are drawn at least one voxel wide, so a
        # branch kept on a coarse grid still touches its parent.
        def visible(tubes: tuple[Tube, ...]) -> list[Tube]:
            return [tube for tube in tubes if tube.radius >= coarsest / 3.0]

        floor = 0.5 * coarsest
        airway = tube_distance(visible(plan.airways), coords, offsets_mm=(0.0, AIRWAY_WALL_MM), radius_floor_mm=floor)
        return cls(vessels=tube_distance(visible(plan.vessels), coords, radius_floor_mm=floor)[0],
                   airway_lumen=airway[0], airway_outer=airway[1],
                   nodules=tube_distance(plan.nodules, coords)[0], bullae=tube_distance(plan.bullae, coords)[0])


def _paint_heart_and_great_vessels(ct: np.ndarray, anatomy: Anatomy, coords: Coords) -> np.ndarray:
    """Heart (above the diaphragm), aorta, pulmonary trunk and central veins as blood; returns the heart mask.

    The vessel label, like TotalSegmentator's lung_vessels, starts at the hila, so the great vessels stay unlabelled.
    """
    heart = ellipsoid_mask(coords, anatomy.heart_centre, anatomy.heart_axes)
    heart &= coords.zz > anatomy.diaphragm_height(coords.xx[0], coords.yy[0])[None]
    ct[heart] = hu.BLOOD
    ct[tube_distance(anatomy.aorta + anatomy.artery_roots + anatomy.vein_roots, coords)[0].within(0.0)] = hu.BLOOD
    return heart


def _paint_lungs(ct: np.ndarray, anatomy: Anatomy, lungs: _LungRegions, texture: np.ndarray) -> None:
    """Aerated lung (denser toward the back: supine gravity gradient), fissures, pleural fluid, consolidation."""
    box_ct, box_coords = ct[lungs.box], lungs.box_coords  # a view: writes reach ``ct``
    back, front = anatomy.cavity.cy - anatomy.cavity.ay, anatomy.cavity.cy + anatomy.cavity.ay
    dependent = np.clip((front - box_coords.yy) / (front - back), 0.0, 1.0) ** 2
    np.copyto(box_ct, hu.LUNG + hu.LUNG_DEPENDENT_GAIN * dependent + hu.LUNG_TEXTURE * texture,
              where=lungs.aerated[lungs.box])
    ct[lungs.fissure] = hu.FISSURE
    ct[lungs.fluid] = hu.PLEURAL_FLUID
    consolidated = lungs.consolidated[lungs.box]
    box_ct[consolidated] = hu.CONSOLIDATION + hu.CONSOLIDATION_TEXTURE * texture[consolidated]


def _paint_tubes(ct: np.ndarray, tubes: _TubeLayers, lungs: _LungRegions,
                 voxel_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Vessels, nodules, bullae and airways (wall, then air lumen: air bronchograms survive consolidation).

    Returns the airway and vessel labels; fluid displaces both, and detached airway fragments are dropped.
    """
    outside_fluid = ~lungs.fluid
    _blend(ct, tubes.vessels, hu.BLOOD, voxel_mm, outside_fluid)
    _blend(ct, tubes.nodules, hu.NODULE, voxel_mm, lungs.aerated)
    _blend(ct, tubes.bullae, hu.AIR, voxel_mm, lungs.aerated)
    _blend(ct, tubes.airway_outer, hu.AIRWAY_WALL, voxel_mm, outside_fluid)
    _blend(ct, tubes.airway_lumen, hu.AIR, voxel_mm, outside_fluid)
    lumen = tubes.airway_lumen
    airway = np.zeros(ct.shape, dtype=bool)
    airway[lumen.box] = _connected_to_top((lumen.values <= 0.0) & outside_fluid[lumen.box])
    vessels = tubes.vessels.within(0.0) & outside_fluid & ~airway & ~tubes.bullae.within(0.0)
    return airway, vessels


def _paint_emphysema(ct: np.ndarray, noise: np.ndarray, target_percent: float, anatomy: Anatomy,
                     lungs: _LungRegions, tubes: _TubeLayers, rng: np.random.Generator) -> None:
    """Replace plain parenchyma by near-air voxels in smooth, upper-zone predominant patches (centrilobular)."""
    box = lungs.box
    clear = 0.5 * max(lungs.box_coords.spacing)
    candidates = (lungs.aerated & ~lungs.fissure & ~lungs.consolidated & ~tubes.vessels.within(clear)
                  & ~tubes.airway_outer.within(clear) & ~tubes.nodules.within(clear) & ~tubes.bullae.within(0.0))[box]
    pattern = smooth_field(rng, lungs.box_coords, 12.0) + (lungs.box_coords.zz - anatomy.dome_z[0]) / 80.0
    emphysema = emphysema_voxels(ct[box], lungs.aerated[box], candidates, pattern, target_percent)
    ct[box][emphysema] = hu.EMPHYSEMA + 0.5 * noise[box][emphysema]


def _blend(ct: np.ndarray, field: BoxedField, value: float, voxel_mm: float, where: np.ndarray) -> None:
    """Mix ``value`` into ``ct`` by each voxel's partial volume inside the surface, only where ``where`` holds."""
    view = ct[field.box]
    touched = (field.values < 0.5 * voxel_mm) & where[field.box]
    view[touched] += coverage(field.values[touched], voxel_mm) * (value - view[touched])


def _connected_to_top(mask: np.ndarray) -> np.ndarray:
    """The 26-connected part of ``mask`` reaching its top slice (the trachea), without detached fragments."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    keep = np.zeros(count + 1, dtype=bool)
    keep[np.unique(labels[-1])] = True
    keep[0] = False
    return keep[labels]
