"""Landmarks of one phantom patient in mm (phantom frame: x Left, y Anterior, z Superior), derived from its params.

Everything here is geometry without voxels: the same ``Anatomy`` is rasterised on the coarse planning lattice and on
any output grid. Proportions follow an adult chest registered to the MedSyn atlas (lungs fill most of the 316 x 316 x
292 mm field of view, apex about 3 cm below its top, posterior costophrenic recesses near its bottom).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medsyn.phantom.params import PhantomParams

Point = tuple[float, float, float]


@dataclass(frozen=True)
class SuperEllipse:
    """An axial cross-section |dx/ax|^p + |dy/ay|^p = 1; p > 2 gives the boxy shape of a chest."""

    cx: float
    cy: float
    ax: float
    ay: float
    power: float

    def radius(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Normalised radius: < 1 inside, 1 on the border."""
        p = self.power
        return (np.abs((x - self.cx) / self.ax) ** p + np.abs((y - self.cy) / self.ay) ** p) ** (1.0 / p)

    def grown(self, mm: float) -> "SuperEllipse":
        return SuperEllipse(self.cx, self.cy, self.ax + mm, self.ay + mm, self.power)


@dataclass(frozen=True)
class Tube:
    """A capsule (cylinder with round ends) from ``start`` to ``end``: one branch of a tree or a piece of a vessel."""

    start: Point
    end: Point
    radius: float


@dataclass(frozen=True)
class Fissure:
    """Fissure surface z = z0 + slope * (y - y0) + bow * 4u(1-u) + tilt * (|x| - x0), u = (y - y0) / span."""

    z0: float
    y0: float
    slope: float
    span: float
    bow: float = 0.0
    tilt: float = 0.0
    x0: float = 60.0

    def surface(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Height of the surface over (x, y) and the factor turning a height difference into a distance.

        ``(z - height) / norm`` is then the signed distance (positive above): exact for a plane, close for the mild bow.
        """
        u = (y - self.y0) / self.span
        height = (self.z0 + self.slope * (y - self.y0) + self.bow * 4.0 * u * (1.0 - u)
                  + self.tilt * (np.abs(x) - self.x0))
        dz_dy = self.slope + self.bow * 4.0 * (1.0 - 2.0 * u) / self.span
        return height, np.sqrt(1.0 + dz_dy ** 2 + self.tilt ** 2)


@dataclass(frozen=True)
class Supply:
    """Where a tree enters a lobe: the lobar branch starts at ``point`` with ``radius``."""

    lobe: str
    point: Point
    radius: float


@dataclass(frozen=True)
class Anatomy:
    body: SuperEllipse
    subcutaneous: SuperEllipse  # inner border of the fat layer
    cavity: SuperEllipse  # inner border of the rib cage
    spine_y: float
    spine_radius: float
    apex_z: float
    taper_start_z: float  # the lungs narrow toward their apices above this height
    dome_z: tuple[float, float]  # top of the right and left hemidiaphragm
    dome_depth: float
    lung_centre: tuple[float, float]  # (|x|, y) of each lung's cross-section centre
    lung_axes: tuple[float, float]
    mediastinum_half_width: tuple[float, float]  # (below, above) the top of the heart
    heart_centre: Point
    heart_axes: Point
    airway_roots: tuple[Tube, ...]
    aorta: tuple[Tube, ...]
    artery_roots: tuple[Tube, ...]
    vein_roots: tuple[Tube, ...]
    airway_supply: tuple[Supply, ...]
    artery_supply: tuple[Supply, ...]
    vein_supply: tuple[Supply, ...]
    oblique: tuple[Fissure, Fissure]  # right, left
    horizontal: Fissure

    def mediastinal_tubes(self) -> tuple[Tube, ...]:
        """Central airways and great vessels, which the lungs wrap around but never contain."""
        return self.airway_roots + self.aorta + self.artery_roots + self.vein_roots

    def diaphragm_height(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """z of the diaphragm: two domes falling toward the lateral and (mostly) posterior costophrenic recesses."""
        top = np.where(x < 0, self.dome_z[0], self.dome_z[1])
        lateral = np.maximum(np.abs(x) - 45.0, 0.0) / 75.0
        dy = y - 5.0
        sagittal = dy / np.where(dy < 0, 70.0, 110.0)
        return top - self.dome_depth * np.minimum(lateral ** 2 + sagittal ** 2, 1.3)

    def lung_taper(self, z: np.ndarray) -> np.ndarray:
        """Cross-section scale of each lung at height z: 1 below ``taper_start_z``, falling to 0 at the apex."""
        t = np.clip((z - self.taper_start_z) / (self.apex_z - self.taper_start_z), 0.0, 1.0)
        return np.sqrt(1.0 - t ** 2)

    @classmethod
    def from_params(cls, params: PhantomParams) -> "Anatomy":
        """Landmarks scaled from body size, lung height and cardiothoracic ratio (heart width = ctr x cavity width)."""
        half_width, half_depth, fat = params.body_width_mm / 2, params.body_depth_mm / 2, params.fat_mm
        cavity_back, cavity_front = -(half_depth - fat - 28.0), half_depth - fat - 20.0
        cavity = SuperEllipse(0.0, (cavity_back + cavity_front) / 2, half_width - fat - 16.0,
                              (cavity_front - cavity_back) / 2, 2.6)
        spine_y = cavity_back + 14.0
        apex_z = 118.0
        dome_right = apex_z - params.lung_height_mm
        carina_z = apex_z - 75.0
        heart_axes = (params.ctr * cavity.ax, 46.0 * (params.ctr / 0.45) ** 0.5, 52.0 * (params.ctr / 0.45) ** 0.4)
        heart = (heart_axes[0] / 3.0, cavity_front - 8.0 - heart_axes[1], dome_right + 0.62 * heart_axes[2] - 4.0)
        trachea_y = spine_y + 32.0
        airway_roots, airway_supply = _airways(trachea_y, carina_z)
        artery_roots, artery_supply = _arteries(heart, heart_axes, trachea_y, carina_z)
        vein_roots, vein_supply = _veins(heart, heart_axes, trachea_y, carina_z)
        return cls(
            body=SuperEllipse(0.0, 0.0, half_width, half_depth, 2.2),
            subcutaneous=SuperEllipse(0.0, 0.0, half_width - fat, half_depth - fat, 2.2),
            cavity=cavity, spine_y=spine_y, spine_radius=16.0,
            apex_z=apex_z, taper_start_z=dome_right, dome_z=(dome_right, dome_right - 12.0), dome_depth=55.0,
            lung_centre=(0.5 * cavity.ax, cavity.cy - 8.0), lung_axes=(0.62 * cavity.ax, 1.2 * cavity.ay),
            mediastinum_half_width=(9.0, 16.0),
            heart_centre=heart, heart_axes=heart_axes,
            airway_roots=airway_roots, aorta=_aorta(heart, heart_axes, trachea_y, carina_z, spine_y),
            artery_roots=artery_roots, vein_roots=vein_roots,
            airway_supply=airway_supply, artery_supply=artery_supply, vein_supply=vein_supply,
            oblique=(_oblique(cavity_back, cavity_front, carina_z + 24.0, dome_right - 10.0),
                     _oblique(cavity_back, cavity_front, carina_z + 30.0, dome_right - 17.0)),
            horizontal=Fissure(z0=carina_z - 20.0, y0=0.0, slope=0.08, span=cavity_front, tilt=-0.06),
        )


def _oblique(back: float, front: float, z_back: float, z_front: float) -> Fissure:
    """Oblique fissure from the back of the lung at ``z_back`` down to the anterior diaphragm at ``z_front``."""
    return Fissure(z0=z_back, y0=back, slope=(z_front - z_back) / (front - back), span=front - back, bow=6.0, tilt=0.08)


def _airways(trachea_y: float, carina_z: float) -> tuple[tuple[Tube, ...], tuple[Supply, ...]]:
    """Trachea, main bronchi and bronchus intermedius; the lobar bronchi grow from their ends."""
    carina = (0.0, trachea_y, carina_z)
    right_hilum = (-30.0, trachea_y - 2.0, carina_z - 22.0)
    left_hilum = (36.0, trachea_y - 6.0, carina_z - 30.0)
    intermedius_end = (-36.0, trachea_y - 2.0, carina_z - 45.0)
    roots = (Tube((0.0, trachea_y + 6.0, 160.0), carina, 8.5), Tube(carina, right_hilum, 6.5),
             Tube(carina, left_hilum, 5.8), Tube(right_hilum, intermedius_end, 5.2))
    supply = (Supply("RUL", right_hilum, 4.5), Supply("RML", intermedius_end, 3.6), Supply("RLL", intermedius_end, 4.6),
              Supply("LUL", left_hilum, 4.8), Supply("LLL", left_hilum, 4.8))
    return roots, supply


def _arteries(heart: Point, axes: Point, trachea_y: float,
              carina_z: float) -> tuple[tuple[Tube, ...], tuple[Supply, ...]]:
    """Pulmonary trunk from the front of the heart, splitting under the arch into the right and left arteries."""
    trunk_start = (heart[0] + 0.2 * axes[0], heart[1] + 0.45 * axes[1], heart[2] + 0.55 * axes[2])
    bifurcation = (8.0, trachea_y + 22.0, carina_z - 2.0)
    right, left = (-34.0, trachea_y + 14.0, carina_z - 20.0), (38.0, trachea_y + 4.0, carina_z - 14.0)
    roots = (Tube(trunk_start, bifurcation, 13.0), Tube(bifurcation, right, 10.0), Tube(bifurcation, left, 10.0))
    supply = tuple(Supply(lobe, right, 5.5) for lobe in ("RUL", "RML", "RLL")) + tuple(
        Supply(lobe, left, 5.8) for lobe in ("LUL", "LLL"))
    return roots, supply


def _veins(heart: Point, axes: Point, trachea_y: float, carina_z: float) -> tuple[tuple[Tube, ...], tuple[Supply, ...]]:
    """Four pulmonary veins from the left atrium (back of the heart) to the lower hila."""
    atrium = (heart[0] - 0.1 * axes[0], heart[1] - 0.7 * axes[1], heart[2] + 0.2 * axes[2])
    ends = {"RSPV": (-34.0, trachea_y + 6.0, carina_z - 48.0), "RIPV": (-30.0, trachea_y - 6.0, carina_z - 72.0),
            "LSPV": (36.0, trachea_y + 2.0, carina_z - 42.0), "LIPV": (34.0, trachea_y - 10.0, carina_z - 66.0)}
    roots = tuple(Tube(atrium, end, 7.5) for end in ends.values())
    drains = {"RUL": "RSPV", "RML": "RSPV", "RLL": "RIPV", "LUL": "LSPV", "LLL": "LIPV"}
    return roots, tuple(Supply(lobe, ends[vein], 5.0) for lobe, vein in drains.items())


def _aorta(heart: Point, axes: Point, trachea_y: float, carina_z: float, spine_y: float) -> tuple[Tube, ...]:
    """Ascending aorta from the heart, arch passing left of the trachea, descending aorta left of the spine."""
    path = [(heart[0] - 0.45 * axes[0], heart[1] + 0.15 * axes[1], heart[2] + 0.45 * axes[2]),
            (-10.0, trachea_y + 42.0, carina_z + 28.0), (12.0, trachea_y + 26.0, carina_z + 40.0),
            (26.0, trachea_y + 4.0, carina_z + 34.0), (28.0, spine_y + 5.0, carina_z + 10.0),
            (26.0, spine_y + 5.0, -170.0)]
    radii = (14.0, 13.0, 12.5, 12.0, 12.0)
    return tuple(Tube(a, b, r) for a, b, r in zip(path[:-1], path[1:], radii))
