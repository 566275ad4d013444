"""Slicer must be able to load MedSynSlicer.py before the backend packages are installed: importing it with torch,
transformers, monai and pynrrd blocked (and slicer / qt / ctk / vtk replaced by permissive stubs) must work, and so must
the model selector and the segment-name matching of the anatomy table."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[2] / "MedSynSlicer"

IMPORT_WITH_BLOCKED_BACKEND = textwrap.dedent("""
    import importlib.abc, importlib.util, sys, types

    BLOCKED = ("torch", "transformers", "monai", "nrrd")
    STUBBED = ("slicer", "qt", "ctk", "vtk")

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is not installed (blocked by the test)")
            return None

    class Permissive:
        # Stands in for any Slicer/Qt class, decorator or value: callable, subclassable, with any attribute.
        def __init__(self, *args, **kwargs): pass
        def __call__(self, *args, **kwargs): return Permissive()
        def __getattr__(self, name): return Permissive()

    class StubModule(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            value = type(name, (Permissive,), {})
            setattr(self, name, value)
            return value

    class Stubs(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in STUBBED:
                return importlib.util.spec_from_loader(name, self, is_package=True)
            return None
        def create_module(self, spec):
            return StubModule(spec.name)
        def exec_module(self, module):
            module.__path__ = []

    sys.meta_path[:0] = [Blocker(), Stubs()]
    sys.path.insert(0, sys.argv[1])
    import MedSynSlicer

    for name in ("MedSynSlicer", "MedSynSlicerWidget", "MedSynSlicerLogic", "MedSynSlicerTest"):
        assert isinstance(getattr(MedSynSlicer, name), type), name
    assert callable(MedSynSlicer.registerSampleData)
    models = MedSynSlicer.MedSynSlicerLogic.availableModels(None)  # the model selector works before installing
    assert isinstance(models, list)
    from MedSynSlicerLib.segment_mapping import structure_for
    assert structure_for("Lung_Upper_Lobe_Left") == "left upper lobe" and structure_for("Segment_1") is None
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not loaded, loaded
    print("imported without", ", ".join(BLOCKED))
""")


def test_module_imports_without_torch_transformers_or_monai():
    completed = subprocess.run([sys.executable, "-c", IMPORT_WITH_BLOCKED_BACKEND, str(MODULE_DIR)],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert "imported without torch, transformers, monai, nrrd" in completed.stdout


def test_the_blocker_really_blocks():
    """Guard against a test that passes vacuously: the same harness must fail for a module importing torch."""
    script = IMPORT_WITH_BLOCKED_BACKEND.replace("import MedSynSlicer\n", "import MedSynSlicer\nimport torch\n", 1)
    completed = subprocess.run([sys.executable, "-c", script, str(MODULE_DIR)], capture_output=True, text=True,
                               timeout=120)
    assert completed.returncode != 0 and "blocked by the test" in completed.stderr
