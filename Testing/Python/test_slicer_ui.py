"""The panel's .ui file: it loads (PySide6 QUiLoader, offscreen, Slicer widgets swapped for Qt stand-ins), it has the
panels the issue lists, every widget the module code touches exists, and every parameter binding is well-typed."""
from __future__ import annotations

import ast
import os
import re
import xml.etree.ElementTree as ET

import pytest

from MedSynSlicerLib.resources import resource_path
from slicer_ui_mockup import REPO, STAND_INS, UI_FILE, load_ui, render_mockup

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
QtWidgets = pytest.importorskip("PySide6.QtWidgets")

MODULE_FILE = REPO / "MedSynSlicer" / "MedSynSlicer.py"
# Slicer's parameterNodeWrapper connectors: widget class -> the parameter type it can represent.
CONNECTOR_TYPES = {"QTextEdit": "str", "QLineEdit": "str", "QSpinBox": "int", "QDoubleSpinBox": "float",
                   "QCheckBox": "bool", "qMRMLNodeComboBox": "node"}


@pytest.fixture(scope="module")
def panel():
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    widget = load_ui()
    yield widget
    widget.deleteLater()
    app.processEvents()


def ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI_FILE).getroot().iter("widget")}


def parameter_fields() -> dict[str, str]:
    """Field name -> annotation source of MedSynSlicerParameterNode, read from the module's source."""
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MedSynSlicerParameterNode")
    return {s.target.id: ast.unparse(s.annotation) for s in node.body if isinstance(s, ast.AnnAssign)}


def test_this_is_the_ui_file_the_module_loads():
    assert resource_path("UI/MedSynSlicer.ui") == UI_FILE
    assert 'loadUI(str(resource_path("UI/MedSynSlicer.ui")))' in MODULE_FILE.read_text(encoding="utf-8")


def test_the_ui_loads_and_every_widget_class_is_qt_or_has_a_stand_in(panel):
    classes = {w.get("class") for w in ui_widgets().values()}
    assert all(c in STAND_INS or hasattr(QtWidgets, c) for c in classes), classes
    assert panel.objectName() == "MedSynSlicer"


def test_the_issue_panels_exist_as_collapsible_sections(panel):
    widgets = ui_widgets()
    sections = {w.find("property[@name='text']/string").text for w in widgets.values()
                if w.get("class") == "ctkCollapsibleButton"}
    assert sections == {"Model", "Report", "Anatomy", "Edit", "Output"}
    assert widgets["segmentEditorWidget"].get("class") == "qMRMLSegmentEditorWidget"
    assert widgets["reportTextEdit"].get("class") == "QTextEdit"
    for name in ("applyButton", "progressBar", "statusLabel", "modeSelector", "deviceSelector", "licenseLabel"):
        assert panel.findChild(QtWidgets.QWidget, name) is not None, name


def test_every_widget_the_module_references_exists(panel):
    referenced = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text(encoding="utf-8")))
    assert len(referenced) > 20
    missing = sorted(name for name in referenced if panel.findChild(QtWidgets.QWidget, name) is None)
    assert missing == []


def test_every_bound_widget_matches_a_parameter_of_the_right_type(panel):
    fields = parameter_fields()
    bound = {}
    for name, widget in ui_widgets().items():
        parameter = widget.find("property[@name='SlicerParameterName']/string")
        if parameter is not None:
            bound[name] = parameter.text
            expected = CONNECTOR_TYPES[widget.get("class")]
            annotation = fields[parameter.text]
            matches = annotation.startswith("vtkMRML") if expected == "node" else expected in annotation
            assert matches, (name, annotation)
            loaded = panel.findChild(QtWidgets.QWidget, name)
            assert loaded.property("SlicerParameterName") == parameter.text  # survives loading as a dynamic property
    assert bound["reportTextEdit"] == "report"
    assert len(set(bound.values())) == len(bound)  # one widget per parameter


def test_the_mockup_renders(tmp_path):
    QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    from PySide6.QtGui import QImage

    image = QImage(str(render_mockup(tmp_path / "panel.png")))
    assert image.width() >= 400 and image.height() >= 800
