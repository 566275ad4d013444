"""Where the module's resources (UI, icon, sample data, requirements.txt) are, in both layouts the module runs from.

An installed (or built) extension has them next to the module (``<module dir>/Resources``, where CMake copies them);
a source checkout added through "Additional module paths" = ``<repo>/MedSynSlicer`` has them in the repository's
top-level ``Resources``. ``medsyn.models.registry.model_search_dirs`` looks for bundled models in the same two places.
"""
from __future__ import annotations

from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[1]  # <module dir>/MedSynSlicerLib/resources.py
RESOURCE_DIRS = (
    MODULE_DIR / "Resources",  # installed or built extension
    MODULE_DIR.parent / "Resources",  # source checkout: <repo>/MedSynSlicer/MedSynSlicerLib/resources.py
)


def resource_path(relative: str) -> Path:
    """The shipped file ``Resources/<relative>`` (e.g. ``"UI/MedSynSlicer.ui"``) in whichever layout holds it."""
    for folder in RESOURCE_DIRS:
        if (folder / relative).is_file():
            return folder / relative
    searched = " or ".join(str(folder) for folder in RESOURCE_DIRS)
    raise FileNotFoundError(f"MedSyn resource {relative} is in neither {searched}; reinstall the MedSyn extension")
