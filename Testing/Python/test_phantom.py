"""Procedural chest phantoms: ground-truth guarantees measured on the images, determinism, grid independence, the
report generator, and the dataset writer."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from medsyn.data.manifest import read_manifest
from medsyn.errors import MedSynError
from medsyn.phantom.cli import run_phantom
from medsyn.phantom.generator import generate_phantom
from medsyn.phantom.params import LOBE_LABEL, Lesion, PhantomParams, sample_params
from medsyn.phantom.reports import normal_report, write_report
from medsyn.phantom.space import FOV_XYZ_MM, Coords, phantom_grid

CROSS = ndimage.generate_binary_structure(3, 1)
SICK = PhantomParams(effusion_side="right", effusion_severity="moderate", effusion_ml=400.0, ctr=0.62,
                     emphysema="moderate", laa950_target=15.0, consolidation=("RUL",),
                     nodules=(Lesion("LUL", 14.0, 0.5),))


@pytest.fixture(scope="module")
def normal():
    return generate_phantom(PhantomParams(), (128, 128, 128), rng=0)


@pytest.fixture(scope="module")
def normal_64():
    return generate_phantom(PhantomParams(), (64, 64, 64), rng=0)


@pytest.fixture(scope="module")
def sick():
    return generate_phantom(SICK, (96, 96, 96), rng=1)


def _coords(phantom) -> Coords:
    return Coords.from_grid(phantom.grid)


def _nearest_index(phantom, point_xyz_mm) -> tuple[int, int, int]:
    """(k, j, i) of the voxel whose centre is closest to a phantom-frame point."""
    coords = _coords(phantom)
    return tuple(int(np.argmin(np.abs(axis - value))) for axis, value in zip((coords.z, coords.y, coords.x),
                                                                           point_xyz_mm[::-1]))


def _measured_effusion_ml(phantom, side: str) -> float:
    """Fluid measured on the image: fluid-range HU outside the lungs, in components touching that side's lung."""
    ct = ndimage.median_filter(phantom.ct, footprint=CROSS)
    columns = (_coords(phantom).x > 0) if side == "left" else (_coords(phantom).x < 0)
    candidate = (ct > -40) & (ct < 25) & (phantom.lobes == 0) & columns[None, None, :]
    labels, _ = ndimage.label(candidate, structure=CROSS)
    lung_rim = ndimage.binary_dilation((phantom.lobes > 0) & columns[None, None, :], structure=CROSS)
    touching = np.unique(labels[lung_rim & (labels > 0)])
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, touching)
    return float(np.isin(labels, touching[sizes >= 30]).sum()) * _coords(phantom).voxel_ml


def _measured_ctr(phantom) -> float:
    """Heart width along the row through the heart centre / widest left-right extent of the lungs."""
    k, j, i = _nearest_index(phantom, phantom.truth["heart_centre_mm"])
    soft = ndimage.median_filter(phantom.ct[k], size=3)[j] > -40
    left, right = i, i
    while left > 0 and soft[left - 1]:
        left -= 1
    while right < soft.size - 1 and soft[right + 1]:
        right += 1
    lung_columns = np.flatnonzero((phantom.lobes > 0).any(axis=(0, 1)))
    return (right - left + 1) / (lung_columns[-1] - lung_columns[0] + 1)


# --- anatomy and orientation ------------------------------------------------------------------------------------

def test_lobes_present_on_their_side_and_in_anatomical_order(normal):
    lobes = normal.lobes
    assert set(np.unique(lobes)) == {0, 1, 2, 3, 4, 5}
    k, j, i = np.indices(lobes.shape, sparse=True)
    centre = {name: [float((axis * (lobes == label)).sum() / (lobes == label).sum()) for axis in (k, j, i)]
              for name, label in LOBE_LABEL.items()}
    width = lobes.shape[2]
    assert all(centre[name][2] > width / 2 for name in ("LUL", "LLL"))  # patient left = high i
    assert all(centre[name][2] < width / 2 for name in ("RUL", "RML", "RLL"))
    assert centre["LUL"][0] > centre["LLL"][0] and centre["RUL"][0] > centre["RML"][0]  # upper lobes superior
    assert centre["RML"][1] > centre["RLL"][1] and centre["LUL"][1] > centre["LLL"][1]  # lower lobes posterior
    volumes = normal.truth["lobe_volumes_ml"]
    assert 0.05 < volumes["RML"] / normal.truth["lung_volume_ml"] < 0.15
    assert 2000 < normal.truth["lung_volume_ml"] < 6000


def test_spine_posterior_heart_left(normal):
    height, width = normal.ct.shape[1:]
    bone_j = np.nonzero(normal.ct > 400)[1]
    assert np.median(bone_j) < height / 2  # spine and posterior ribs dominate the bone: posterior = low j
    heart_x = normal.truth["heart_centre_mm"][0]
    assert heart_x > 0


def test_lobes_lie_inside_the_body_and_are_aerated(normal):
    lungs = normal.lobes > 0
    body = np.stack([ndimage.binary_fill_holes(axial) for axial in normal.ct > -300])
    assert not (lungs & ~body).any()
    assert np.mean(normal.ct[lungs] < -600) > 0.85
    assert -900 < np.median(normal.ct[lungs]) < -780


def test_fissures_separate_every_pair_of_touching_lobes(normal):
    lobes, ct = normal.lobes, normal.ct
    pairs: dict[tuple[int, int], int] = {}
    bright = total = 0
    for axis in range(3):
        a, b = np.moveaxis(lobes, axis, 0), np.moveaxis(ct, axis, 0)
        boundary = (a[1:] != a[:-1]) & (a[1:] > 0) & (a[:-1] > 0)
        hu = np.maximum(b[1:], b[:-1])[boundary]
        bright += int(np.count_nonzero(hu > -750))
        total += hu.size
        for first, second in zip(a[1:][boundary], a[:-1][boundary]):
            key = (int(min(first, second)), int(max(first, second)))
            pairs[key] = pairs.get(key, 0) + 1
    assert set(pairs) == {(1, 2), (3, 4), (3, 5), (4, 5)}  # LUL|LLL, RUL|RML, RUL|RLL, RML|RLL
    assert bright / total > 0.97
    parenchyma = np.median(ct[lobes > 0])
    assert parenchyma < -800


def test_airway_is_one_tree_from_the_trachea_reaching_every_lobe(normal):
    airway = normal.airway > 0
    labels, count = ndimage.label(airway, structure=np.ones((3, 3, 3)))
    assert count == 1
    assert airway[-1].any()  # the trachea leaves through the top of the field of view
    for label in LOBE_LABEL.values():
        assert np.count_nonzero(airway & (normal.lobes == label)) > 30
    assert np.median(normal.ct[airway]) < -850


def test_vessels_branch_through_the_lungs(normal):
    vessels = normal.vessels > 0
    near_lungs = ndimage.binary_dilation(normal.lobes > 0, iterations=4)
    assert np.mean(near_lungs[vessels]) > 0.95
    for label in LOBE_LABEL.values():
        assert np.count_nonzero(vessels & (normal.lobes == label)) > 100
    lungs = normal.lobes > 0
    assert np.median(normal.ct[vessels & lungs]) > np.median(normal.ct[lungs & ~vessels]) + 400  # partial volume
    assert not (vessels & (normal.airway > 0)).any()


def test_hounsfield_ranges_are_plausible(normal):
    ct = normal.ct
    assert ct.dtype == np.int16 and ct.min() >= -1024
    assert np.percentile(ct[ct > 300], 90) > 700  # cortical bone
    corner_air = ct[:, :8, :8]
    assert abs(np.median(corner_air) + 1000) < 20
    assert 10 < normal.truth["noise_hu"] < 22
    k, j, i = _nearest_index(normal, normal.truth["heart_centre_mm"])
    assert 20 < ct[k, j - 2:j + 3, i - 2:i + 3].mean() < 65


# --- findings -----------------------------------------------------------------------------------------------------

def test_effusion_volume_measured_on_the_image_matches_truth(sick, normal):
    truth = sick.truth["effusion_ml"]
    assert truth["left"] == 0.0 and truth["right"] == pytest.approx(400.0, rel=0.02)
    assert _measured_effusion_ml(sick, "right") == pytest.approx(truth["right"], rel=0.15)
    # Without fluid, only noise-cold blood or muscle next to the lung reads as fluid: a few mL.
    assert _measured_effusion_ml(sick, "left") < 30.0
    assert _measured_effusion_ml(normal, "right") < 30.0
    fluid_j = np.nonzero(sick.effusion)[1]
    lung_j = np.nonzero(sick.lobes)[1]
    assert fluid_j.mean() < lung_j.mean()  # supine: the fluid is dependent, posterior = low j


def test_effusion_grows_with_severity():
    measured = []
    for severity, volume in (("small", 120.0), ("moderate", 400.0), ("large", 800.0)):
        params = PhantomParams(effusion_side="bilateral", effusion_severity=severity, effusion_ml=volume)
        phantom = generate_phantom(params, (96, 96, 96), rng=2)
        measured.append(_measured_effusion_ml(phantom, "left"))
        assert measured[-1] == pytest.approx(volume, rel=0.15)
    assert measured[0] < measured[1] < measured[2]


def test_cardiomegaly_widens_the_heart_on_the_image(sick, normal):
    assert _measured_ctr(normal) == pytest.approx(normal.truth["ctr"], abs=0.03)
    assert _measured_ctr(sick) == pytest.approx(sick.truth["ctr"], abs=0.03)
    assert normal.truth["ctr"] == pytest.approx(0.45, abs=0.03) and sick.truth["ctr"] == pytest.approx(0.62, abs=0.03)


def test_emphysema_hits_its_laa950_target_with_upper_zone_predominance(sick, normal):
    lungs = sick.lobes > 0
    laa = 100.0 * np.mean(sick.ct[lungs] < -950)
    assert laa == pytest.approx(15.0, abs=1.0)
    assert 100.0 * np.mean(normal.ct[normal.lobes > 0] < -950) < 2.0
    depth = sick.ct.shape[0]
    upper, lower = lungs.copy(), lungs.copy()
    upper[: depth // 2], lower[depth // 2:] = False, False
    assert np.mean(sick.ct[upper] < -950) > np.mean(sick.ct[lower] < -950)


def test_consolidation_keeps_air_bronchograms_and_nodule_is_solid(sick):
    consolidated = sick.lobes == LOBE_LABEL["RUL"]
    assert np.median(sick.ct[consolidated]) > -150
    assert np.median(sick.ct[consolidated & (sick.airway > 0)]) < -600  # air bronchograms
    k, j, i = _nearest_index(sick, sick.truth["nodules"][0]["centre_mm"])
    assert sick.lobes[k, j, i] == LOBE_LABEL["LUL"]
    assert -60 < sick.ct[k, j - 1:j + 2, i - 1:i + 2].mean() < 90


# --- determinism and grid independence -------------------------------------------------------------------------

def test_same_seed_same_phantom_other_seed_other_texture_same_anatomy(normal_64):
    again = generate_phantom(PhantomParams(), (64, 64, 64), rng=0)
    for name in ("ct", "lobes", "airway", "vessels", "effusion"):
        np.testing.assert_array_equal(getattr(again, name), getattr(normal_64, name))
    other = generate_phantom(PhantomParams(), (64, 64, 64), rng=1)
    assert not np.array_equal(other.ct, normal_64.ct)
    np.testing.assert_array_equal(other.lobes, normal_64.lobes)


def test_grid_sizes_show_the_same_patient(normal, normal_64):
    fine, coarse = normal.lobes[::2, ::2, ::2], normal_64.lobes
    union = (fine > 0) | (coarse > 0)
    assert np.mean(fine[union] == coarse[union]) > 0.85
    assert normal_64.truth["lung_volume_ml"] == pytest.approx(normal.truth["lung_volume_ml"], rel=0.05)
    assert normal_64.truth["ctr"] == pytest.approx(normal.truth["ctr"], abs=0.03)


def test_grid_geometry_is_the_centred_las_atlas_frame():
    grid = phantom_grid((64, 80, 96))
    assert grid.spacing_xyz == pytest.approx((FOV_XYZ_MM[0] / 96, FOV_XYZ_MM[1] / 80, FOV_XYZ_MM[2] / 64))
    assert grid.direction_lps == (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    centre = grid.index_to_lps_affine() @ np.array([95 / 2, 79 / 2, 63 / 2, 1.0])
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-9)
    with pytest.raises(MedSynError):
        phantom_grid((4, 64, 64))


# --- params and reports ------------------------------------------------------------------------------------------

def test_params_round_trip_and_validation():
    params = PhantomParams.from_dict(json.loads(json.dumps(SICK.to_dict())))
    assert params == SICK
    with pytest.raises(MedSynError):
        PhantomParams(effusion_side="left")
    with pytest.raises(MedSynError):
        PhantomParams.from_dict({"colour": "blue"})
    with pytest.raises(MedSynError):
        PhantomParams(consolidation=("LML",))


def test_sampled_params_mix_normals_and_every_finding():
    samples = [sample_params(np.random.default_rng(seed)) for seed in range(300)]
    assert 0.08 < np.mean([s.is_normal for s in samples]) < 0.35
    assert {s.effusion_side for s in samples} == {"none", "left", "right", "bilateral"}
    assert {s.emphysema for s in samples} == {"none", "mild", "moderate", "severe"}
    assert any(s.cardiomegaly for s in samples) and any(s.consolidation for s in samples)
    assert any(len(s.nodules) > 1 for s in samples) and any(s.bullae for s in samples)


def _sentences_about(text: str, pattern: str) -> list[str]:
    return [s for s in re.split(r"(?<=\.)\s+", text) if re.search(pattern, s, re.IGNORECASE)]


def test_report_negates_absent_findings():
    for seed in range(30):
        findings = normal_report(np.random.default_rng(seed)).findings
        for term in (r"pleural (effusion|fluid)", "pneumothorax", "emphysema", "consolidation", "nodule"):
            sentences = _sentences_about(findings, term)
            assert sentences and all(re.search(r"\bno\b", s, re.IGNORECASE) for s in sentences), (term, findings)
        assert re.search(r"cardiomegaly|heart|cardiac", findings, re.IGNORECASE)


def test_report_states_laterality_and_severity():
    for seed in range(30):
        rng = np.random.default_rng(seed)
        for side in ("left", "right", "bilateral"):
            params = PhantomParams(effusion_side=side, effusion_severity="large", effusion_ml=700.0, ctr=0.6,
                                   emphysema="severe", laa950_target=25.0, nodules=(Lesion("RML", 8.0, 0.1),))
            report = write_report(params, rng)
            effusion = " ".join(_sentences_about(report.findings, r"pleural (effusion|fluid)")).lower()
            assert "large" in effusion and side in effusion and not re.search(r"\bno\b", effusion)
            assert "severe" in report.findings.lower() and "right middle lobe" in report.findings
            assert re.search(r"cardiomegaly|enlarged", report.findings, re.IGNORECASE)
            assert "8 mm" in report.findings and report.impression


def test_report_wording_varies_and_is_never_empty():
    params = SICK
    texts = {write_report(params, np.random.default_rng(seed)).text for seed in range(20)}
    assert len(texts) >= 15
    for seed in range(100):
        report = write_report(sample_params(np.random.default_rng(seed)), np.random.default_rng(seed))
        assert report.findings.strip() and report.impression.strip()
        assert report.text.startswith("FINDINGS: ") and " IMPRESSION: " in report.text


# --- dataset writer ------------------------------------------------------------------------------------------------

def test_run_phantom_writes_a_training_manifest(tmp_path):
    run_phantom(2, seed=7, size=32, spacing=None, out_dir=tmp_path)
    rows = read_manifest(tmp_path / "manifest.jsonl")
    assert [row.case_id for row in rows] == ["case_0000", "case_0001"]
    assert all(row.report.startswith("FINDINGS:") for row in rows)
    image = sitk.ReadImage(str(rows[0].ct))
    assert image.GetPixelID() == sitk.sitkInt16 and image.GetSize() == (32, 32, 32)
    assert image.GetDirection() == pytest.approx((1, 0, 0, 0, -1, 0, 0, 0, 1))
    assert image.GetSpacing() == pytest.approx((316 / 32, 316 / 32, 292 / 32))
    assert image.TransformContinuousIndexToPhysicalPoint((15.5, 15.5, 15.5)) == pytest.approx((0, 0, 0), abs=1e-4)
    lobes = sitk.GetArrayFromImage(sitk.ReadImage(str(rows[0].masks["lobes"])))
    assert lobes.dtype == np.uint8 and set(np.unique(lobes)) <= set(range(6))
    record = json.loads((tmp_path / "case_0000" / "params.json").read_text())
    assert PhantomParams.from_dict(record["params"]) and "effusion_ml" in record["truth"]
    run_phantom(1, seed=7, size=32, spacing=None, out_dir=tmp_path / "again")
    again = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "again" / "case_0000" / "ct.nii.gz")))
    np.testing.assert_array_equal(again, sitk.GetArrayFromImage(image))
