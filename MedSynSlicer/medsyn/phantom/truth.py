"""Ground truth of a rasterised phantom: the numbers an evaluation metric should recover from its image."""
from __future__ import annotations

from typing import Any

import numpy as np

from medsyn.phantom.findings import laa950_percent
from medsyn.phantom.params import LOBE_LABEL, Lesion, PhantomParams
from medsyn.phantom.plan import PatientPlan
from medsyn.phantom.anatomy import Point
from medsyn.phantom.space import Coords


def phantom_truth(params: PhantomParams, plan: PatientPlan, coords: Coords, ct_hu: np.ndarray, lobes: np.ndarray, *,
                  heart: np.ndarray, envelope: np.ndarray, fluid: np.ndarray, airway: np.ndarray,
                  vessels: np.ndarray) -> dict[str, Any]:
    """Volumes (mL), CTR and %LAA-950 measured on this very grid, plus lesion positions (mm, phantom frame)."""
    ml = coords.voxel_ml
    lungs = lobes > 0
    left = coords.xx > 0
    return {
        "effusion_ml": {"left": np.count_nonzero(fluid & left) * ml, "right": np.count_nonzero(fluid & ~left) * ml},
        # CTR as on a radiograph: widest heart over widest internal thorax (the pleural cavities reach the ribs).
        "ctr": _width_mm(heart, coords.x) / _width_mm(envelope, coords.x),
        "laa950_percent": laa950_percent(ct_hu, lungs),
        "lobe_volumes_ml": {lobe: np.count_nonzero(lobes == label) * ml for lobe, label in LOBE_LABEL.items()},
        "lung_volume_ml": np.count_nonzero(lungs) * ml,
        "airway_volume_ml": np.count_nonzero(airway) * ml,
        "vessel_volume_ml": np.count_nonzero(vessels) * ml,
        "heart_centre_mm": list(plan.anatomy.heart_centre),
        "nodules": [_lesion(lesion, sphere.start) for lesion, sphere in zip(params.nodules, plan.nodules)],
        "bullae": [_lesion(lesion, sphere.start) for lesion, sphere in zip(params.bullae, plan.bullae)],
    }


def _width_mm(mask: np.ndarray, x_mm: np.ndarray) -> float:
    """Left-right extent of ``mask`` from voxel edge to voxel edge."""
    columns = np.flatnonzero(mask.any(axis=(0, 1)))
    return float(x_mm[columns[-1]] - x_mm[columns[0]] + (x_mm[1] - x_mm[0])) if columns.size else 0.0


def _lesion(lesion: Lesion, centre: Point) -> dict[str, Any]:
    return {"lobe": lesion.lobe, "diameter_mm": lesion.diameter_mm, "centre_mm": list(centre)}
