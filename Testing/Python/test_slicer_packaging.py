"""Extension packaging: CMake lists every shipped file and puts the top-level Resources where Slicer reads them (build
and install tree), the module finds its resources in a source checkout and an installed extension, the metadata in
CMake / .s4ext / Extensions Index json agree and are valid, the icon, licence, requirements and sample data are what
Slicer and its catalog expect."""
from __future__ import annotations

import filecmp
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from packaging.requirements import Requirement
from PIL import Image

from medsyn.models.card import CARD_FILE
from medsyn.models.registry import DEFAULT_MODEL, resolve_model
from MedSynSlicerLib.dependencies import (PROTECTED_PACKAGES, missing_requirements, protected_constraints,
                                          read_requirements)
from MedSynSlicerLib.resources import resource_path

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "MedSynSlicer"
RESOURCES = REPO / "Resources"
DEMO_MODEL = RESOURCES / "Models" / DEFAULT_MODEL
SHIPPED_RESOURCE_DIRS = ("Icons", "UI", "SampleData", "Models")  # plus requirements.txt; Screenshots are catalog-only
SLICER_MODULES_DIR = "lib/Slicer-5.12/qt-scripted-modules"  # Slicer_(INSTALL_)QTSCRIPTEDMODULES_LIB_DIR on Linux
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
    return json.loads((RESOURCES / "ExtensionsIndex" / "MedSynSlicer.json").read_text(encoding="utf-8"))


def listed_resources() -> list[str]:
    """MODULE_PYTHON_RESOURCES of MedSynSlicer/CMakeLists.txt, relative to the top-level Resources folder."""
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    return [entry.replace("${MODULE_NAME}", "MedSynSlicer") for entry in cmake_list(text, "MODULE_PYTHON_RESOURCES")]


def shipped_resources_on_disk() -> set[str]:
    """Files under the shipped resource folders; hidden ones (e.g. a model export's partial folder) never ship."""
    return {"requirements.txt"} | {
        p.relative_to(RESOURCES).as_posix() for folder in SHIPPED_RESOURCE_DIRS if (RESOURCES / folder).is_dir()
        for p in (RESOURCES / folder).rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(RESOURCES).parts)}


def in_unfinished_model(resource: str) -> bool:
    """A file of a bundled model folder that has no model card yet (the model is still being trained or exported)."""
    parts = Path(resource).parts
    return len(parts) > 2 and parts[0] == "Models" and not (RESOURCES / "Models" / parts[1] / CARD_FILE).is_file()


def skip_while_a_listed_resource_is_pending() -> None:
    missing = sorted(set(listed_resources()) - shipped_resources_on_disk())
    if missing and all(in_unfinished_model(resource) for resource in missing):
        pytest.skip(f"listed model files not there yet (model still being made): {', '.join(missing)}")


def test_cmake_lists_every_shipped_python_file():
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    listed = {entry.replace("${MODULE_NAME}", "MedSynSlicer") for entry in cmake_list(text, "MODULE_PYTHON_SCRIPTS")}
    on_disk = {"MedSynSlicer.py"} | {str(p.relative_to(MODULE)) for package in ("MedSynSlicerLib", "medsyn")
                                     for p in (MODULE / package).rglob("*.py") if "__pycache__" not in p.parts}
    unlisted = sorted(on_disk - listed)
    assert unlisted == [], "add these lines to MODULE_PYTHON_SCRIPTS in MedSynSlicer/CMakeLists.txt:\n" + "\n".join(
        f"  {script}" for script in unlisted)
    assert sorted(listed - on_disk) == [], "remove these from MODULE_PYTHON_SCRIPTS (no such file)"


def test_cmake_lists_every_shipped_resource():
    listed = listed_resources()
    unlisted = sorted(shipped_resources_on_disk() - set(listed))
    assert unlisted == [], "add these lines to MODULE_PYTHON_RESOURCES in MedSynSlicer/CMakeLists.txt:\n" + "\n".join(
        f"  {resource}" for resource in unlisted)
    assert len(listed) == len(set(listed)), "MODULE_PYTHON_RESOURCES lists a file twice"


def test_every_listed_resource_exists():
    missing = sorted(set(listed_resources()) - shipped_resources_on_disk())
    assert [r for r in missing if not in_unfinished_model(r)] == [], "remove these from MODULE_PYTHON_RESOURCES"
    skip_while_a_listed_resource_is_pending()


def test_the_registry_finds_the_demo_model_in_the_top_level_resources(monkeypatch):
    if not (DEMO_MODEL / CARD_FILE).is_file():
        pytest.skip("the demo model has not been exported to Resources/Models yet")
    monkeypatch.delenv("MEDSYN_MODELS_DIR", raising=False)
    assert resolve_model(DEFAULT_MODEL) == DEMO_MODEL


def test_the_module_finds_its_resources_in_a_source_checkout():
    present = [resource for resource in listed_resources() if (RESOURCES / resource).is_file()]
    assert "UI/MedSynSlicer.ui" in present and "requirements.txt" in present
    assert [resource_path(resource) for resource in present] == [RESOURCES / resource for resource in present]
    with pytest.raises(FileNotFoundError, match="reinstall the MedSyn extension"):
        resource_path("UI/NoSuchPanel.ui")


def test_the_module_reads_resources_only_through_resource_path():
    """Slicer's own ``resourcePath`` and ``<module dir>/Resources`` miss the top-level folder of a source checkout."""
    sources = [MODULE / "MedSynSlicer.py", *(MODULE / "MedSynSlicerLib").glob("*.py")]
    offenders = [path.name for path in sources if path.name != "resources.py"
                 and re.search(r"resourcePath\(|[\"']Resources[\"']", path.read_text(encoding="utf-8"))]
    assert offenders == []


def cmake_install(tmp_path: Path) -> tuple[Path, Path]:
    """Configure MedSynSlicer/CMakeLists.txt with stand-ins for Slicer's variables and macro, install it; return the
    module folders of the build tree and the install tree."""
    source = tmp_path / "extension"
    source.mkdir()
    (source / "CMakeLists.txt").write_text(textwrap.dedent(f"""
        cmake_minimum_required(VERSION 3.16.3)
        project(MedSynSlicerPackagingCheck NONE)
        set(Slicer_QTSCRIPTEDMODULES_LIB_DIR {SLICER_MODULES_DIR})
        set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR {SLICER_MODULES_DIR})
        # Stand-in for Slicer's macro: installs the scripts where Slicer does (resources are the module's own job).
        function(slicerMacroBuildScriptedModule)
          cmake_parse_arguments(MODULE "WITH_GENERIC_TESTS" "NAME" "SCRIPTS" ${{ARGN}})
          foreach(script ${{MODULE_SCRIPTS}})
            get_filename_component(script_subdir ${{script}} DIRECTORY)
            install(FILES ${{script}} DESTINATION ${{Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}}/${{script_subdir}})
          endforeach()
        endfunction()
        add_subdirectory("{MODULE.as_posix()}" module)
        """), encoding="utf-8")
    build, install = tmp_path / "build", tmp_path / "install"
    for command in (["cmake", "-S", source, "-B", build, f"-DCMAKE_INSTALL_PREFIX={install}"],
                    ["cmake", "--install", build]):
        completed = subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=120)
        assert completed.returncode == 0, completed.stdout + completed.stderr
    return (build / SLICER_MODULES_DIR).resolve(), (install / SLICER_MODULES_DIR).resolve()


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_cmake_puts_the_resources_under_the_module_in_the_build_and_install_trees(tmp_path):
    skip_while_a_listed_resource_is_pending()
    built, installed = cmake_install(tmp_path)
    for resource in listed_resources():
        for tree in (built, installed):
            assert filecmp.cmp(RESOURCES / resource, tree / "Resources" / resource, shallow=False), (tree, resource)
    assert (installed / "MedSynSlicer.py").is_file() and (installed / "medsyn" / "models" / "registry.py").is_file()
    probe = textwrap.dedent("""
        import sys
        sys.path.insert(0, sys.argv[1])
        from MedSynSlicerLib.resources import resource_path
        from medsyn.models.registry import resolve_model
        print(resource_path("UI/MedSynSlicer.ui"))
        print(resolve_model("medsyn-demo-phantom"))
        """)
    environment = {key: value for key, value in os.environ.items() if key != "MEDSYN_MODELS_DIR"}
    completed = subprocess.run([sys.executable, "-c", probe, str(installed)], capture_output=True, text=True,
                               timeout=120, env=environment, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == [str(installed / "Resources" / "UI" / "MedSynSlicer.ui"),
                                        str(installed / "Resources" / "Models" / DEFAULT_MODEL)]


def test_module_cmake_builds_the_scripted_module_and_registers_the_self_test():
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"slicerMacroBuildScriptedModule\(\s*NAME \$\{MODULE_NAME\}\s*SCRIPTS \$\{MODULE_PYTHON_SCRIPTS\}",
                     text)
    assert "set(MODULE_RESOURCES_SOURCE_DIR ${CMAKE_CURRENT_SOURCE_DIR}/../Resources)" in text
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
    assert (RESOURCES / "ExtensionsIndex" / "MedSynSlicer.json").stem == "MedSynSlicer"  # == project()


def test_license_icon_and_screenshot():
    assert "Apache License" in (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Version 2.0" in (REPO / "LICENSE").read_text(encoding="utf-8")
    with Image.open(RESOURCES / "Icons" / "MedSynSlicer.png") as icon:
        assert icon.format == "PNG" and icon.size == (128, 128)
    with Image.open(RESOURCES / "Screenshots" / "panel.png") as screenshot:
        assert screenshot.format == "PNG" and screenshot.size[1] > screenshot.size[0]


def test_requirements_are_the_backend_dependencies_minus_what_slicer_and_pytorch_provide():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    backend = {Requirement(line).name.lower(): str(Requirement(line).specifier)
               for line in pyproject["project"]["dependencies"]}
    listed = {r.name.lower(): str(r.specifier) for r in read_requirements(RESOURCES / "requirements.txt")}
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
    path = RESOURCES / "SampleData" / "MedSynDemoPhantom.nrrd"
    if not path.is_file():
        pytest.skip("the demo phantom sample has not been generated yet")
    image = sitk.ReadImage(str(path))
    assert image.GetSize() == (64, 64, 64) and image.GetPixelID() == sitk.sitkInt16
    values = sitk.GetArrayFromImage(image)
    assert values.min() <= -900 and values.max() >= 0 and np.unique(values).size > 50  # air, tissue, structure
