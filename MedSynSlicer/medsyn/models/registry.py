"""Find a model folder from what the user typed: a bundled name, a local folder, or a Hugging Face repo.

Search order for a bare name: ``$MEDSYN_MODELS_DIR``, the bundled ``Resources/Models`` (source tree or installed Slicer
extension), then ``~/.medsyn/models``. ``hf://owner/repo[@revision]`` resolves through huggingface_hub's local cache;
it only touches the network when the caller explicitly allows it (``allow_download=True``), never implicitly.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from ..errors import MedSynError
from .card import CARD_FILE, ModelCard, load_card

DEFAULT_MODEL = "medsyn-demo-phantom"
HF_PREFIX = "hf://"


def model_search_dirs() -> list[Path]:
    """Folders that hold model folders, most specific first."""
    here = Path(__file__).resolve()
    candidates = []
    if os.environ.get("MEDSYN_MODELS_DIR"):
        candidates.append(Path(os.environ["MEDSYN_MODELS_DIR"]))
    candidates += [
        here.parents[3] / "Resources" / "Models",  # source checkout: <repo>/MedSynSlicer/medsyn/models/registry.py
        here.parents[2] / "Resources" / "Models",  # installed Slicer module: <module>/medsyn/models/registry.py
        Path.home() / ".medsyn" / "models",
    ]
    return [c for c in candidates if c.is_dir()]


def resolve_model(name_or_path: Optional[str] = None, allow_download: bool = False) -> Path:
    """Return the folder of the model the user asked for (default: the bundled demo)."""
    spec = (name_or_path or DEFAULT_MODEL).strip()
    if spec.startswith(HF_PREFIX):
        return _resolve_hub(spec[len(HF_PREFIX):], allow_download)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / CARD_FILE).is_file():
            raise MedSynError(f"{path} has no {CARD_FILE}; import weights with 'medsyn import-official' first")
        return path
    for folder in model_search_dirs():
        if (folder / spec / CARD_FILE).is_file():
            return folder / spec
    known = ", ".join(sorted(name for name, _ in list_model_folders())) or "none"
    raise MedSynError(f"unknown model '{spec}'; available: {known} (or give a model folder path or hf://owner/repo@rev)")


def list_model_folders() -> list[tuple[str, Path]]:
    """(name, folder) of every model folder in the search path; the first folder wins on duplicate names."""
    seen: dict[str, Path] = {}
    for folder in model_search_dirs():
        for child in sorted(folder.iterdir()):
            if (child / CARD_FILE).is_file() and child.name not in seen:
                seen[child.name] = child
    return list(seen.items())


def list_models() -> list[dict]:
    """Summaries for ``medsyn models`` and the Slicer model selector; unreadable cards are listed with their error."""
    rows = []
    for name, folder in list_model_folders():
        try:
            card: ModelCard = load_card(folder)
            rows.append({"name": name, "license": card.license, "description": card.description, "path": str(folder)})
        except MedSynError as exc:
            rows.append({"name": name, "license": "?", "description": f"invalid: {exc}", "path": str(folder)})
    return rows


def _resolve_hub(spec: str, allow_download: bool) -> Path:
    """``owner/repo@revision`` → snapshot folder from the local HF cache (download only when explicitly allowed)."""
    repo_id, _, revision = spec.partition("@")
    if repo_id.count("/") != 1:
        raise MedSynError(f"hf://{spec} is not a repository id; use hf://owner/repo@revision")
    if not revision:
        raise MedSynError(f"hf://{spec} has no pinned revision; use hf://{repo_id}@<commit or tag>")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, revision=revision, local_files_only=not allow_download))
    except LocalEntryNotFoundError as exc:
        raise MedSynError(f"hf://{spec} is not in the local Hugging Face cache; download it once with "
                          f"'medsyn models download hf://{spec}' on a machine with access") from exc
    except Exception as exc:  # hub client errors (gated repo, bad revision, network) become one line
        raise MedSynError(f"could not fetch hf://{spec}: {exc.__class__.__name__}: {str(exc).splitlines()[0]}") from exc
    if not (folder / CARD_FILE).is_file():
        raise MedSynError(f"hf://{spec} has no {CARD_FILE}; it is not a MedSyn model repository")
    return folder
