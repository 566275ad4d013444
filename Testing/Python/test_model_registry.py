"""Model resolution: bundled names, local folders, Hugging Face repos from a local cache (no network), card checks."""
from __future__ import annotations

import json
import shutil

import pytest

from medsyn.cli import main
from medsyn.errors import MedSynError
from medsyn.models.card import load_card
from medsyn.models.registry import list_models, resolve_model
from tiny_model import build_tiny_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-random-test")


def _hf_cache(tmp_path, tiny_model, repo="medsyn/tiny"):
    """The layout huggingface_hub writes: models--owner--name/{refs/<rev>, snapshots/<commit>/...}."""
    cache = tmp_path / "hub"
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(tiny_model, repo_dir / "snapshots" / COMMIT)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "v1").write_text(COMMIT)
    return cache


def test_hub_model_resolves_offline_from_cache(tmp_path, tiny_model, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(_hf_cache(tmp_path, tiny_model)))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = resolve_model(f"hf://medsyn/tiny@{COMMIT}")
    assert load_card(folder).name == "tiny-random-test"
    assert resolve_model("hf://medsyn/tiny@v1") == folder
    with pytest.raises(MedSynError, match="not in the local Hugging Face cache"):
        resolve_model("hf://medsyn/other@v1")
    with pytest.raises(MedSynError, match="pinned revision"):
        resolve_model("hf://medsyn/tiny")


def test_names_resolve_through_models_dir(tmp_path, tiny_model, monkeypatch, capsys):
    models = tmp_path / "models"
    shutil.copytree(tiny_model, models / "tiny-random-test")
    monkeypatch.setenv("MEDSYN_MODELS_DIR", str(models))
    assert resolve_model("tiny-random-test") == models / "tiny-random-test"
    assert "tiny-random-test" in {row["name"] for row in list_models()}
    with pytest.raises(MedSynError, match="unknown model 'nope'.*tiny-random-test"):
        resolve_model("nope")
    assert main(["models", "info", "tiny-random-test"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "tiny-random-test"


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(format_version=9), "format_version"),
    (lambda c: c.update(channels=["ct"]), "channels"),
    (lambda c: c["grid"].update(spacing_xyz=[1, 0, 1]), "spacing"),
    (lambda c: c["lowres"].update(sha256="abc"), "sha256"),
    (lambda c: c["grid"].update(lowres_ct="median"), "lowres_ct"),
    (lambda c: c["grid"].update(lowres_masks="any"), "lowres_masks"),
    (lambda c: c.pop("grid"), "not a valid model card"),
])
def test_card_validation_names_the_problem(tmp_path, tiny_model, edit, message):
    folder = tmp_path / "m"
    shutil.copytree(tiny_model, folder)
    card = json.loads((folder / "model_card.json").read_text())
    edit(card)
    (folder / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(MedSynError, match=message):
        load_card(folder)
