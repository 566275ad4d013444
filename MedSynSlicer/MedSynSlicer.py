"""MedSyn for 3D Slicer: text-guided synthetic chest CT with lobes, airway and vessels; inpainting, outpainting and
segmentation of a CT.

This file wires the panel only (Extension Wizard layout: module, parameter node, widget, logic, test). The work is done
by MedSynSlicerLib (scene <-> files, worker protocol) and by the medsyn backend in a separate worker process, so
nothing heavy (torch, transformers, monai) is imported here and nothing runs at import time.
"""
import shutil
import time
from pathlib import Path
from typing import Annotated, Optional

import qt
import vtk

import slicer
from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from medsyn.errors import MedSynError
from MedSynSlicerLib import dependencies
from MedSynSlicerLib.model_import import official_import_params
from MedSynSlicerLib.resources import resource_path
from MedSynSlicerLib.runner import MODES, MedSynRunner, RunInputs, RunSettings, RunUpdate
from MedSynSlicerLib.segment_mapping import NOT_MAPPED, STRUCTURES, resolve_mapping, segment_names
from MedSynSlicerLib.worker_client import SubprocessTransport, WorkerClient

MODULE_DIR = Path(__file__).resolve().parent
PYTHON_SETTING = "MedSyn/PythonExecutable"  # a configured interpreter instead of PythonSlicer (e.g. a CUDA venv)
POLL_INTERVAL_MS = 200
HEARTBEAT_TIMEOUT_S = 60.0
LOCAL_FOLDER, HUB_REPOSITORY = "__local_folder__", "__hub_repository__"


#
# MedSynSlicer
#


class MedSynSlicer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedSyn")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Image Synthesis")]
        self.parent.dependencies = []
        self.parent.contributors = ["MedSynSlicer contributors"]
        self.parent.icon = qt.QIcon(str(resource_path("Icons/MedSynSlicer.png")))  # Slicer looks only next to the module
        self.parent.helpText = _("""
Generate synthetic chest CT volumes with lobe, airway and vessel segmentations from a free-text radiology report,
condition them on drawn or loaded anatomy, inpaint a masked region, outpaint beyond the field of view, or segment a CT.
<b>Research use only: every result is a synthetic image, not a real patient.</b> The model's licence is shown in the
Model section. See the <a href="https://github.com/MedSynSlicer/SlicerMedSyn#readme">documentation</a>.
""")
        self.parent.acknowledgementText = _("""
Based on MedSyn (Y. Xu et al., "MedSyn: Text-guided Anatomy-aware Synthesis of High-Fidelity 3D CT Images",
IEEE Transactions on Medical Imaging, 2024). The Slicer module follows the design of SlicerTotalSegmentator and
SlicerMONAIAuto3DSeg.
""")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """The demo phantom ships with the module, so the Sample Data entry works offline."""
    import SampleData

    phantom = resource_path("SampleData/MedSynDemoPhantom.nrrd")
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="MedSyn",
        sampleName="MedSynDemoPhantom",
        thumbnailFileName=str(resource_path("Icons/MedSynSlicer.png")),
        uris=phantom.as_uri(),
        fileNames=phantom.name,
        nodeNames="MedSynDemoPhantom",
        loadFileTypes="VolumeFile",
    )


#
# MedSynSlicerParameterNode
#


@parameterNodeWrapper
class MedSynSlicerParameterNode:
    """Panel state, saved with the scene. 0 for steps / guidance means "the model card's default"."""

    report: str
    mode: str = "generate"
    model: str = ""
    device: str = "auto"
    guidance: Annotated[float, WithinRange(0.0, 50.0)] = 0.0
    seed: Annotated[int, WithinRange(0, 2**31 - 1)] = 0
    randomSeed: bool = False
    steps: Annotated[int, WithinRange(0, 1000)] = 0
    srSteps: Annotated[int, WithinRange(0, 1000)] = 0
    lowResOnly: bool = False
    anatomy: vtkMRMLSegmentationNode
    anatomyOverrides: dict[str, str]
    inputVolume: vtkMRMLScalarVolumeNode
    maskSegmentation: vtkMRMLSegmentationNode
    maskSegmentId: str = ""
    outpaintRoi: vtkMRMLMarkupsROINode
    outputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode


#
# MedSynSlicerWidget
#


class MedSynSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._mappingCombos = {}
        self._observedAnatomy = None
        self._pollTimer = qt.QTimer()

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(str(resource_path("UI/MedSynSlicer.ui")))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedSynSlicerLogic()

        for key, mode in MODES.items():
            self.ui.modeSelector.addItem(mode.title, key)
        self._fillModels()
        self._fillDevices([{"name": "cpu", "label": "CPU"}])
        self._setupMappingTable()
        self.ui.segmentEditorWidget.setMRMLSegmentEditorNode(self.logic.segmentEditorNode())

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.modeSelector.connect("currentIndexChanged(int)", self.onModeChanged)
        self.ui.modelSelector.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.modelFolderPathLineEdit.connect("currentPathChanged(QString)", self.onModelChanged)
        self.ui.hubRepositoryLineEdit.connect("editingFinished()", self.onModelChanged)
        self.ui.deviceSelector.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.importWeightsButton.connect("clicked(bool)", self.onImportWeights)
        self.ui.anatomySelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onAnatomyChanged)
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputVolumeChanged)
        self.ui.loadAnatomyButton.connect("clicked(bool)", self.onLoadAnatomy)
        self.ui.useLastResultAnatomyButton.connect("clicked(bool)", self.onUseLastResultAnatomy)
        self.ui.maskSegmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onMaskChanged)
        self.ui.maskSegmentSelector.connect("currentSegmentChanged(QString)", self.onMaskChanged)
        self._pollTimer.setInterval(POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self.onPollTimer)
        self._pollTimer.start()  # cheap when idle; also delivers device and import answers

        self.initializeParameterNode()
        if self.logic.dependenciesReady():
            self.logic.requestDevices(self._fillDevices)

    def cleanup(self) -> None:
        self._pollTimer.stop()
        self.removeObservers()
        if self.logic:
            self.logic.shutdown()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        self._showModel(self._parameterNode.model)

    def setParameterNode(self, inputParameterNode: Optional[MedSynSlicerParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
            self._observeAnatomy(self._parameterNode.anatomy)
            self.ui.maskSegmentSelector.setCurrentNode(self._parameterNode.maskSegmentation)
            self.ui.maskSegmentSelector.setCurrentSegmentID(self._parameterNode.maskSegmentId)
            self._updateGui()

    # -- panel state -------------------------------------------------------------------------------------------

    def _updateGui(self, caller=None, event=None) -> None:
        """Show only the fields the chosen mode and model source use; Apply reads "Cancel" while a run is active."""
        node = self._parameterNode
        if node is None:
            return
        index = self.ui.modeSelector.findData(node.mode)
        if index >= 0 and index != self.ui.modeSelector.currentIndex:
            self.ui.modeSelector.currentIndex = index
        mode = MODES[node.mode]
        for widget in (self.ui.inputVolumeLabel, self.ui.inputVolumeSelector):
            widget.visible = mode.needs_input
        for widget in (self.ui.maskSegmentLabel, self.ui.maskSegmentSelector):
            widget.visible = mode.needs_mask
        for widget in (self.ui.outpaintRoiLabel, self.ui.outpaintRoiSelector):
            widget.visible = mode.needs_roi
        self.ui.anatomyCollapsibleButton.enabled = mode.uses_anatomy
        self.ui.outputVolumeSelector.enabled = mode.result_volume
        self.ui.seedSpinBox.enabled = not node.randomSeed
        source = self.ui.modelSelector.currentData
        for widget in (self.ui.modelFolderLabel, self.ui.modelFolderPathLineEdit):
            widget.visible = source == LOCAL_FOLDER
        for widget in (self.ui.hubRepositoryLabel, self.ui.hubRepositoryLineEdit):
            widget.visible = source == HUB_REPOSITORY
        self.ui.useLastResultAnatomyButton.enabled = self.logic.lastResultSegmentation() is not None
        busy = self.logic.busy
        self.ui.applyButton.text = _("Cancel") if busy else _("Apply")
        self.ui.applyButton.toolTip = _("Stop the run at its next diffusion step") if busy else _("Run MedSyn")

    def _fillModels(self) -> None:
        self.ui.modelSelector.clear()
        for model in self.logic.availableModels():
            self.ui.modelSelector.addItem(model["name"], model["name"])
            self.ui.modelSelector.setItemData(self.ui.modelSelector.count - 1, model["license"], qt.Qt.ToolTipRole)
        self.ui.modelSelector.addItem(_("Local model folder..."), LOCAL_FOLDER)
        self.ui.modelSelector.addItem(_("Hugging Face repository..."), HUB_REPOSITORY)

    def _showModel(self, model: str) -> None:
        """Select ``model`` (a bundled/imported name, a folder or an hf:// spec) in the Model section."""
        index = self.ui.modelSelector.findData(model) if model else 0
        if index < 0:
            hub = model.startswith("hf://")
            index = self.ui.modelSelector.findData(HUB_REPOSITORY if hub else LOCAL_FOLDER)
            if hub:
                self.ui.hubRepositoryLineEdit.text = model
            else:
                self.ui.modelFolderPathLineEdit.currentPath = model
        self.ui.modelSelector.currentIndex = index
        self.onModelChanged()

    def _fillDevices(self, devices: list) -> None:
        current = self._parameterNode.device if self._parameterNode else "auto"
        self.ui.deviceSelector.blockSignals(True)
        self.ui.deviceSelector.clear()
        for device in [{"name": "auto", "label": _("Automatic (GPU if available)")}] + \
                [d for d in devices if d["name"] != "auto"]:
            self.ui.deviceSelector.addItem(device["label"], device["name"])
        self.ui.deviceSelector.currentIndex = max(self.ui.deviceSelector.findData(current), 0)
        self.ui.deviceSelector.blockSignals(False)

    def _setupMappingTable(self) -> None:
        table = self.ui.anatomyMappingTable
        table.setRowCount(len(STRUCTURES))
        table.horizontalHeader().setSectionResizeMode(0, qt.QHeaderView.ResizeToContents)
        for row, structure in enumerate(STRUCTURES):
            item = qt.QTableWidgetItem(structure)
            item.setFlags(qt.Qt.ItemIsEnabled)
            table.setItem(row, 0, item)
            combo = qt.QComboBox()
            combo.connect("activated(int)", lambda _index, s=structure: self.onMappingEdited(s))
            table.setCellWidget(row, 1, combo)
            self._mappingCombos[structure] = combo

    def _refreshMappingTable(self) -> None:
        """One combo per structure: the matched or overridden segment, or "not used"."""
        node = self._parameterNode
        segmentation = node.anatomy if node else None
        segments = segment_names(segmentation) if segmentation else {}
        try:
            mapping = resolve_mapping(segments, dict(node.anatomyOverrides) if node else {})
        except ValueError:  # an override points at a deleted segment: start again from the names
            node.anatomyOverrides = {}
            mapping = resolve_mapping(segments)
        for structure, combo in self._mappingCombos.items():
            combo.clear()
            combo.addItem(_("(not used)"), NOT_MAPPED)
            for segment_id, name in segments.items():
                combo.addItem(name, segment_id)
            combo.currentIndex = max(combo.findData(mapping.get(structure, NOT_MAPPED)), 0)

    # -- user actions ------------------------------------------------------------------------------------------

    def onModeChanged(self, index: int) -> None:
        if self._parameterNode:
            self._parameterNode.mode = self.ui.modeSelector.itemData(index)

    def onModelChanged(self, *args) -> None:
        source = self.ui.modelSelector.currentData
        if source == LOCAL_FOLDER:
            model = self.ui.modelFolderPathLineEdit.currentPath
        elif source == HUB_REPOSITORY:
            model = self.ui.hubRepositoryLineEdit.text.strip()
        else:
            model = source or ""
        if self._parameterNode:
            self._parameterNode.model = model
        self.ui.licenseLabel.text = self.logic.licenseOf(model)
        self._updateGui()

    def onDeviceChanged(self, index: int) -> None:
        if self._parameterNode:
            self._parameterNode.device = self.ui.deviceSelector.itemData(index) or "auto"

    def onAnatomyChanged(self, node) -> None:
        if self._parameterNode and node is not self._observedAnatomy:
            self._parameterNode.anatomyOverrides = {}
        self._observeAnatomy(node)

    def _observeAnatomy(self, node) -> None:
        """Keep the mapping table and the embedded editor on the anatomy segmentation as segments come and go."""
        events = (slicer.vtkSegmentation.SegmentAdded, slicer.vtkSegmentation.SegmentRemoved,
                  slicer.vtkSegmentation.SegmentModified)
        if node is not self._observedAnatomy:
            for event in events:
                if self._observedAnatomy is not None:
                    self.removeObserver(self._observedAnatomy, event, self.onSegmentsChanged)
                if node is not None:
                    self.addObserver(node, event, self.onSegmentsChanged)
            self._observedAnatomy = node
        self.ui.segmentEditorWidget.setSegmentationNode(node)
        self._refreshMappingTable()

    def onSegmentsChanged(self, caller=None, event=None) -> None:
        self._refreshMappingTable()

    def onMappingEdited(self, structure: str) -> None:
        overrides = dict(self._parameterNode.anatomyOverrides)
        overrides[structure] = self._mappingCombos[structure].currentData
        self._parameterNode.anatomyOverrides = overrides

    def onInputVolumeChanged(self, node) -> None:
        self.ui.segmentEditorWidget.setSourceVolumeNode(node)

    def onMaskChanged(self, *args) -> None:
        if self._parameterNode:
            self._parameterNode.maskSegmentation = self.ui.maskSegmentSelector.currentNode()
            self._parameterNode.maskSegmentId = self.ui.maskSegmentSelector.currentSegmentID() or ""

    def onLoadAnatomy(self) -> None:
        path = qt.QFileDialog.getOpenFileName(self.parent, _("Load anatomy"), "",
                                              _("Segmentations and label maps (*.seg.nrrd *.nrrd *.nii *.nii.gz)"))
        if path:
            with slicer.util.tryWithErrorDisplay(_("Could not load the anatomy."), waitCursor=True):
                self._parameterNode.anatomy = slicer.util.loadSegmentation(path)

    def onUseLastResultAnatomy(self) -> None:
        self._parameterNode.anatomy = self.logic.lastResultSegmentation()
        self.ui.anatomyCollapsibleButton.collapsed = False

    def onImportWeights(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(self.parent, _("Official MedSyn model folder"))
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not import the weights."), waitCursor=True):
            self._startBackend()
            self.logic.importOfficialWeights(Path(folder), self.onImportFinished)
            self.ui.statusLabel.text = _("Importing the official weights (this takes a minute)...")

    def onImportFinished(self, event: dict) -> None:
        if event.get("event") == "result":
            self._fillModels()
            self.ui.statusLabel.text = _("Imported. Select 'medsyn-official' as the model.")
        else:
            self.ui.statusLabel.text = _("Import failed: ") + event.get("message", "")

    def onApplyButton(self) -> None:
        if self.logic.busy:
            self.logic.cancel()
            self.ui.statusLabel.text = _("Cancelling at the next diffusion step...")
            return
        with slicer.util.tryWithErrorDisplay(_("MedSyn could not start."), waitCursor=True):
            try:
                self._startBackend()
                settings, inputs = self.logic.settingsFromParameterNode(self._parameterNode)
                self.logic.start(settings, inputs)
            except MedSynError as error:
                self.ui.statusLabel.text = str(error)
                return
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = _("Starting (the first run loads the model)...")
            self._updateGui()

    def _startBackend(self) -> None:
        """Install missing backend packages once (after asking); then the worker can start."""
        installed = self.logic.ensureDependencies(
            lambda message, details: slicer.util.confirmOkCancelDisplay(message, "MedSyn", detailedText=details))
        if installed:
            self.logic.requestDevices(self._fillDevices)

    def onPollTimer(self) -> None:
        for update in self.logic.poll():
            self._showUpdate(update)

    def _showUpdate(self, update: RunUpdate) -> None:
        self.ui.statusLabel.text = update.message
        if update.fraction is not None:
            self.ui.progressBar.value = int(round(100 * update.fraction))
        if update.state == "finished" and update.result is not None:
            result = update.result
            background = result.volume or self._parameterNode.inputVolume
            slicer.util.setSliceViewerLayers(background=background, fit=True)
        elif update.state in ("failed", "cancelled"):
            self.ui.progressBar.value = 0
        self._updateGui()


#
# MedSynSlicerLogic
#


class MedSynSlicerLogic(ScriptedLoadableModuleLogic):
    """Runs MedSyn from Python without the panel, e.g. for batch work::

        logic = slicer.util.getModuleLogic("MedSynSlicer")
        result = logic.runBlocking(RunSettings(report="Large right pleural effusion.", seed=3), RunInputs())
    """

    def __init__(self, python: Optional[str] = None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.workDir = Path(slicer.app.temporaryPath) / "MedSyn"
        self.python = python
        client = WorkerClient(self._startWorker, heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S)
        self.runner = MedSynRunner(client, self.workDir)

    def getParameterNode(self):
        return MedSynSlicerParameterNode(super().getParameterNode())

    def _startWorker(self) -> SubprocessTransport:
        return SubprocessTransport(self.python or workerPython(), MODULE_DIR, env=slicer.util.startupEnvironment())

    @property
    def busy(self) -> bool:
        return self.runner.busy

    def requirementsPath(self) -> Path:
        return resource_path("requirements.txt")

    def dependenciesReady(self) -> bool:
        return not dependencies.torch_missing() and not dependencies.missing_requirements(
            dependencies.read_requirements(self.requirementsPath()))

    def ensureDependencies(self, confirm) -> bool:
        return dependencies.ensure_backend_dependencies(self.requirementsPath(), self.workDir, confirm)

    def availableModels(self) -> list:
        """Bundled and imported models, read from their model cards (no torch needed)."""
        from medsyn.models.registry import list_models

        return list_models()

    def licenseOf(self, model: str) -> str:
        """Licence from the model card of a bundled/imported name, a folder or a cached hf:// repository."""
        from medsyn.models.card import load_card
        from medsyn.models.registry import resolve_model

        try:
            return load_card(resolve_model(model or None)).license
        except (MedSynError, ImportError):
            return _("unknown until the model is available on this computer")

    def segmentEditorNode(self):
        node = slicer.mrmlScene.GetSingletonNode("MedSyn", "vtkMRMLSegmentEditorNode")
        if node is None:
            node = slicer.vtkMRMLSegmentEditorNode()
            node.SetSingletonTag("MedSyn")
            node = slicer.mrmlScene.AddNode(node)
        return node

    def lastResultSegmentation(self):
        result = self.runner.last_result
        return result.segmentation if result is not None and result.segmentation.GetScene() else None

    def requestDevices(self, callback) -> None:
        self.runner.client.request("devices", on_event=lambda event: callback(event["devices"])
                                   if event.get("event") == "result" else None)

    def importOfficialWeights(self, folder: Path, callback) -> None:
        self.runner.client.request("import_official", official_import_params(folder), on_event=callback)

    @staticmethod
    def settingsFromParameterNode(node: MedSynSlicerParameterNode) -> tuple:
        settings = RunSettings(mode=node.mode, report=node.report, model=node.model or None, device=node.device,
                               seed=None if node.randomSeed else node.seed, steps=node.steps or None,
                               sr_steps=node.srSteps or None, guidance=node.guidance or None,
                               low_res_only=node.lowResOnly)
        inputs = RunInputs(input_volume=node.inputVolume, anatomy=node.anatomy,
                           anatomy_overrides=dict(node.anatomyOverrides), mask_segmentation=node.maskSegmentation,
                           mask_segment_id=node.maskSegmentId, roi=node.outpaintRoi, output_volume=node.outputVolume,
                           output_segmentation=node.outputSegmentation)
        return settings, inputs

    def start(self, settings: RunSettings, inputs: RunInputs) -> str:
        return self.runner.start(settings, inputs)

    def poll(self) -> list:
        return self.runner.poll()

    def cancel(self) -> None:
        self.runner.cancel()

    def shutdown(self) -> None:
        self.runner.client.shutdown()

    def runBlocking(self, settings: RunSettings, inputs: RunInputs, timeout_s: float = 3600.0) -> RunUpdate:
        """Start a run and wait for its end, keeping Slicer responsive; returns the final update."""
        self.start(settings, inputs)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for update in self.poll():
                if update.state != "running":
                    return update
            slicer.app.processEvents()
            time.sleep(POLL_INTERVAL_MS / 1000)
        self.cancel()
        raise TimeoutError(f"MedSyn did not finish within {timeout_s:.0f} s")


def workerPython() -> str:
    """Interpreter for the worker: the configured one, else PythonSlicer (Slicer's Python with its packages)."""
    configured = slicer.util.settingsValue(PYTHON_SETTING, "")
    python = configured or shutil.which("PythonSlicer")
    if not python:
        raise RuntimeError("PythonSlicer was not found; set the MedSyn/PythonExecutable setting to a Python "
                           "interpreter that has the MedSyn requirements")
    return python


#
# MedSynSlicerTest
#


class MedSynSlicerTest(ScriptedLoadableModuleTest):
    """Runs a real generation with the bundled demo model on CPU at few steps; skipped when the backend is missing."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_MedSynSlicer_generate()

    def test_MedSynSlicer_generate(self):
        from medsyn.models.registry import DEFAULT_MODEL

        logic = MedSynSlicerLogic()
        models = {entry["name"]: entry for entry in logic.availableModels()}
        if not logic.dependenciesReady() or DEFAULT_MODEL not in models:
            self.delayDisplay("Skipped: the MedSyn backend packages or the demo model are not installed")
            return
        from medsyn.models.card import load_card

        card = load_card(Path(models[DEFAULT_MODEL]["path"]))
        settings = RunSettings(report="Large right pleural effusion.", model=DEFAULT_MODEL, device="cpu",
                               seed=1, steps=4, sr_steps=2)
        try:
            update = logic.runBlocking(settings, RunInputs(), timeout_s=900)
        finally:
            logic.shutdown()
        self.assertEqual(update.state, "finished", update.message)
        volume, segmentation = update.result.volume, update.result.segmentation
        self.assertIn("synthetic", volume.GetName())
        self.assertEqual(volume.GetAttribute("MedSyn.synthetic"), "true")
        self.assertEqual(volume.GetAttribute("MedSyn.seed"), "1")
        self.assertEqual(list(reversed(volume.GetImageData().GetDimensions())), card.grid.shape_zyx)
        self.assertAlmostEqual(volume.GetSpacing()[0], card.grid.spacing_xyz[0], places=4)
        self.assertEqual(segmentation.GetSegmentation().GetNumberOfSegments(), 7)
        self.delayDisplay("MedSyn generation test passed")
