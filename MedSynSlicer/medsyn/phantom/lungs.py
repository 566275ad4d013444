"""Lung envelopes (the pleural cavities), the five lobes and the fissures between them.

Lobes are split by signed distances to the fissure surfaces, and a fissure band is at least half a voxel wide on each
side of the split. So for any two face-adjacent voxels of different lobes at least one lies in the band: fissures
always separate lobes in the image, on every grid.
"""
from __future__ import annotations

import numpy as np

from medsyn.phantom.anatomy import Anatomy
from medsyn.phantom.params import LOBE_LABEL
from medsyn.phantom.rasterise import ellipsoid_mask, tube_distance
from medsyn.phantom.space import Coords

ORGAN_MARGIN_MM = 5.0  # pleura and fat between a lung and the heart, spine or great vessels


def lung_envelope(anatomy: Anatomy, coords: Coords) -> np.ndarray:
    """Both pleural cavities before any effusion: (D, H, W) bool; the left lung is the part with x > 0."""
    x, y = coords.xx[0], coords.yy[0]  # (1, W) and (H, 1): axial maps below are (H, W)
    centre_x, centre_y = anatomy.lung_centre
    section = (np.abs(np.abs(x) - centre_x) / anatomy.lung_axes[0]) ** 2.4 + (
        np.abs(y - centre_y) / anatomy.lung_axes[1]) ** 2.4
    axial = (anatomy.cavity.radius(x, y) < 1.0) & (
        np.hypot(x, y - anatomy.spine_y) > anatomy.spine_radius + ORGAN_MARGIN_MM)
    taper = anatomy.lung_taper(coords.z) ** 2.4
    heart_top = anatomy.heart_centre[2] + anatomy.heart_axes[2]
    half_width = np.interp(coords.z, [heart_top - 10.0, heart_top + 10.0], anatomy.mediastinum_half_width)
    envelope = (section[None] < taper[:, None, None]) & axial[None]
    envelope &= coords.zz > anatomy.diaphragm_height(x, y)[None]
    envelope &= np.abs(coords.xx) > half_width[:, None, None]
    grown_heart = tuple(a + ORGAN_MARGIN_MM for a in anatomy.heart_axes)
    envelope &= ~ellipsoid_mask(coords, anatomy.heart_centre, grown_heart)
    envelope &= ~tube_distance(anatomy.mediastinal_tubes(), coords, reach_mm=ORGAN_MARGIN_MM)[0].within(ORGAN_MARGIN_MM)
    return envelope


def _fissure_half_width(coords: Coords) -> float:
    """Half a voxel (with 10% slack for the curved surfaces), never thinner than a real fissure (about 1 mm)."""
    return max(0.55 * max(coords.spacing), 0.5)


def lobe_labels(anatomy: Anatomy, coords: Coords, lungs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lobe labels (uint8, 0 outside ``lungs``) and the fissure band (bool) inside ``lungs``."""
    labels, fissure = np.zeros(coords.shape, dtype=np.uint8), np.zeros(coords.shape, dtype=bool)
    half_width = _fissure_half_width(coords)
    first_left = int(np.searchsorted(coords.x, 0.0, side="right"))  # the left lung is x > 0, the high columns
    for columns, left in ((slice(0, first_left), False), (slice(first_left, None), True)):
        side = Coords(coords.x[columns], coords.y, coords.z)
        labels[..., columns], fissure[..., columns] = _label_one_lung(anatomy, side, left, half_width)
    labels *= lungs
    fissure &= lungs
    return labels, fissure


def _label_one_lung(anatomy: Anatomy, coords: Coords, left: bool, half_width: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels of one lung's columns: an oblique fissure, and on the right a horizontal one above it."""
    height, norm = anatomy.oblique[int(left)].surface(coords.xx[0], coords.yy[0])
    oblique = (coords.zz - height[None]) / norm[None]
    upper = oblique >= 0.0
    fissure = np.abs(oblique) <= half_width
    if left:
        return np.where(upper, LOBE_LABEL["LUL"], LOBE_LABEL["LLL"]).astype(np.uint8), fissure
    height, norm = anatomy.horizontal.surface(coords.xx[0], coords.yy[0])
    horizontal = (coords.zz - height[None]) / norm[None]
    fissure |= upper & (np.abs(horizontal) <= half_width)
    labels = np.where(upper, np.where(horizontal >= 0.0, LOBE_LABEL["RUL"], LOBE_LABEL["RML"]), LOBE_LABEL["RLL"])
    return labels.astype(np.uint8), fissure
