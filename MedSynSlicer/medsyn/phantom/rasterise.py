"""Distance fields of tube sets (airways, vessels, lesions) on a voxel grid, held only in the tubes' bounding box.

Allocating a full-size float field per tube set costs more than filling it (page faults on a 256^3 grid), and most
sets (lesions, great vessels) cover a small part of the volume, hence the boxed fields.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from medsyn.phantom.anatomy import Tube
from medsyn.phantom.space import Coords


@dataclass(frozen=True)
class BoxedField:
    """Signed distance (mm, negative inside) in ``box`` of a ``shape`` volume; outside the box it is out of reach."""

    shape: tuple[int, int, int]
    box: tuple[slice, slice, slice]
    values: np.ndarray

    def within(self, distance_mm: float) -> np.ndarray:
        """Full-size bool mask of the voxels at most ``distance_mm`` from the surface's inside (0: inside)."""
        mask = np.zeros(self.shape, dtype=bool)
        mask[self.box] = self.values <= distance_mm
        return mask


def tube_distance(tubes: Sequence[Tube], coords: Coords, offsets_mm: Sequence[float] = (0.0,),
                  reach_mm: float = 2.0, radius_floor_mm: float = 0.0) -> list[BoxedField]:
    """One field per offset: signed distance to the union of the tubes grown by that offset.

    Radii below ``radius_floor_mm`` are drawn at the floor, so a branch that survives on a coarse grid is at least one
    voxel wide and stays connected to its parent. Voxels farther than ``reach_mm`` beyond every surface hold +inf.
    """
    offsets = np.asarray(offsets_mm, dtype=np.float32)
    if not tubes:
        return [BoxedField(coords.shape, (slice(0, 0),) * 3, np.zeros((0, 0, 0), np.float32)) for _ in offsets]
    margins = [max(tube.radius, radius_floor_mm) + float(offsets.max()) + reach_mm for tube in tubes]
    lows = [np.minimum(tube.start, tube.end) - margin for tube, margin in zip(tubes, margins)]
    highs = [np.maximum(tube.start, tube.end) + margin for tube, margin in zip(tubes, margins)]
    box, box_coords = coords.box(np.min(lows, axis=0), np.max(highs, axis=0))
    field = np.full((offsets.size,) + box_coords.shape, np.inf, dtype=np.float32)
    for tube, low, high in zip(tubes, lows, highs):
        slices, local = box_coords.box(low, high)
        if 0 in local.shape:
            continue
        radius = max(tube.radius, radius_floor_mm)
        distance = _distance_to_segment(local, np.asarray(tube.start, np.float32), np.asarray(tube.end, np.float32))
        for index, offset in enumerate(offsets):
            target = field[index][slices]
            np.minimum(target, distance - (radius + offset), out=target)
    return [BoxedField(coords.shape, box, values) for values in field]


def coverage(signed_distance: np.ndarray, voxel_mm: float) -> np.ndarray:
    """Partial-volume fraction of each voxel inside the surface: a one-voxel ramp, so thin tubes fade, not vanish."""
    return np.clip(0.5 - signed_distance / voxel_mm, 0.0, 1.0)


def ellipsoid_mask(coords: Coords, centre: Sequence[float], axes: Sequence[float]) -> np.ndarray:
    """Boolean (D, H, W) mask of an axis-aligned ellipsoid, evaluated only in its bounding box."""
    centre_v, axes_v = np.asarray(centre, np.float32), np.asarray(axes, np.float32)
    mask = np.zeros(coords.shape, dtype=bool)
    slices, box = coords.box(centre_v - axes_v, centre_v + axes_v)
    mask[slices] = (((box.xx - centre_v[0]) / axes_v[0]) ** 2 + ((box.yy - centre_v[1]) / axes_v[1]) ** 2
                    + ((box.zz - centre_v[2]) / axes_v[2]) ** 2) < 1.0
    return mask


def _distance_to_segment(box: Coords, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    axis = end - start
    length2 = max(float(axis @ axis), 1e-6)
    px, py, pz = box.xx - start[0], box.yy - start[1], box.zz - start[2]
    t = np.clip((px * axis[0] + py * axis[1] + pz * axis[2]) / length2, 0.0, 1.0)
    return np.sqrt((px - t * axis[0]) ** 2 + (py - t * axis[1]) ** 2 + (pz - t * axis[2]) ** 2)
