"""Evaluation metrics checked against phantoms with known truth, prompt-file parsing, comparison statistics, and the
``medsyn evaluate`` plumbing with a tiny random model (its numbers mean nothing; only the files and tables are
checked)."""
from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest

from medsyn.codec import DecodedVolume
from medsyn.errors import MedSynError
from medsyn.evaluation.cli import add_evaluate_command
from medsyn.evaluation.evaluate import MARKDOWN_NAME, RESULTS_NAME, SUMMARY_NAME, run_evaluation
from medsyn.evaluation import ct_segmentation as seg
from medsyn.evaluation.metrics import METRICS, measure_volume, volume_ml, voxel_ml
from medsyn.evaluation.prompts import read_prompt_set
from medsyn.evaluation.summary import compare, summarize
from medsyn.geometry import Grid, to_lps_array
from medsyn.phantom.generator import generate_phantom
from medsyn.phantom.params import PhantomParams
from tiny_model import build_tiny_model

SMALL = (64, 64, 64)


def _measure(phantom, masks=None):
    lobes, airway, vessels = masks or (phantom.lobes, phantom.airway, phantom.vessels)
    return measure_volume(DecodedVolume(phantom.ct, lobes, airway, vessels), phantom.grid).values


def _effusion(side: str, severity: str, ml: float) -> PhantomParams:
    return PhantomParams(effusion_side=side, effusion_severity=severity, effusion_ml=ml)


@pytest.fixture(scope="module")
def normal():
    phantom = generate_phantom(PhantomParams(), SMALL, rng=0)
    return phantom, _measure(phantom)


# --- metrics against phantom truth ----------------------------------------------------------------------------

def test_effusion_volume_per_side_and_ordering_none_small_large(normal):
    measured = {"none": normal[1]}
    for severity, ml in (("small", 120.0), ("large", 800.0)):
        phantom = generate_phantom(_effusion("right", severity, ml), SMALL, rng=3)
        measured[severity] = _measure(phantom)
        truth = phantom.truth["effusion_ml"]["right"]
        assert measured[severity]["effusion_right_ml"] == pytest.approx(truth, rel=0.1, abs=15.0)
        assert measured[severity]["effusion_left_ml"] < 15.0
    assert measured["none"]["effusion_right_ml"] < 15.0 and measured["none"]["effusion_left_ml"] < 15.0
    right = [measured[key]["effusion_right_ml"] for key in ("none", "small", "large")]
    assert right == sorted(right) and right[2] > 5 * right[1] > 0


def test_bilateral_effusion_and_cardiomegaly_on_a_finer_grid():
    phantom = generate_phantom(PhantomParams(effusion_side="bilateral", effusion_severity="moderate",
                                             effusion_ml=400.0, ctr=0.62), (96, 96, 96), rng=1)
    values = _measure(phantom)
    for side in ("left", "right"):
        assert values[f"effusion_{side}_ml"] == pytest.approx(phantom.truth["effusion_ml"][side], rel=0.1)
    assert values["ctr"] == pytest.approx(phantom.truth["ctr"], abs=0.03)


def test_cardiothoracic_ratio_matches_truth_and_orders_heart_sizes(normal):
    enlarged = generate_phantom(PhantomParams(ctr=0.66), SMALL, rng=7)
    small = generate_phantom(PhantomParams(ctr=0.38), SMALL, rng=5)
    ratios = []
    for phantom, values in ((small, _measure(small)), normal, (enlarged, _measure(enlarged))):
        assert values["ctr"] == pytest.approx(phantom.truth["ctr"], abs=0.05)
        ratios.append(values["ctr"])
    assert ratios[0] < ratios[1] < 0.5 < ratios[2]


def test_laa950_follows_emphysema_grade(normal):
    measured = [normal[1]["laa950_percent"]]
    assert measured[0] == pytest.approx(normal[0].truth["laa950_percent"], abs=0.5)
    for grade, target in (("moderate", 15.0), ("severe", 28.0)):
        phantom = generate_phantom(PhantomParams(emphysema=grade, laa950_target=target), SMALL, rng=4)
        measured.append(_measure(phantom)["laa950_percent"])
        assert measured[-1] == pytest.approx(phantom.truth["laa950_percent"], abs=1.0)
    assert measured == sorted(measured) and measured[0] < 1.0


def test_mask_volumes_equal_truth_and_ct_lungs_match_the_lobes(normal):
    phantom, values = normal
    for lobe, truth in phantom.truth["lobe_volumes_ml"].items():
        assert values[f"lobe_{lobe}_ml"] == pytest.approx(truth, rel=1e-9)
    for name, key in (("lung_mask_ml", "lung_volume_ml"), ("airway_ml", "airway_volume_ml"),
                      ("vessel_ml", "vessel_volume_ml")):
        assert values[name] == pytest.approx(phantom.truth[key], rel=1e-9)
    assert values["lung_ct_ml"] == pytest.approx(phantom.truth["lung_volume_ml"], rel=0.03)


def test_consistency_is_high_for_true_masks_and_low_for_shuffled_ones(normal):
    phantom, truth_masks = normal
    assert truth_masks["dice_lungs"] > 0.97
    assert truth_masks["airway_air_fraction"] > 0.95 and truth_masks["vessel_blood_fraction"] > 0.95
    assert truth_masks["airway_ct_coverage"] > 0.95 and truth_masks["dice_airway"] > 0.45
    # The same masks a quarter of the field of view too high: anatomy no longer matches the image.
    shift = phantom.ct.shape[0] // 4
    shuffled = _measure(phantom, [np.ascontiguousarray(np.roll(mask, shift, axis=0))
                                  for mask in (phantom.lobes, phantom.airway, phantom.vessels)])
    for name in ("dice_lungs", "airway_air_fraction", "vessel_blood_fraction", "airway_ct_coverage", "dice_airway"):
        assert shuffled[name] < truth_masks[name] - 0.3, name


def _with_edited_trachea(phantom, edit) -> dict:
    """Measure the phantom after ``edit(ct_view, airway_view)`` changed its CT (views in the referee's LPS frame)."""
    ct = phantom.ct.copy()
    edit(to_lps_array(ct, phantom.grid)[0], to_lps_array(phantom.airway, phantom.grid)[0] > 0)
    return measure_volume(DecodedVolume(ct, phantom.lobes, phantom.airway, phantom.vessels), phantom.grid).values


def test_airway_referee_survives_a_noise_speck_above_the_trachea_and_a_gap_in_it(normal):
    """Generated tracheas are fragmented and noisy; the referee must still find the tree, not a speck or a stub."""
    phantom, intact = normal

    def speck_above(ct, airway):  # the trachea's top three slices turn to tissue; one dark voxel stays at the top
        top = int(np.flatnonzero(airway.any(axis=(1, 2))).max())
        ct[top - 2:top + 1][airway[top - 2:top + 1]] = 40
        y, x = np.argwhere(airway[top]).mean(axis=0).round().astype(int)
        ct[top, y, x] = -1000

    def gap(ct, airway):  # one slice of the trachea partial-volumed to -900 HU, above the seed threshold
        lumen = np.flatnonzero(((ct < -950) & airway).any(axis=(1, 2)))
        z = (lumen.min() + lumen.max()) // 2 + 5
        ct[z][(ct[z] < -900) & airway[z]] = -900

    for edit in (speck_above, gap):
        values = _with_edited_trachea(phantom, edit)
        assert values["dice_airway"] > intact["dice_airway"] - 0.06, edit.__name__
        assert values["airway_ct_coverage"] > 0.9, edit.__name__


def test_airway_referee_stops_a_tree_creeping_into_a_dark_lung():
    """A trachea opening into lung that darkens towards it, so each threshold step adds 15 mL and never jumps: the
    tree must stop at an airway's size instead of swallowing the lung (as a ratio-only leak rule does)."""
    spacing = (5.0, 5.0, 5.0)
    ct = np.full((48, 48, 48), 40.0, dtype=np.float32)  # z (inferior → superior), y, x in the referee's frame
    z, y, x = np.indices(ct.shape)
    trachea = (z >= 30) & ((y - 24) ** 2 + (x - 24) ** 2 <= 4)
    lung = (z >= 4) & (z < 30) & (y >= 8) & (y < 40) & (x >= 8) & (x < 40)
    ct[trachea] = -1000.0
    distance = np.sqrt((z - 30.0) ** 2 + (y - 24.0) ** 2 + (x - 24.0) ** 2)[lung]
    layer = np.argsort(np.argsort(distance, kind="stable")) * voxel_ml(spacing) // 15.0
    ct[lung] = np.minimum(seg.AIRWAY_SEED_HU + 5 + seg.AIRWAY_GROW_STEP_HU * layer, -850.0)
    tree = seg.airway_mask(ct, seg.body_mask(ct), voxel_ml(spacing))
    assert tree[trachea].all()
    assert seg.AIRWAY_MAX_ML - 15 < volume_ml(tree, spacing) <= seg.AIRWAY_MAX_ML


@pytest.mark.parametrize("ct_value", [-1024, 40])
def test_degenerate_volume_gives_nan_with_notes_not_an_exception(ct_value):
    shape = (16, 20, 20)
    grid = Grid.centered(shape, (10.0, 10.0, 10.0), (1, 0, 0, 0, -1, 0, 0, 0, 1))
    empty = np.zeros(shape, dtype=np.uint8)
    measurement = measure_volume(DecodedVolume(np.full(shape, ct_value, np.int16), empty, empty, empty), grid)
    assert set(measurement.values) == set(METRICS)
    for name in ("ctr", "laa950_percent", "dice_lungs", "effusion_right_ml", "dice_airway", "airway_air_fraction"):
        assert math.isnan(measurement.values[name])
    assert any("no aerated lung" in note for note in measurement.notes)
    assert measurement.values["lung_mask_ml"] == 0.0


# --- prompts and comparisons ----------------------------------------------------------------------------------

def test_prompt_files_in_jsonl_json_and_text(tmp_path, repo_root):
    demo = read_prompt_set(repo_root / "Resources" / "Evaluation" / "demo_prompts.jsonl")
    labels = {(c.first, c.second, c.metric) for c in demo.comparisons}
    assert ("effusion_large_right", "effusion_none", "effusion_right_ml") in labels
    assert ("cardiomegaly", "heart_normal", "ctr") in labels
    assert ("emphysema_severe", "emphysema_none", "laa950_percent") in labels
    assert "normal" in {prompt.name for prompt in demo.prompts}

    as_json = tmp_path / "p.json"
    as_json.write_text(json.dumps({"prompts": [{"name": "a", "report": "No effusion."},
                                               {"name": "b", "report": "Large left effusion.", "group": "g"}],
                                   "comparisons": [{"compare": ["b", "a"], "metric": "effusion_left_ml"}]}))
    parsed = read_prompt_set(as_json)
    assert [p.name for p in parsed.prompts] == ["a", "b"] and parsed.comparisons[0].expect == "greater"

    as_text = tmp_path / "p.txt"
    as_text.write_text("# comment\nNormal chest.\n\nbig\tCardiomegaly.\n")
    assert [(p.name, p.report) for p in read_prompt_set(as_text).prompts] == [("prompt_01", "Normal chest."),
                                                                            ("big", "Cardiomegaly.")]


@pytest.mark.parametrize("lines, message", [
    (['{"name": "a", "report": "x"}', '{"compare": ["a", "z"], "metric": "ctr"}'], "unknown prompt 'z'"),
    (['{"name": "a", "report": "x"}', '{"name": "b", "report": "y"}', '{"compare": ["a", "b"], "metric": "size"}'],
     "unknown metric 'size'"),
    (['{"name": "a", "report": "x"}', '{"name": "a", "report": "y"}'], "used twice"),
    (['{"name": "a", "report": "  "}'], "line 1: prompt 'a' needs a non-empty"),
    (['{"name": "a b", "report": "x"}'], "line 1: name 'a b'"),
    (['{"name": "a", "report": "x"', ], "line 1 is not valid JSON"),
])
def test_bad_prompt_files_name_the_line(tmp_path, lines, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(MedSynError, match=message):
        read_prompt_set(path)


def test_comparison_statistics_pair_by_seed_and_ignore_nan(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"name": "hi", "report": "x"}\n{"name": "lo", "report": "y"}\n'
                    '{"compare": ["hi", "lo"], "metric": "ctr"}\n{"compare": ["lo", "hi"], "metric": "ctr"}\n')
    prompt_set = read_prompt_set(path)
    values = {"hi": [0.60, 0.62, 0.58, 0.45, math.nan], "lo": [0.44, 0.46, 0.45, 0.47, 0.43]}
    rows = [{"prompt": name, "seed": seed, "metrics": {**{m: 0.0 for m in METRICS}, "ctr": value}, "notes": []}
            for name, series in values.items() for seed, value in enumerate(series)]
    summary = summarize(rows, prompt_set)
    stats = summary["prompts"]["hi"]["metrics"]["ctr"]
    assert stats["n"] == 4 and stats["missing"] == 1 and stats["mean"] == pytest.approx(0.5625)
    holds, reverse = summary["comparisons"]
    assert (holds["seeds_ordered"], holds["seeds_paired"]) == (3, 4) and holds["separated"] and holds["holds"]
    assert reverse["seeds_ordered"] == 1 and not reverse["holds"] and reverse["welch_p"] > 0.5
    constant = compare([{**row, "metrics": {"ctr": 1.0 if row["prompt"] == "hi" else 0.0}} for row in rows],
                       prompt_set.comparisons[0])
    assert constant["welch_p"] == 0.0 and constant["holds"]


# --- medsyn evaluate with a tiny random model: plumbing only --------------------------------------------------

def test_evaluate_command_writes_results_tables_plots_and_resumes(tmp_path, capsys):
    model = build_tiny_model(tmp_path / "model")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        '{"name": "effusion_large_right", "report": "There is a large right pleural effusion.", "group": "effusion"}\n'
        '{"name": "effusion_none", "report": "There is no pleural effusion.", "group": "effusion"}\n'
        '{"compare": ["effusion_large_right", "effusion_none"], "metric": "effusion_right_ml", "expect": "greater"}\n')
    out = tmp_path / "eval"
    parser = argparse.ArgumentParser()
    add_evaluate_command(parser.add_subparsers())
    args = parser.parse_args(["evaluate", "--model", str(model), "--prompts", str(prompts), "--seeds", "2",
                              "--out", str(out), "--device", "cpu", "--batch-size", "2"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "effusion_large_right seed 1:" in printed and "RESULTS.md" in printed

    rows = [json.loads(line) for line in (out / RESULTS_NAME).read_text().splitlines()]
    assert sorted((row["prompt"], row["seed"]) for row in rows) == [
        ("effusion_large_right", 0), ("effusion_large_right", 1), ("effusion_none", 0), ("effusion_none", 1)]
    assert set(rows[0]["metrics"]) == set(METRICS) and rows[0]["grid"]["shape_zyx"] == [8, 16, 16]
    summary = json.loads((out / SUMMARY_NAME).read_text(), parse_constant=pytest.fail)  # strict JSON, no NaN
    assert summary["seeds"] == [0, 1] and summary["comparisons"][0]["seeds_paired"] == 2
    markdown = (out / MARKDOWN_NAME).read_text()
    for heading in ("## Findings", "## Volumes", "## Mask/image consistency", "## Comparisons"):
        assert heading in markdown
    assert markdown.count("| `effusion_none` |") == 3 and "| `effusion_large_right > effusion_none` |" in markdown
    for name in ("findings", "volumes", "consistency"):
        assert (out / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(path.name for path in (out / "previews").iterdir()) == [
        "effusion_large_right_seed0.png", "effusion_none_seed0.png"]

    # Same settings: nothing is generated again. Other settings: refused, the earlier results stay.
    before = (out / RESULTS_NAME).read_text()
    assert run_evaluation(prompts, out, [0, 1], model=str(model), device="cpu")["seeds"] == [0, 1]
    assert (out / RESULTS_NAME).read_text() == before
    with pytest.raises(MedSynError, match="other settings"):
        run_evaluation(prompts, out, [0, 1], model=str(model), device="cpu", steps=2)
