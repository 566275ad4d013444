"""Offline import of the official MedSyn weights from the authors' ``model/`` folder (the one run_inference.sh uses).

The authors distribute checkpoints by request, so users copy the folder by hand; this maps its fixed layout onto the
worker's ``import_official`` request. The folder doubles as the text encoder source: it holds ``pretrained_lm/`` and,
added by the user, CXR-BERT's ``config.json`` and ``vocab.txt`` (the backend says so if they are missing). The result
lands in the per-user model folder, where the model selector finds it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from medsyn.errors import MedSynError

LOWRES_FOLDER = "results_text_low_res_improved_unet_seg"
SR_FOLDER = "results_SR_gaussian_aug_full_volume_seg"
IMPORTED_NAME = "medsyn-official"
USER_MODELS_DIR = Path.home() / ".medsyn" / "models"  # searched by medsyn.models.registry


def official_import_params(folder: Path, models_dir: Path = USER_MODELS_DIR) -> dict[str, Any]:
    """Parameters of an ``import_official`` worker request for the authors' folder (or its parent)."""
    folder = Path(folder)
    if not (folder / LOWRES_FOLDER).is_dir() and (folder / "model" / LOWRES_FOLDER).is_dir():
        folder = folder / "model"
    if not (folder / LOWRES_FOLDER).is_dir():
        raise MedSynError(f"{folder} is not the official MedSyn model folder (no {LOWRES_FOLDER}/); select the "
                          f"folder that holds {LOWRES_FOLDER}/, {SR_FOLDER}/ and pretrained_lm/")
    sr = folder / SR_FOLDER
    return {"lowres": str(folder / LOWRES_FOLDER), "sr": str(sr) if sr.is_dir() else None, "text_encoder": str(folder),
            "out": str(Path(models_dir) / IMPORTED_NAME), "name": IMPORTED_NAME}
