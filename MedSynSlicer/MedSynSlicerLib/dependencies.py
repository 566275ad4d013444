"""Backend requirements: checked cheaply, installed on the first Apply after the user agrees, never at import.

torch comes from the PyTorch extension (PyTorchUtils picks the CUDA build for the driver); the rest is listed in
``Resources/requirements.txt``. Packages Slicer itself is built on (numpy, SimpleITK, vtk) and torch are pinned to
their installed versions through a pip constraints file, so installing monai or transformers can never replace them
(a replaced SimpleITK or numpy breaks Slicer until it is reinstalled).
"""
from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Callable, Optional

from packaging.requirements import Requirement

from medsyn.errors import MedSynError

PROTECTED_PACKAGES = ("numpy", "SimpleITK", "vtk", "torch")
TORCH_REQUIREMENT = ">=2.1"


def read_requirements(path: Path) -> list[Requirement]:
    """Requirements of a requirements.txt (comments and pip options skipped)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [Requirement(line.strip()) for line in lines if line.strip() and not line.strip().startswith(("#", "-"))]


def installed_version(name: str) -> Optional[str]:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_requirements(requirements: list[Requirement]) -> list[Requirement]:
    """Requirements that are absent or at a wrong version (markers for other platforms count as satisfied)."""
    missing = []
    for requirement in requirements:
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        version = installed_version(requirement.name)
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            missing.append(requirement)
    return missing


def protected_constraints() -> str:
    """pip constraints pinning every installed protected package to the version Slicer runs with."""
    pins = [f"{name}=={version}" for name in PROTECTED_PACKAGES if (version := installed_version(name))]
    return "".join(line + "\n" for line in pins)


def torch_missing() -> bool:
    """Checked from package metadata so that Slicer's own process never has to import torch."""
    version = installed_version("torch")
    return version is None or not Requirement("torch" + TORCH_REQUIREMENT).specifier.contains(version, prereleases=True)


def ensure_backend_dependencies(requirements_path: Path, work_dir: Path,
                                confirm: Callable[[str, str], bool]) -> bool:
    """Install what the worker needs inside Slicer; returns True when something was installed.

    ``confirm(message, details)`` asks the user (used where Slicer's own pip_ensure dialog is not available).
    """
    installed = _ensure_torch()
    missing = missing_requirements(read_requirements(requirements_path))
    if not missing:
        return installed
    constraints = Path(work_dir) / "medsyn-constraints.txt"
    constraints.parent.mkdir(parents=True, exist_ok=True)
    constraints.write_text(protected_constraints(), encoding="utf-8")
    _pip_install(missing, constraints, confirm)
    return True


def _ensure_torch() -> bool:
    if not torch_missing():
        return False
    try:
        import PyTorchUtils
    except ImportError:
        raise MedSynError("MedSyn needs the PyTorch extension: install 'PyTorch' from the Extensions Manager, "
                              "restart Slicer and press Apply again") from None
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True,
                                                          torchVersionRequirement=TORCH_REQUIREMENT)
    if torch is None:
        raise MedSynError("PyTorch was not installed; MedSyn cannot run without it")
    return True


def _pip_install(missing: list[Requirement], constraints: Path, confirm: Callable[[str, str], bool]) -> None:
    """Slicer >= 5.12: slicer.packaging.pip_ensure (its own dialogs, restart prompt); older: slicer.util.pip_install."""
    import slicer

    packaging = getattr(slicer, "packaging", None)
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        try:
            packaging.pip_ensure([str(r) for r in missing], constraints=constraints, requester="MedSyn")
        except RuntimeError as exc:  # raised when the user declines
            raise MedSynError(f"the MedSyn backend packages were not installed ({exc})") from None
        return
    details = "\n".join(f"- {r}" for r in missing)
    if not confirm(f"MedSyn needs {len(missing)} Python package(s) in Slicer's Python environment. Install now?",
                   details):
        raise MedSynError("the MedSyn backend packages were not installed; press Apply again to install them")
    slicer.util.pip_install(["-c", str(constraints), *[str(r) for r in missing]])
