"""Chest wall, upper abdomen and skeleton (ribs, sternum, spine) painted into a CT volume.

Most of the torso is an axial template extruded along z; ribs and vertebrae add the z structure. Ribs slope down toward
the front as real ribs do, so one axial slice shows short arcs of several ribs rather than one complete ring.
"""
from __future__ import annotations

import numpy as np

from medsyn.phantom import tissues as hu
from medsyn.phantom.anatomy import Anatomy
from medsyn.phantom.space import Coords

RIB_COUNT = 12
RIB_PITCH_MM = 24.0  # one vertebra per rib
RIB_HEIGHT_MM = 11.0
RIB_THICKNESS_MM = 9.0
RIB_DROP_MM = 55.0  # how much lower the front end of a rib lies than its back
CORTEX_MM = 1.8
DISC_MM = 5.0


def paint_torso(ct: np.ndarray, anatomy: Anatomy, coords: Coords) -> None:
    """Write air, subcutaneous fat, muscle, mediastinal fat, liver/spleen, ribs, sternum and spine into ``ct``."""
    x, y = coords.xx[0], coords.yy[0]
    inside_cavity = anatomy.cavity.radius(x, y) < 1.0
    ct[...] = np.select([inside_cavity, anatomy.subcutaneous.radius(x, y) < 1.0, anatomy.body.radius(x, y) < 1.0],
                        [hu.MEDIASTINAL_FAT, hu.MUSCLE, hu.SUBCUTANEOUS_FAT], hu.AIR)[None]
    abdomen = inside_cavity[None] & (coords.zz < anatomy.diaphragm_height(x, y)[None])
    np.copyto(ct, np.where(x < 25.0, hu.LIVER, hu.ABDOMEN).astype(np.float32)[None], where=abdomen)
    _paint_ribs_and_sternum(ct, anatomy, coords)
    reach = anatomy.spine_radius
    spine_box, spine_coords = coords.box((-reach, _canal_y(anatomy) - 36.0, -np.inf),
                                         (reach, anatomy.spine_y + reach, np.inf))
    _paint_spine(ct[spine_box], anatomy, spine_coords)


def _canal_y(anatomy: Anatomy) -> float:
    return anatomy.spine_y - anatomy.spine_radius - 10.0


def _rib_top_z(anatomy: Anatomy) -> float:
    """Back end of the first rib, at the level of the lung apex."""
    return anatomy.apex_z + 4.0


def _paint_ribs_and_sternum(ct: np.ndarray, anatomy: Anatomy, coords: Coords) -> None:
    x, y = coords.xx[0], coords.yy[0]
    cavity = anatomy.cavity
    band = (cavity.radius(x, y) >= 1.0) & (cavity.grown(RIB_THICKNESS_MM).radius(x, y) < 1.0)
    band_core = (cavity.grown(-CORTEX_MM).radius(x, y) >= 1.0) & (
        cavity.grown(RIB_THICKNESS_MM - CORTEX_MM).radius(x, y) < 1.0)
    rows, cols = np.nonzero(band)
    if rows.size == 0:
        return
    px, py = coords.x[cols], coords.y[rows]
    # Angle around the chest from the spine (0) to the sternum (pi).
    from_back = np.abs(np.angle(np.exp(1j * (np.arctan2((py - cavity.cy) / cavity.ay, px / cavity.ax) + np.pi / 2))))
    along = (_rib_top_z(anatomy) - RIB_DROP_MM * (1.0 - np.cos(from_back)) / 2.0)[None] - coords.z[:, None]
    rib_index = np.rint(along / RIB_PITCH_MM)
    offset = np.abs(along - rib_index * RIB_PITCH_MM)
    in_rib_height = (offset < RIB_HEIGHT_MM / 2) & (rib_index >= 0) & (rib_index < RIB_COUNT)
    bony_end = 2.55 - 0.25 * np.maximum(rib_index - 8, 0)  # lower ribs stop short: floating ribs
    bone = in_rib_height & (from_back > 0.3) & (from_back < bony_end)
    cartilage = in_rib_height & (from_back >= bony_end) & (rib_index < 10)
    cortical = (offset > RIB_HEIGHT_MM / 2 - CORTEX_MM) | ~band_core[rows, cols][None]
    values = ct[:, rows, cols]
    values = np.where(bone, np.where(cortical, hu.CORTICAL_BONE, hu.CANCELLOUS_BONE), values)
    values = np.where(cartilage, hu.CARTILAGE, values)
    sternum = (np.abs(px) < 14.0) & (py > cavity.cy)
    sternum_z = (coords.z > anatomy.dome_z[0] - 5.0) & (coords.z < _rib_top_z(anatomy) - 10.0)
    values = np.where(sternum[None] & sternum_z[:, None],
                      np.where(band_core[rows, cols], hu.CANCELLOUS_BONE, hu.CORTICAL_BONE)[None], values)
    ct[:, rows, cols] = values


def _paint_spine(ct: np.ndarray, anatomy: Anatomy, coords: Coords) -> None:
    """Vertebral bodies with discs, the spinal canal with its bony ring, and the spinous processes (``ct`` may be a
    view of the spine's box, ``coords`` its coordinates)."""
    x, y = coords.xx[0], coords.yy[0]
    radius = anatomy.spine_radius
    body_distance = np.hypot(x, y - anatomy.spine_y)
    canal_y = _canal_y(anatomy)
    canal_distance = np.hypot(x, y - canal_y)
    level = (_rib_top_z(anatomy) - coords.z) / RIB_PITCH_MM
    disc = (np.abs(level - np.rint(level)) * RIB_PITCH_MM < DISC_MM / 2)[:, None, None]
    spinous_level = (np.abs(level - np.rint(level) - 0.5) < 0.3)[:, None, None]
    body = (body_distance < radius)[None]
    body_value = np.where(disc, hu.DISC, np.where((body_distance > radius - CORTEX_MM)[None], hu.CORTICAL_BONE,
                                                   hu.CANCELLOUS_BONE))
    np.copyto(ct, body_value.astype(np.float32), where=body)
    np.copyto(ct, np.float32(hu.CORTICAL_BONE), where=((canal_distance >= 8.0) & (canal_distance < 12.0))[None])
    np.copyto(ct, np.float32(hu.SPINAL_CORD), where=(canal_distance < 8.0)[None])
    spinous = (np.abs(x) < 4.0) & (y < canal_y - 10.0) & (y > canal_y - 36.0)
    np.copyto(ct, np.float32(hu.CANCELLOUS_BONE), where=spinous[None] & spinous_level)
