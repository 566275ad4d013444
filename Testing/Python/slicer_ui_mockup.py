"""Load MedSynSlicer.ui without Slicer: CTK/MRML widget classes are swapped for plain Qt stand-ins (PySide6).

Used by the UI test (the file loads, every widget the module references exists) and to render the panel mock-up
shipped as ``Resources/Screenshots/panel.png``::

    QT_QPA_PLATFORM=offscreen python Testing/Python/slicer_ui_mockup.py
"""
from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UI_FILE = REPO / "Resources" / "UI" / "MedSynSlicer.ui"
MOCKUP_FILE = REPO / "Resources" / "Screenshots" / "panel.png"

# Slicer-only class -> Qt class that looks alike; properties of the Slicer class are dropped (they do not exist).
STAND_INS = {
    "qMRMLWidget": "QWidget",
    "ctkCollapsibleButton": "QGroupBox",
    "ctkPathLineEdit": "QLineEdit",
    "qMRMLNodeComboBox": "QComboBox",
    "qMRMLSegmentSelectorWidget": "QComboBox",
    "qMRMLSegmentEditorWidget": "QFrame",
}
KEPT_PROPERTIES = {"toolTip", "minimumSize", "maximumSize"}


def qt_only_ui(ui_file: Path = UI_FILE) -> bytes:
    """The .ui XML with Slicer classes replaced, Slicer properties and scene connections removed."""
    root = ET.parse(ui_file).getroot()
    for widget in root.iter("widget"):
        slicer_class = widget.get("class")
        if slicer_class not in STAND_INS:
            continue
        widget.set("class", STAND_INS[slicer_class])
        for prop in list(widget.findall("property")):
            name = prop.get("name")
            if slicer_class == "ctkCollapsibleButton" and name == "text":
                prop.set("name", "title")
            elif name not in KEPT_PROPERTIES and prop.get("stdset") != "0":
                widget.remove(prop)
    for section in ("customwidgets", "connections"):
        for element in root.findall(section):
            root.remove(element)
    return ET.tostring(root, encoding="utf-8")


def load_ui(ui_file: Path = UI_FILE):
    """A QWidget built from the .ui (needs a QApplication)."""
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice
    from PySide6.QtUiTools import QUiLoader

    data = QByteArray(qt_only_ui(ui_file))  # must outlive the buffer reading it
    buffer = QBuffer(data)
    buffer.open(QIODevice.ReadOnly)
    loader = QUiLoader()
    widget = loader.load(buffer)
    if widget is None:
        raise RuntimeError(f"QUiLoader could not load {ui_file}: {loader.errorString()}")
    return widget


def render_mockup(out_file: Path = MOCKUP_FILE) -> Path:
    """Fill the stand-ins with plausible content and save a PNG of the panel."""
    from PySide6.QtWidgets import QApplication, QComboBox, QLabel, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

    app = QApplication.instance() or QApplication(sys.argv[:1])
    panel = load_ui()
    find = lambda name, cls=QWidget: panel.findChild(cls, name)  # noqa: E731
    find("modelSelector", QComboBox).addItems(["medsyn-demo-phantom", "medsyn-official", "Local model folder..."])
    find("deviceSelector", QComboBox).addItem("NVIDIA RTX A4000 (13.2 of 16.0 GiB free)")
    find("licenseLabel", QLabel).setText("Apache-2.0 (demo model trained on phantoms; research use only)")
    find("reportTextEdit").setPlainText("Large right pleural effusion with compressive atelectasis of the right lower "
                                        "lobe. Heart size is normal. No pneumothorax.")
    find("guidanceSpinBox").setValue(4.0)
    find("seedSpinBox").setValue(3)
    find("anatomySelector", QComboBox).addItem("MedSyn synthetic CT (seed 3) anatomy")
    table = find("anatomyMappingTable", QTableWidget)
    structures = ["left upper lobe", "left lower lobe", "right upper lobe", "right middle lobe", "right lower lobe",
                  "airway", "vessels"]
    table.setRowCount(len(structures))
    for row, structure in enumerate(structures):
        table.setItem(row, 0, QTableWidgetItem(structure))
        segment = QComboBox()
        segment.addItem(structure)
        table.setCellWidget(row, 1, segment)
    table.resizeColumnToContents(0)
    find("modeSelector", QComboBox).addItem("Inpaint masked region")
    find("inputVolumeSelector", QComboBox).addItem("MedSyn synthetic CT (seed 3)")
    find("maskSegmentSelector", QComboBox).addItem("MedSyn synthetic CT (seed 3) anatomy: Segment_1")
    for hidden in ("modelFolderLabel", "modelFolderPathLineEdit", "hubRepositoryLabel", "hubRepositoryLineEdit",
                   "outpaintRoiLabel", "outpaintRoiSelector"):
        find(hidden).hide()
    find("outputVolumeSelector", QComboBox).addItem("Create new volume")
    find("outputSegmentationSelector", QComboBox).addItem("Create new segmentation")
    editor = find("segmentEditorWidget")
    editor.setMinimumHeight(90)
    QVBoxLayout(editor).addWidget(QLabel("[Segment Editor: Paint, Draw, Erase, Islands... (Slicer widget)]"))
    find("applyButton").setText("Cancel")
    find("progressBar").setValue(60)
    find("statusLabel", QLabel).setText("Super-resolution diffusion: step 4 of 20")
    panel.resize(440, panel.sizeHint().height())
    panel.show()
    app.processEvents()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    if not panel.grab().save(str(out_file)):
        raise OSError(f"could not write {out_file}")
    return out_file


if __name__ == "__main__":
    print(render_mockup())
