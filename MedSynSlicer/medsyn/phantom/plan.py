"""Grid-independent plan of one patient: anatomy, airway and vessel trees, and where each lesion sits.

Planning runs on a fixed 4 mm lattice, so the trees and lesion centres are identical whatever grid the phantom is then
rasterised on; that is what makes a 64^3 and a 256^3 phantom of the same params the same patient.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from medsyn.phantom.anatomy import Anatomy, Supply, Tube
from medsyn.phantom.lungs import lobe_labels, lung_envelope
from medsyn.phantom.params import LOBE_LABEL, Lesion, PhantomParams
from medsyn.phantom.space import Coords
from medsyn.phantom.trees import BranchingRules, grow_tree

PLANNING_STEP_MM = 4.0
AIRWAY_RULES = BranchingRules(min_radius_mm=1.3, min_points=6)
ARTERY_RULES = BranchingRules(min_radius_mm=0.8, min_points=6)
VEIN_RULES = BranchingRules(min_radius_mm=0.8, min_points=6, split_axis=1)
NODULE_CLEARANCE_MM = 3.0  # nodules lie wholly inside their lobe
BULLA_REACH = 0.3  # bullae are subpleural: up to this fraction of their radius may reach the lobe border


@dataclass(frozen=True)
class PatientPlan:
    anatomy: Anatomy
    airways: tuple[Tube, ...]
    vessels: tuple[Tube, ...]  # intrapulmonary trees from the hila, the vessel label's extent
    nodules: tuple[Tube, ...]  # spheres: zero-length tubes
    bullae: tuple[Tube, ...]


def plan_patient(params: PhantomParams) -> PatientPlan:
    """Everything about the patient that does not depend on the output grid or on the random seed."""
    anatomy = Anatomy.from_params(params)
    lattice = Coords.lattice(PLANNING_STEP_MM)
    lobes, _ = lobe_labels(anatomy, lattice, lung_envelope(anatomy, lattice))
    points = {lobe: lattice.points(lobes == label) for lobe, label in LOBE_LABEL.items()}

    def trees(supplies: Sequence[Supply], rules: BranchingRules) -> tuple[Tube, ...]:
        return tuple(tube for supply in supplies for tube in grow_tree(supply, points[supply.lobe], rules))

    lesion_lobes = {lesion.lobe for lesion in params.nodules + params.bullae}
    depth = {lobe: _depth_in_lobe(lobes == LOBE_LABEL[lobe], lattice) for lobe in lesion_lobes}
    return PatientPlan(
        anatomy=anatomy,
        airways=anatomy.airway_roots + trees(anatomy.airway_supply, AIRWAY_RULES),
        vessels=trees(anatomy.artery_supply, ARTERY_RULES) + trees(anatomy.vein_supply, VEIN_RULES),
        nodules=tuple(_place(nodule, depth[nodule.lobe], lattice, nodule.diameter_mm / 2 + NODULE_CLEARANCE_MM)
                      for nodule in params.nodules),
        bullae=tuple(_place(bulla, depth[bulla.lobe], lattice, (1.0 - BULLA_REACH) * bulla.diameter_mm / 2)
                     for bulla in params.bullae),
    )


def _place(lesion: Lesion, depth: np.ndarray, lattice: Coords, clearance_mm: float) -> Tube:
    """Sphere centred on the lattice point that ``lesion.position`` picks among those ``clearance_mm`` deep in the lobe
    (``depth``: distance of each lattice point to the lobe's border)."""
    admissible = depth >= clearance_mm
    if not admissible.any():  # a lesion too big for its lobe sits at the lobe's deepest point
        admissible = depth == depth.max()
    candidates = lattice.points(admissible)
    centre = tuple(candidates[int(lesion.position * len(candidates))].tolist())
    return Tube(centre, centre, lesion.diameter_mm / 2)


def _depth_in_lobe(lobe: np.ndarray, lattice: Coords) -> np.ndarray:
    """Distance (mm) of each lattice point of ``lobe`` to the lobe's border, computed in the lobe's padded box."""
    box, _ = lattice.bounding_box(lobe)
    padded = tuple(slice(max(part.start - 1, 0), part.stop + 1) for part in box)
    depth = np.zeros(lobe.shape)
    depth[padded] = ndimage.distance_transform_edt(lobe[padded], sampling=PLANNING_STEP_MM)
    return depth
