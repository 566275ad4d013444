"""One MedSyn run seen from Slicer: nodes -> input files -> worker request -> progress -> result nodes.

The widget (and the module's Logic) only call ``start``, ``poll`` and ``cancel``; everything between the scene and the
worker protocol lives here so it can be tested against a real MRML scene and a real worker without the Slicer GUI.
"""
from __future__ import annotations

import random
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import slicer

from medsyn.errors import MedSynError

from . import roi as roi_geometry
from .scene_io import (load_result_segmentation, load_result_volume, place_in_study, segment_mask, set_provenance,
                       write_labelmap_array, write_volume)
from .segment_mapping import export_anatomy, resolve_mapping, segment_names
from .worker_client import WorkerClient


@dataclass(frozen=True)
class Mode:
    """What an operation needs from the scene and what it gives back."""

    title: str
    needs_input: bool
    needs_report: bool
    needs_mask: bool = False
    needs_roi: bool = False
    uses_anatomy: bool = False
    result_volume: bool = True
    result_label: str = "synthetic CT"


# Adding an operation to the panel is one line here (and one in medsyn.worker.OPERATIONS).
MODES: dict[str, Mode] = {
    "generate": Mode("Generate from report", needs_input=False, needs_report=True, uses_anatomy=True),
    "inpaint": Mode("Inpaint masked region", needs_input=True, needs_report=True, needs_mask=True, uses_anatomy=True,
                    result_label="inpainted (synthetic)"),
    "outpaint": Mode("Outpaint beyond the field of view", needs_input=True, needs_report=True, needs_roi=True,
                     result_label="outpainted (synthetic)"),
    "segment": Mode("Segment lobes, airway and vessels", needs_input=True, needs_report=False, result_volume=False,
                    result_label="MedSyn anatomy (synthetic)"),
}
STAGE_TITLES = {"lowres": "Low-resolution diffusion", "sr": "Super-resolution diffusion"}


@dataclass
class RunSettings:
    """Sampling settings; None means "the model card's default", seed None means "pick a random seed"."""

    mode: str = "generate"
    report: str = ""
    model: Optional[str] = None
    device: str = "auto"
    seed: Optional[int] = 0
    steps: Optional[int] = None
    sr_steps: Optional[int] = None
    guidance: Optional[float] = None
    low_res_only: bool = False


@dataclass
class RunInputs:
    """Scene nodes a run reads (never modifies) and optional output nodes it fills instead of creating new ones."""

    input_volume: Any = None
    anatomy: Any = None
    anatomy_overrides: dict[str, str] = field(default_factory=dict)
    mask_segmentation: Any = None
    mask_segment_id: str = ""
    roi: Any = None
    output_volume: Any = None
    output_segmentation: Any = None


@dataclass
class ImportedResult:
    """Nodes made from one worker result."""

    volume: Any
    segmentation: Any
    study_item: int


@dataclass
class RunUpdate:
    """What the panel shows after a poll: status text, progress fraction, and the result nodes when finished."""

    state: str  # "running", "finished", "failed", "cancelled"
    message: str
    fraction: Optional[float] = None
    result: Optional[ImportedResult] = None


@dataclass
class _ActiveRun:
    request_id: str
    settings: RunSettings
    inputs: RunInputs
    folder: Path
    stages: list[str] = field(default_factory=list)


class MedSynRunner:
    """Drives runs through a WorkerClient; one run at a time."""

    def __init__(self, client: WorkerClient, work_dir: Path) -> None:
        self.client = client
        self.work_dir = Path(work_dir)
        self._active: Optional[_ActiveRun] = None
        self._counter = 0
        self._updates: list[RunUpdate] = []
        self.last_result: Optional[ImportedResult] = None

    @property
    def busy(self) -> bool:
        return self._active is not None

    def start(self, settings: RunSettings, inputs: RunInputs) -> str:
        """Validate, write the input files and send the request; returns the request id."""
        if self._active is not None:
            raise MedSynError("a MedSyn run is already in progress; wait for it or press Cancel")
        mode = MODES.get(settings.mode)
        if mode is None:
            raise MedSynError(f"unknown mode '{settings.mode}'; choose one of {', '.join(MODES)}")
        check_inputs(mode, settings, inputs)
        if settings.seed is None:
            settings = replace(settings, seed=random.SystemRandom().randrange(2**31))
        self._counter += 1
        folder = self.work_dir / f"run-{self._counter:04d}"
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "inputs").mkdir(parents=True)
        try:
            op, params = build_request(settings, inputs, folder)
            request_id = self.client.request(op, params, on_event=self._on_event)
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self._active = _ActiveRun(request_id, settings, inputs, folder)
        return request_id

    def cancel(self) -> None:
        if self._active is not None:
            self.client.cancel(self._active.request_id)

    def poll(self) -> list[RunUpdate]:
        """Poll the worker; returns what happened to the active run since the last call (the result is imported
        into the scene when it arrives) and worker failures that belong to no request. Events of other requests
        reach their own handlers."""
        for event in self.client.poll():
            if event.get("event") == "error" and event.get("id") is None:
                self._updates.append(RunUpdate("failed", event.get("message", "")))
        updates, self._updates = self._updates, []
        return updates

    def _on_event(self, event: dict[str, Any]) -> None:
        run = self._active
        if run is None or event.get("id") != run.request_id:
            return
        kind = event.get("event")
        if kind == "progress":
            self._updates.append(self._progress(run, event))
        elif kind == "result":
            self._updates.append(self._finish(run, self._import(run, event)))
        elif kind == "cancelled":
            self._updates.append(self._finish(run, RunUpdate("cancelled", "Cancelled.")))
        elif kind == "error":
            self._updates.append(self._finish(run, RunUpdate("failed", event.get("message", "failed"))))

    def _progress(self, run: _ActiveRun, event: dict[str, Any]) -> RunUpdate:
        stage, step, total = event.get("stage", ""), int(event.get("step", 0)), max(int(event.get("total", 1)), 1)
        if stage not in run.stages:
            run.stages.append(stage)
        expected = max(1 if run.settings.low_res_only else 2, len(run.stages))
        fraction = (run.stages.index(stage) + step / total) / expected
        return RunUpdate("running", f"{STAGE_TITLES.get(stage, stage)}: step {step} of {total}", min(fraction, 1.0))

    def _finish(self, run: _ActiveRun, update: RunUpdate) -> RunUpdate:
        self._active = None
        shutil.rmtree(run.folder, ignore_errors=True)
        if update.result is not None:
            self.last_result = update.result
        return update

    def _import(self, run: _ActiveRun, event: dict[str, Any]) -> RunUpdate:
        try:
            result = import_result(run.settings, run.inputs, event)
        except (OSError, RuntimeError, KeyError) as exc:
            return RunUpdate("failed", f"the result could not be loaded into Slicer: {exc}")
        return RunUpdate("finished", f"Done (seed {run.settings.seed}).", 1.0, result)


def check_inputs(mode: Mode, settings: RunSettings, inputs: RunInputs) -> None:
    """One-line errors for everything the user can fix in the panel, before any file is written."""
    if mode.needs_report and not settings.report.strip():
        raise MedSynError("the report is empty; type the findings the synthetic CT should show")
    if mode.needs_input and inputs.input_volume is None:
        raise MedSynError(f"{mode.title.lower()} needs an input volume; select one in the Edit section")
    if mode.needs_mask and (inputs.mask_segmentation is None or not inputs.mask_segment_id):
        raise MedSynError("inpainting needs a mask segment; select or draw the region to replace")
    if mode.needs_roi and inputs.roi is None:
        raise MedSynError("outpainting needs an ROI; place a markups ROI around the region to add")
    for output in (inputs.output_volume, inputs.output_segmentation):
        if output is not None and output in (inputs.input_volume, inputs.anatomy, inputs.mask_segmentation):
            raise MedSynError("an output node is also an input; choose 'Create new' for the outputs")


def build_request(settings: RunSettings, inputs: RunInputs, folder: Path) -> tuple[str, dict[str, Any]]:
    """Write the run's input files into ``folder/inputs`` and return the worker operation and its parameters."""
    mode = MODES[settings.mode]
    staged = folder / "inputs"
    params: dict[str, Any] = {"out_dir": str(folder / "outputs"), "model": settings.model, "device": settings.device,
                              "seed": settings.seed}
    optional = {"steps": settings.steps, "sr_steps": settings.sr_steps, "guidance": settings.guidance}
    params.update({key: value for key, value in optional.items() if value is not None})
    if settings.low_res_only:
        params["low_res_only"] = True
    if mode.needs_report or settings.report.strip():
        params["report"] = settings.report.strip()
    volume = inputs.input_volume if mode.needs_input else None  # a hidden selection must not shape a generation
    if mode.needs_input:
        params["input_path"] = str(write_volume(volume, staged / "input.nrrd"))
    if mode.needs_mask:
        mask = segment_mask(inputs.mask_segmentation, inputs.mask_segment_id, volume)
        if not mask.any():
            raise MedSynError("the inpainting mask segment is empty; paint the region to replace first")
        params["mask_path"] = str(write_labelmap_array(mask.astype("uint8"), volume, staged / "mask.nrrd"))
    if mode.needs_roi:
        params["canvas_path"] = str(roi_geometry.write_canvas(inputs.roi, volume, staged / "canvas.nrrd"))
    if mode.uses_anatomy and inputs.anatomy is not None:
        mapping = resolve_mapping(segment_names(inputs.anatomy), inputs.anatomy_overrides)
        files = export_anatomy(inputs.anatomy, mapping, volume, staged)
        if not files:
            raise MedSynError("no non-empty segment of the anatomy is mapped to a lobe, the airway or the vessels; "
                              "rename the segments, set the mapping, or choose None")
        params.update({key: str(path) for key, path in files.items()})
        if settings.mode == "generate":
            return "generate_conditioned", params
    return settings.mode, params


def import_result(settings: RunSettings, inputs: RunInputs, event: dict[str, Any]) -> ImportedResult:
    """Load the result files into (new or given) nodes with provenance, under the input's study."""
    mode = MODES[settings.mode]
    outputs = {name: Path(path) for name, path in event.get("outputs", {}).items()}
    model = event.get("model", {})
    scene = _scene_of(inputs)
    source = inputs.input_volume if mode.needs_input else None
    base = source.GetName() if source is not None else "MedSyn"
    label = f"{base} {mode.result_label} (seed {settings.seed})"
    volume = None
    if mode.result_volume:
        volume = load_result_volume(outputs["ct"], scene, scene.GenerateUniqueName(label), inputs.output_volume)
    segmentation = load_result_segmentation(
        outputs["segmentation"], scene, scene.GenerateUniqueName(f"{label} anatomy" if volume else label),
        inputs.output_segmentation, reference=volume or source)
    fields = {"mode": settings.mode, "prompt": settings.report.strip(), "seed": str(settings.seed),
              "model": model.get("name", settings.model or ""), "weightsSha256": model.get("weights_sha256", {})}
    nodes = [node for node in (volume, segmentation) if node is not None]
    for node in nodes:
        set_provenance(node, fields, outputs.get("provenance"))
    study = place_in_study(nodes, source, f"{mode.title} (seed {settings.seed})")
    return ImportedResult(volume, segmentation, study)


def _scene_of(inputs: RunInputs) -> "slicer.vtkMRMLScene":
    for node in (inputs.input_volume, inputs.anatomy, inputs.output_volume, inputs.output_segmentation):
        if node is not None and node.GetScene() is not None:
            return node.GetScene()
    return slicer.mrmlScene
