"""Masks segmented from a CT alone, with thresholds and connected components (no network weights can be fetched here).

Every function works in the patient-aligned frame of ``geometry.to_lps_array``: axis 0 runs inferior → superior,
axis 1 anterior → posterior, axis 2 patient right → left. The thresholds are textbook unenhanced-CT values, so the
masks are a fair referee for a generated CT and its generated mask channels, but they are not a clinical segmentation.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull

BODY_MIN_HU = -500.0  # fat (-100) and everything denser is body; lung (-850) and air are not
LUNG_MAX_HU = -400.0  # aerated lung and fissures; the half-way point between lung and soft tissue
AIRWAY_SEED_HU = -950.0  # only air lumen is this dark (unless emphysema, which the leak check stops)
AIRWAY_GROW_STEP_HU = 25.0
AIRWAY_LEAK_RATIO = 1.6  # a threshold step that grows the tree by more than this has leaked into the lungs...
AIRWAY_LEAK_MIN_ML = 20.0  # ...and adds this much: a bronchus or trachea fragment adds a few mL, a lung hundreds
AIRWAY_MAX_ML = 100.0  # twice the visible tree of a 128³ phantom (46-52 mL): a larger one has crept into lung
AIRWAY_SEED_MIN_ML = 0.2  # darker specks are noise; a 1 cm stretch of adult trachea alone holds about 2 mL
FLUID_HU = (-20.0, 30.0)  # simple pleural fluid; fat is below, muscle, liver and unenhanced blood above
SOFT_TISSUE_HU = (20.0, 150.0)  # blood, muscle, solid organs; fluid, fat and bone fall outside
LUNG_MIN_SHARE = 0.1  # an air component at least this share of the largest one is a lung, not bowel gas or noise
FLUID_MIN_ML = 5.0  # smaller regions are chest-wall speckle from the tail of muscle density
FAT_MAX_HU = -50.0  # a fluid voxel itself must be denser than fat, whatever its median neighbourhood says
HEART_OPENING_MM = 6.0  # cuts the heart from the aorta and pulmonary vessels it touches
HEART_ABOVE_DOME_MM = 10.0  # the liver dome is flat-topped: one slice below its top it is already wide
DOME_PERCENTILE = 90.0

SIX = ndimage.generate_binary_structure(3, 1)


def denoise(ct: np.ndarray) -> np.ndarray:
    """3×3×3 median: removes most voxel noise yet keeps edges, so thin partial-volume rings do not read as fluid."""
    return ndimage.median_filter(np.asarray(ct, dtype=np.float32), size=3)


def body_mask(ct: np.ndarray) -> np.ndarray:
    """Largest component denser than fat's lower bound, holes filled slice by slice (lungs and trachea are holes)."""
    dense = ct > BODY_MIN_HU
    labels, count = ndimage.label(dense, structure=SIX)
    if count == 0:
        return np.zeros(ct.shape, dtype=bool)
    body = labels == 1 + int(np.argmax(ndimage.sum_labels(dense, labels, np.arange(1, count + 1))))
    return np.stack([ndimage.binary_fill_holes(axial) for axial in body])


def midline_column(body: np.ndarray) -> float:
    """Left-right index of the body's centre of mass: voxels below it are the patient's right side."""
    columns = body.sum(axis=(0, 1))
    return float(np.average(np.arange(columns.size), weights=columns)) if columns.any() else columns.size / 2.0


def airway_mask(ct: np.ndarray, body: np.ndarray, voxel_ml: float) -> np.ndarray:
    """Air lumen connected to the trachea, grown by raising the threshold until one step leaks into the lungs.

    The trachea is the dark component near the midline that reaches highest (it leaves the chest above the lung
    apices). Each step admits partial-volume voxels of the bronchial lumen; aerated lung (about -850 HU) joins at
    once, which multiplies the volume, so the last step before that jump is kept. A jump counts in millilitres as
    well as in ratio, so a trachea that noise splits into fragments can still join up from its top fragment, and an
    upper bound stops a tree that creeps into a dark lung step by step. Thin bronchi that partial volume lifts above
    the lung's own attenuation cannot be told from lung and are missed: the mask is the central tree.
    """
    seed = _trachea(ct, body, voxel_ml)
    if not seed.any():
        return seed
    tree, size = seed, np.count_nonzero(seed)
    for threshold in np.arange(AIRWAY_SEED_HU + AIRWAY_GROW_STEP_HU, LUNG_MAX_HU, AIRWAY_GROW_STEP_HU):
        grown = _component_touching((ct < threshold) & body, seed)
        grown_size = np.count_nonzero(grown)
        jump = grown_size > AIRWAY_LEAK_RATIO * size and (grown_size - size) * voxel_ml > AIRWAY_LEAK_MIN_ML
        if jump or grown_size * voxel_ml > AIRWAY_MAX_ML:
            break
        tree, size = grown, grown_size
    return tree


def _trachea(ct: np.ndarray, body: np.ndarray, voxel_ml: float) -> np.ndarray:
    """The air-lumen component whose top is highest among those whose top lies in the middle third of the body.

    Components smaller than ``AIRWAY_SEED_MIN_ML`` are skipped: a dark noise voxel in the top slice would otherwise
    win and leave the referee with a one-voxel "tree".
    """
    labels, count = ndimage.label((ct < AIRWAY_SEED_HU) & body, structure=SIX)
    if count == 0:
        return np.zeros(ct.shape, dtype=bool)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    columns = np.flatnonzero(body.any(axis=(0, 1)))
    third = (columns[-1] - columns[0] + 1) / 3.0
    middle = (columns[0] + third, columns[-1] - third)
    best, best_top = 0, -1
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if sizes[label - 1] * voxel_ml < AIRWAY_SEED_MIN_ML:
            continue
        top = box[0].stop - 1
        top_columns = np.flatnonzero((labels[top] == label).any(axis=0))
        if middle[0] <= top_columns.mean() <= middle[1] and top > best_top:
            best, best_top = label, top
    return labels == best if best else np.zeros(ct.shape, dtype=bool)


def _component_touching(mask: np.ndarray, seed: np.ndarray) -> np.ndarray:
    labels, _ = ndimage.label(mask, structure=SIX)
    touched = np.unique(labels[seed & mask])
    return np.isin(labels, touched[touched > 0])


def lung_mask(ct: np.ndarray, body: np.ndarray, airway: np.ndarray) -> np.ndarray:
    """Aerated lung inside the body without the central airways, vessels and nodules filled in.

    Components of dark voxels below ``LUNG_MAX_HU`` are kept when they are a sizeable share of the largest (one or
    two lungs); small bubbles (noise, bowel gas) are dropped. Holes in each lung's axial sections (vessels, nodules,
    bronchi seen end-on) are filled; dense regions touching the lung's border (consolidation, fluid) are not lung.
    """
    aerated = (ct < LUNG_MAX_HU) & body & ~airway
    labels, count = ndimage.label(aerated, structure=SIX)
    if count == 0:
        return np.zeros(ct.shape, dtype=bool)
    sizes = ndimage.sum_labels(aerated, labels, np.arange(1, count + 1))
    boxes = ndimage.find_objects(labels)
    lungs = np.zeros(ct.shape, dtype=bool)
    for label in 1 + np.flatnonzero(sizes >= LUNG_MIN_SHARE * sizes.max()):
        box = boxes[label - 1]
        lungs[box] |= np.stack([ndimage.binary_fill_holes(axial) for axial in labels[box] == label])
    return lungs


def pleural_fluid_mask(ct: np.ndarray, smooth_ct: np.ndarray, body: np.ndarray, lungs: np.ndarray,
                       voxel_ml: float) -> np.ndarray:
    """Fluid-density regions lying under a lung with no lung behind them: the dependent fluid of a supine patient.

    Candidates are voxels in ``FLUID_HU`` on the denoised CT (and denser than fat on the raw CT, since a median
    across a thin fat layer can land in the fluid range) with no lung posterior to them on their anterior-posterior
    line. A connected region of them counts when it touches the lung, holds at least ``FLUID_MIN_ML`` and lies
    mostly behind lung (lung anterior to it on the same line). These rules keep the blurred edges of hilar vessels
    and the heart (lower lobes behind them) and chest-wall muscle (no lung in front) out of the volume. Limits:
    consolidated or collapsed dependent lung has the same density and is counted; loculated anterior fluid and
    fluid filling a whole hemithorax (no lung left in front of it) are missed.
    """
    low, high = FLUID_HU
    lung_behind = np.flip(np.logical_or.accumulate(np.flip(lungs, axis=1), axis=1), axis=1)
    lung_in_front = np.logical_or.accumulate(lungs, axis=1)
    candidates = (smooth_ct >= low) & (smooth_ct <= high) & (ct > FAT_MAX_HU) & body & ~lung_behind
    labels, _ = ndimage.label(candidates, structure=SIX)
    touching = np.unique(labels[ndimage.binary_dilation(lungs, structure=SIX) & candidates])
    touching = touching[touching > 0]
    sizes = ndimage.sum_labels(candidates, labels, touching)
    under_lung = ndimage.sum_labels(candidates & lung_in_front, labels, touching)
    return np.isin(labels, touching[(sizes * voxel_ml >= FLUID_MIN_ML) & (under_lung >= 0.5 * sizes)])


def heart_mask(smooth_ct: np.ndarray, lungs: np.ndarray, fluid: np.ndarray, body: np.ndarray,
               spacing_xyz: tuple[float, float, float]) -> np.ndarray:
    """The largest soft-tissue blob inside the chest's axial outline above the right hemidiaphragm.

    Inside each axial slice's convex hull of lungs and pleural fluid, soft tissue of the denoised CT is opened with
    a ball of ``HEART_OPENING_MM`` (thin vessels and partial-volume rims fall away); the largest 3-D component,
    given back the border voxels the opening shaved off, is the heart with the great vessels it joins. Only slices
    ``HEART_ABOVE_DOME_MM`` above the right hemidiaphragm (see ``right_dome_slice``) are searched, because below
    that the liver dome, inside the same outline and of nearly the same density as unenhanced blood, merges with
    the heart. Limits: the lowest part of the heart is cut off (its widest part lies higher) and pericardial fluid
    or fat are not separated.
    """
    thorax = lungs | fluid
    soft = (smooth_ct >= SOFT_TISSUE_HU[0]) & (smooth_ct <= SOFT_TISSUE_HU[1]) & ~thorax
    above_dome = right_dome_slice(lungs, fluid, body) + 1 + int(np.ceil(HEART_ABOVE_DOME_MM / spacing_xyz[2]))
    soft[:max(above_dome, 0)] = False
    for axial_soft, axial_thorax in zip(soft, thorax):
        if axial_soft.any():
            axial_soft &= _convex_hull_2d(axial_thorax)
    ball = _ball(HEART_OPENING_MM, spacing_xyz)
    opened = ndimage.binary_opening(soft, ball)
    labels, count = ndimage.label(opened, structure=SIX)
    if count == 0:
        return opened
    heart = labels == 1 + int(np.argmax(ndimage.sum_labels(opened, labels, np.arange(1, count + 1))))
    return ndimage.binary_dilation(heart, ball) & soft


def right_dome_slice(lungs: np.ndarray, fluid: np.ndarray, body: np.ndarray) -> int:
    """Axial index of the top of the right hemidiaphragm (-1 if no right lung is found).

    In the outer half of the right hemithorax (lateral to the heart) every column holding lung ends below on the
    diaphragm, directly or through the pleural fluid under it; the dome top is a high percentile of those floors
    rather than their maximum, so a few stray voxels cannot lift it.
    """
    midline = midline_column(body)
    columns = np.flatnonzero(lungs.any(axis=(0, 1)))
    if columns.size == 0 or columns[0] >= midline:
        return -1
    outer = slice(0, int(columns[0] + 0.5 * (midline - columns[0])) + 1)
    has_lung = lungs[:, :, outer].any(axis=0)
    floors = np.argmax((lungs | fluid)[:, :, outer], axis=0)[has_lung]
    return int(np.percentile(floors, DOME_PERCENTILE)) if floors.size else -1


def _ball(radius_mm: float, spacing_xyz: tuple[float, float, float]) -> np.ndarray:
    """Ellipsoidal structuring element of ``radius_mm`` in (z, y, x) voxel units."""
    reach = [max(1, int(radius_mm // spacing)) for spacing in spacing_xyz[::-1]]
    z, y, x = np.ogrid[tuple(slice(-r, r + 1) for r in reach)]
    sx, sy, sz = spacing_xyz
    return (z * sz) ** 2 + (y * sy) ** 2 + (x * sx) ** 2 <= radius_mm ** 2


def _convex_hull_2d(mask: np.ndarray) -> np.ndarray:
    """Filled convex hull of a 2-D mask (the mask itself when it has fewer than three non-collinear pixels)."""
    points = np.argwhere(mask)
    if len(points) < 3 or np.linalg.matrix_rank(points - points[0]) < 2:
        return mask.copy()
    hull = ConvexHull(points)
    low, high = points.min(axis=0), points.max(axis=0) + 1
    box = np.indices(high - low).reshape(2, -1).T + low  # the hull lies inside the points' bounding box
    inside = (box @ hull.equations[:, :2].T + hull.equations[:, 2] <= 1e-9).all(axis=1)
    filled = np.zeros(mask.shape, dtype=bool)
    filled[low[0]:high[0], low[1]:high[1]] = inside.reshape(high - low)
    return filled
