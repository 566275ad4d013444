"""Space-filling branching trees (airways, pulmonary arteries and veins) grown into the lobes.

Each branch heads for the centroid of the lung region it supplies and stops part-way; that region is then halved by a
plane containing the branch, and each half gets a child whose radius follows Murray's law (r^3 proportional to the
volume supplied). This is the classic way to build a lung tree that fills its lobe at every scale (Kitaoka et al.
1999 describe the model); here it runs on a fixed lattice of lobe points, so the tree does not depend on the grid.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medsyn.phantom.anatomy import Supply, Tube

MURRAY_EXPONENT = 1.0 / 3.0


@dataclass(frozen=True)
class BranchingRules:
    """How a tree subdivides: ``split_axis`` 0 halves each region across its widest direction, 1 across the other one,
    which makes arteries and veins interleave instead of running on top of each other."""

    min_radius_mm: float
    min_points: int = 12
    length_fraction: float = 0.4
    terminal_fraction: float = 0.8  # the last branches reach closer to their region's centre, filling the periphery
    split_axis: int = 0


def grow_tree(supply: Supply, points: np.ndarray, rules: BranchingRules) -> list[Tube]:
    """Tubes of the tree entering a lobe at ``supply`` and filling ``points`` ((N, 3) mm positions of the lobe)."""
    tubes: list[Tube] = []
    pending = [(np.asarray(supply.point, dtype=np.float64), supply.radius, points)]
    while pending:
        start, radius, region = pending.pop()
        centroid = region.mean(axis=0)
        offset = centroid - start
        distance = float(np.linalg.norm(offset))
        if distance < 1e-3:
            continue
        halves = (_halves(region, centroid, offset / distance, rules.split_axis)
                  if len(region) >= 2 * rules.min_points else [])
        children = [(half, radius * (len(half) / len(region)) ** MURRAY_EXPONENT) for half in halves]
        children = [(half, r) for half, r in children if r >= rules.min_radius_mm]
        end = start + offset * (rules.length_fraction if children else rules.terminal_fraction)
        tubes.append(Tube(tuple(start.tolist()), tuple(end.tolist()), radius))
        pending.extend((end, r, half) for half, r in children)
    return tubes


def _halves(points: np.ndarray, centroid: np.ndarray, direction: np.ndarray, split_axis: int) -> list[np.ndarray]:
    """Split at the median along a principal axis of the points seen down the branch direction."""
    centred = points - centroid
    across = centred - np.outer(centred @ direction, direction)
    _, vectors = np.linalg.eigh(across.T @ across)
    # eigh sorts eigenvalues ascending; the smallest (about 0) is the branch direction itself.
    coordinate = across @ vectors[:, 2 - split_axis]
    middle = len(points) // 2
    order = np.argpartition(coordinate, middle)
    return [points[order[:middle]], points[order[middle:]]]
