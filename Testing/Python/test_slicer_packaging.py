"""Extension packaging: CMake lists every shipped file, the metadata in CMake / .s4ext / Extensions Index json agree
and are valid, the icon, licence, requirements and sample data are what Slicer and its catalog expect."""
from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from packaging.requirements import Requirement
from PIL import Image

from MedSynSlicerLib.dependencies import (PROTECTED_PACKAGES, missing_requirements, protected_constraints,
                                          read_requirements)

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "MedSynSlicer"
SHIPPED_RESOURCE_DIRS = ("Icons", "UI", "SampleData", "Models")
CATALOG_KEYS = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
                "dicom_support_rule", "build_subdirectory", "enabled", "tier"}  # catalog-entry schema v1.0.2


def cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"{variable} is not set"
    return match.group(1).split()


def cmake_variables(text: str) -> dict[str, str]:
    return dict(re.findall(r'set\((EXTENSION_\w+)\s+"([^"]*)"\)', text))


def s4ext_fields() -> dict[str, str]:
    fields = {}
    for line in (REPO / "MedSynSlicer.s4ext").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            fields[key] = value.strip()
    return fields


def catalog_entry() -> dict:
    return json.loads((REPO / "Resources" / "ExtensionsIndex" / "MedSynSlicer.json").read_text(encoding="utf-8"))


def test_cmake_lists_every_shipped_python_file():
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    listed = {entry.replace("${MODULE_NAME}", "MedSynSlicer") for entry in cmake_list(text, "MODULE_PYTHON_SCRIPTS")}
    on_disk = {"MedSynSlicer.py"} | {str(p.relative_to(MODULE)) for package in ("MedSynSlicerLib", "medsyn")
                                     for p in (MODULE / package).rglob("*.py") if "__pycache__" not in p.parts}
    assert sorted(on_disk - listed) == [], "add these to MODULE_PYTHON_SCRIPTS in MedSynSlicer/CMakeLists.txt"
    assert sorted(listed - on_disk) == [], "remove these from MODULE_PYTHON_SCRIPTS (no such file)"


def test_cmake_lists_every_shipped_resource():
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    listed = {entry.replace("${MODULE_NAME}", "MedSynSlicer") for entry in cmake_list(text, "MODULE_PYTHON_RESOURCES")}
    resources = MODULE / "Resources"
    on_disk = {"Resources/requirements.txt"} | {
        str(p.relative_to(MODULE)) for folder in SHIPPED_RESOURCE_DIRS if (resources / folder).is_dir()
        for p in (resources / folder).rglob("*") if p.is_file()}
    assert sorted(on_disk - listed) == [], "add these to MODULE_PYTHON_RESOURCES in MedSynSlicer/CMakeLists.txt"
    assert sorted(listed - on_disk) == [], "remove these from MODULE_PYTHON_RESOURCES (no such file)"


def test_bundled_models_live_where_the_extension_ships_them():
    """Slicer installs only what sits under the module folder; the registry finds MedSynSlicer/Resources/Models in a
    source checkout and in an installed extension alike."""
    stray = sorted(str(card.parent.relative_to(REPO)) for card in (REPO / "Resources").rglob("model_card.json"))
    assert stray == [], "move these model folders to MedSynSlicer/Resources/Models and list their files in CMake"


def test_module_cmake_builds_the_scripted_module_and_registers_the_self_test():
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"slicerMacroBuildScriptedModule\(\s*NAME \$\{MODULE_NAME\}\s*SCRIPTS \$\{MODULE_PYTHON_SCRIPTS\}"
                     r"\s*RESOURCES \$\{MODULE_PYTHON_RESOURCES\}", text)
    assert re.search(r"if\(BUILD_TESTING\)\s*(#[^\n]*\n\s*)*slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)",
                     text)
    assert "set(MODULE_NAME MedSynSlicer)" in text


def test_extension_metadata_is_complete_and_points_at_files_in_this_repository():
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    variables = cmake_variables(text)
    assert re.search(r"project\(MedSynSlicer\)", text) and "add_subdirectory(MedSynSlicer)" in text
    assert variables["EXTENSION_CATEGORY"] == "Image Synthesis"
    assert variables["EXTENSION_DEPENDS"] == "PyTorch"
    assert variables["EXTENSION_CONTRIBUTORS"] and len(variables["EXTENSION_DESCRIPTION"]) > 50
    homepage = variables["EXTENSION_HOMEPAGE"]
    assert re.fullmatch(r"https://github\.com/[\w.-]+/Slicer[\w.-]+", homepage)  # the index wants a Slicer* repo
    raw = homepage.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    for url in (variables["EXTENSION_ICONURL"], *variables["EXTENSION_SCREENSHOTURLS"].split()):
        assert url.startswith(raw) and url.endswith(".png")
        assert (REPO / url[len(raw):]).is_file(), url


def test_s4ext_mirrors_the_cmake_metadata():
    variables = cmake_variables((REPO / "CMakeLists.txt").read_text(encoding="utf-8"))
    fields = s4ext_fields()
    assert fields["scm"] == "git" and fields["scmurl"] == variables["EXTENSION_HOMEPAGE"] + ".git"
    pairs = {"homepage": "EXTENSION_HOMEPAGE", "category": "EXTENSION_CATEGORY", "iconurl": "EXTENSION_ICONURL",
             "description": "EXTENSION_DESCRIPTION", "contributors": "EXTENSION_CONTRIBUTORS",
             "screenshoturls": "EXTENSION_SCREENSHOTURLS", "depends": "EXTENSION_DEPENDS"}
    for key, variable in pairs.items():
        assert fields[key] == variables[variable], key
    assert fields["enabled"] in ("0", "1") and fields["build_subdirectory"] == "."


def test_extensions_index_entry_follows_the_catalog_schema():
    entry = catalog_entry()
    assert {"$schema", "category", "scm_url"} <= set(entry) <= CATALOG_KEYS
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.2.json#")
    assert entry["category"] == "Image Synthesis" and entry["build_dependencies"] == ["PyTorch"]
    assert entry["scm_url"] == s4ext_fields()["scmurl"] and isinstance(entry["scm_revision"], str)
    assert isinstance(entry["enabled"], bool) and entry["tier"] in range(1, 6)
    assert (REPO / "Resources" / "ExtensionsIndex" / "MedSynSlicer.json").stem == "MedSynSlicer"  # == project()


def test_license_icon_and_screenshot():
    assert "Apache License" in (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Version 2.0" in (REPO / "LICENSE").read_text(encoding="utf-8")
    with Image.open(MODULE / "Resources" / "Icons" / "MedSynSlicer.png") as icon:
        assert icon.format == "PNG" and icon.size == (128, 128)
    with Image.open(MODULE / "Resources" / "Screenshots" / "panel.png") as screenshot:
        assert screenshot.format == "PNG" and screenshot.size[1] > screenshot.size[0]


def test_requirements_are_the_backend_dependencies_minus_what_slicer_and_pytorch_provide():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    backend = {Requirement(line).name.lower(): str(Requirement(line).specifier)
               for line in pyproject["project"]["dependencies"]}
    listed = {r.name.lower(): str(r.specifier) for r in read_requirements(MODULE / "Resources" / "requirements.txt")}
    protected = {name.lower() for name in PROTECTED_PACKAGES}
    assert listed == {name: spec for name, spec in backend.items() if name not in protected}


def test_missing_requirements_are_found_from_package_metadata():
    wanted = [Requirement("numpy>=1.0"), Requirement("numpy>=999"), Requirement("surely-not-an-installed-package"),
              Requirement("numpy>=999; sys_platform == 'no-such-platform'")]
    assert [str(r) for r in missing_requirements(wanted)] == ["numpy>=999", "surely-not-an-installed-package"]


def test_installing_never_replaces_what_slicer_runs_on():
    pins = protected_constraints().splitlines()
    assert f"numpy=={np.__version__}" in pins and f"SimpleITK=={sitk.Version.VersionString()}" in pins
    assert all(Requirement(pin).specifier for pin in pins)


def test_the_demo_phantom_sample_is_a_64_cubed_int16_volume():
    path = MODULE / "Resources" / "SampleData" / "MedSynDemoPhantom.nrrd"
    if not path.is_file():
        pytest.skip("the demo phantom sample has not been generated yet")
    image = sitk.ReadImage(str(path))
    assert image.GetSize() == (64, 64, 64) and image.GetPixelID() == sitk.sitkInt16
    values = sitk.GetArrayFromImage(image)
    assert values.min() <= -900 and values.max() >= 0 and np.unique(values).size > 50  # air, tissue, structure
