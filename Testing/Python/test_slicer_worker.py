"""The worker protocol with a real ``python -m medsyn.worker`` subprocess and a tiny random-weight model: progress,
cancel mid-run, a bad request, a killed and a hung worker, the model cache, and a full run into an MRML scene."""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import slicer

from medsyn import worker
from medsyn.errors import MedSynError
from medsyn.models.card import load_card
from medsyn.progress import CancelToken
from MedSynSlicerLib.runner import MedSynRunner, RunInputs, RunSettings
from MedSynSlicerLib.worker_client import SubprocessTransport, WorkerClient
from slicer_mrml import add_segment, new_scene
from tiny_model import build_tiny_model

MODULE_DIR = Path(__file__).resolve().parents[2] / "MedSynSlicer"
TIMEOUT_S = 120.0
REPORT = "Large right pleural effusion."


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def client():
    client = WorkerClient(lambda: SubprocessTransport(sys.executable, MODULE_DIR, ["--heartbeat", "0.2"]),
                          heartbeat_timeout_s=10.0)
    yield client
    client.shutdown()


def ask(client: WorkerClient, op: str, params=None) -> tuple[dict, list[dict]]:
    """Send one request; return its final event and every event it received."""
    events: list[dict] = []
    request_id = client.request(op, params, on_event=events.append)
    return client.wait_for(request_id, TIMEOUT_S), events


def generate_params(tiny: Path, out_dir: Path, **overrides) -> dict:
    return {"report": REPORT, "out_dir": str(out_dir), "model": str(tiny), "device": "cpu", "seed": 1, **overrides}


def wait_for_error(client: WorkerClient) -> dict:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        errors = [event for event in client.poll() if event["event"] == "error"]
        if errors:
            return errors[0]
        time.sleep(0.05)
    raise TimeoutError("the client did not notice the worker's loss")


def start_long_run(client: WorkerClient, tiny: Path, out_dir: Path) -> tuple[str, list[dict]]:
    """A generation with hundreds of steps, returned once its first step has been reported."""
    events: list[dict] = []
    request_id = client.request("generate", generate_params(tiny, out_dir, steps=500, sr_steps=1),
                                on_event=events.append)
    deadline = time.monotonic() + TIMEOUT_S
    while not any(e["event"] == "progress" for e in events) and time.monotonic() < deadline:
        client.poll()
        time.sleep(0.01)
    return request_id, events


def run_to_end(runner: MedSynRunner, settings: RunSettings, inputs: RunInputs):
    """Start a run and poll it like the panel's timer does; returns its final update."""
    runner.start(settings, inputs)
    deadline = time.monotonic() + TIMEOUT_S
    while runner.busy and time.monotonic() < deadline:
        for update in runner.poll():
            if update.state != "running":
                return update
        time.sleep(0.02)
    raise TimeoutError(settings.mode)


def test_ping_is_answered_before_any_model_is_loaded(client):
    final, _ = ask(client, "ping")
    assert final["event"] == "result" and final["pong"] is True and final["loads"] == 0


def test_bad_requests_get_one_line_errors_and_the_worker_stays_alive(client, tiny, tmp_path):
    pid = client.transport.pid
    client.transport.send("this is not json")
    garbage = wait_for_error(client)
    unknown, _ = ask(client, "paint_it_black")
    bad_option, _ = ask(client, "generate", generate_params(tiny, tmp_path / "a", colour="red"))
    empty_report, _ = ask(client, "generate", generate_params(tiny, tmp_path / "b", report=" "))

    assert garbage["id"] is None and garbage["message"].startswith("request is not valid JSON")
    assert "unknown operation 'paint_it_black'" in unknown["message"]
    assert bad_option["message"] == "option 'colour' of generate is not available in this backend version"
    assert "report is empty" in empty_report["message"] and "\n" not in empty_report["message"]
    assert ask(client, "ping")[0]["pong"] and client.transport.pid == pid


def test_generate_streams_progress_of_both_stages_and_writes_the_outputs(client, tiny, tmp_path):
    final, events = ask(client, "generate", generate_params(tiny, tmp_path / "out", steps=3, sr_steps=2))

    assert final["event"] == "result", final
    progress = [(e["stage"], e["step"], e["total"]) for e in events if e["event"] == "progress"]
    stages = [stage for stage, _, _ in progress]
    assert stages == ["lowres"] * stages.count("lowres") + ["sr"] * stages.count("sr") and "sr" in stages
    for stage in ("lowres", "sr"):
        steps = [(step, total) for name, step, total in progress if name == stage]
        assert steps == [(i + 1, len(steps)) for i in range(len(steps))]  # every step of the DDIM grid, in order
    for role in ("ct", "lobes", "airway", "vessels", "segmentation", "provenance"):
        assert Path(final["outputs"][role]).is_file()
    assert final["model"]["name"] == "tiny-random-test" and final["model"]["cached"] in (True, False)


def test_a_second_request_reuses_the_loaded_model(client, tiny, tmp_path):
    loaded, _ = ask(client, "load_model", {"model": str(tiny), "device": "cpu"})
    generated, _ = ask(client, "generate", generate_params(tiny, tmp_path / "out", steps=1, sr_steps=1))
    ping, _ = ask(client, "ping")

    assert loaded["model"]["name"] == "tiny-random-test" and loaded["model"]["device"] == "cpu"
    assert generated["model"]["cached"] is True
    assert ping["loads"] == 1 and ping["models"] == ["tiny@cpu"]


def test_cancel_stops_a_run_at_the_next_step(client, tiny, tmp_path):
    request_id, events = start_long_run(client, tiny, tmp_path / "cancelled")
    client.cancel(request_id)
    final = client.wait_for(request_id, TIMEOUT_S)

    progress = [e for e in events if e["event"] == "progress"]
    assert final["event"] == "cancelled"
    assert progress[-1]["stage"] == "lowres" and progress[-1]["step"] < progress[-1]["total"]
    assert not (tmp_path / "cancelled").exists()
    assert ask(client, "ping")[0]["busy"] is None


def test_runner_generates_into_the_scene_with_progress_and_provenance(client, tiny, tmp_path):
    scene = new_scene()
    runner = MedSynRunner(client, tmp_path / "work")
    runner.start(RunSettings(report=REPORT, model=str(tiny), device="cpu", seed=None, steps=2, sr_steps=2),
                 RunInputs())
    updates = []
    deadline = time.monotonic() + TIMEOUT_S
    while runner.busy and time.monotonic() < deadline:
        updates += runner.poll()
        time.sleep(0.02)

    final = updates[-1]
    assert final.state == "finished", final.message
    fractions = [u.fraction for u in updates if u.fraction is not None]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and fractions[0] < 0.5
    volume, segmentation = final.result.volume, final.result.segmentation
    card = load_card(tiny)
    assert list(slicer.util.arrayFromVolume(volume).shape) == card.grid.shape_zyx
    np.testing.assert_allclose(volume.GetSpacing(), card.grid.spacing_xyz)
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 7
    assert volume.GetAttribute("MedSyn.synthetic") == "true" and int(volume.GetAttribute("MedSyn.seed")) >= 0
    assert json.loads(volume.GetAttribute("MedSyn.weightsSha256"))["lowres"] == card.lowres.sha256
    assert volume.GetScene() is scene and not list((tmp_path / "work").iterdir())  # run folder cleaned up


def test_runner_edits_a_generated_ct_in_every_mode(client, tiny, tmp_path):
    scene = new_scene()
    runner = MedSynRunner(client, tmp_path / "work")
    fast = {"model": str(tiny), "device": "cpu", "steps": 1, "sr_steps": 1}
    ct = run_to_end(runner, RunSettings(report=REPORT, seed=3, **fast), RunInputs()).result.volume
    original = slicer.util.arrayFromVolume(ct).copy()
    masks = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    region = np.zeros(original.shape, bool)
    region[2:5, 4:10, 4:10] = True
    erase = add_segment(masks, "erase", region, ct)
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    bounds = [0.0] * 6
    ct.GetRASBounds(bounds)
    roi.SetCenter((bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, bounds[5])
    roi.SetSize(bounds[1] - bounds[0], bounds[3] - bounds[2], 10.0)

    inpainted = run_to_end(runner, RunSettings(mode="inpaint", report="Small left effusion.", seed=4, **fast),
                           RunInputs(input_volume=ct, mask_segmentation=masks, mask_segment_id=erase))
    conditioned = run_to_end(runner, RunSettings(report=REPORT, seed=5, **fast),
                             RunInputs(anatomy=runner.last_result.segmentation))
    segmented = run_to_end(runner, RunSettings(mode="segment", seed=6, **fast), RunInputs(input_volume=ct))
    outpainted = run_to_end(runner, RunSettings(mode="outpaint", report=REPORT, seed=7, **fast),
                            RunInputs(input_volume=ct, roi=roi))

    for update in (inpainted, conditioned, segmented, outpainted):
        assert update.state == "finished", update.message
    edited = slicer.util.arrayFromVolume(inpainted.result.volume)
    np.testing.assert_array_equal(edited[~region], original[~region])  # outside the mask: untouched
    assert conditioned.result.volume.GetAttribute("MedSyn.mode") == "generate"
    assert segmented.result.volume is None
    assert segmented.result.segmentation.GetSegmentation().GetNumberOfSegments() == 7
    grown = outpainted.result.volume.GetImageData().GetDimensions()
    assert grown[:2] == ct.GetImageData().GetDimensions()[:2] and grown[2] > ct.GetImageData().GetDimensions()[2]
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(ct), original)  # the input is never modified


def test_runner_cancel_leaves_no_nodes_and_no_files(client, tiny, tmp_path):
    scene = new_scene()
    nodes = scene.GetNumberOfNodes()
    runner = MedSynRunner(client, tmp_path / "work")
    runner.start(RunSettings(report=REPORT, model=str(tiny), device="cpu", steps=500), RunInputs())
    runner.cancel()
    updates = []
    deadline = time.monotonic() + TIMEOUT_S
    while runner.busy and time.monotonic() < deadline:
        updates += runner.poll()
        time.sleep(0.02)

    assert updates[-1].state == "cancelled" and updates[-1].result is None
    assert scene.GetNumberOfNodes() == nodes and not list((tmp_path / "work").iterdir())


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")
def test_a_killed_worker_is_reported_in_one_line_and_restarted_on_the_next_request(client, tiny, tmp_path):
    request_id, _ = start_long_run(client, tiny, tmp_path / "killed")
    killed = client.transport
    os.kill(killed.pid, signal.SIGKILL)

    error = wait_for_error(client)

    assert error["id"] == request_id and "\n" not in error["message"]
    assert error["message"].startswith("the MedSyn worker exited with code -9")
    assert error["message"].endswith("it restarts on the next Apply")
    assert not client.running and request_id not in client.pending
    assert ask(client, "ping")[0]["pong"] and client.transport is not killed


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="POSIX signals")
def test_a_hung_worker_is_detected_by_its_missing_heartbeats(client):
    ask(client, "ping")
    hung = client.transport
    client.heartbeat_timeout_s = 1.0
    try:
        os.kill(hung.pid, signal.SIGSTOP)
        request_id = client.request("ping")
        error = wait_for_error(client)
    finally:
        client.heartbeat_timeout_s = 10.0
    assert error["id"] == request_id
    assert "sent nothing for 1 s" in error["message"] and "restarts on the next Apply" in error["message"]
    assert not hung.alive()  # killed, not left behind
    assert ask(client, "ping")[0]["pong"]


# -- dispatch, in process ----------------------------------------------------------------------------------------


def test_an_operation_missing_from_the_backend_is_named(monkeypatch):
    monkeypatch.setitem(worker.OPERATIONS, "levitate", worker.Operation("medsyn.api", "levitate"))
    job = worker.Job("r1", "levitate", {}, CancelToken())
    with pytest.raises(MedSynError, match="operation levitate is not available in this backend version"):
        worker.Worker(lambda *a, **k: None).execute(job)


def test_an_unexpected_exception_becomes_a_short_error_with_the_traceback_on_stderr(monkeypatch, capsys):
    monkeypatch.setitem(worker.OPERATIONS, "parse", worker.Operation("json", "loads", uses_model=False))
    events = []
    worker.Worker(lambda event, request_id=None, **fields: events.append((event, request_id, fields)))._run(
        worker.Job("r7", "parse", {"s": "{"}, CancelToken()))

    message = ("internal error in parse: JSONDecodeError: Expecting property name enclosed in double quotes: "
               "line 1 column 2 (char 1) (details in the worker log)")
    assert events == [("error", "r7", {"message": message})]
    assert "Traceback" in capsys.readouterr().err


def test_the_model_cache_keeps_the_most_recent_model(tiny, tmp_path):
    other = Path(shutil.copytree(tiny, tmp_path / "other"))
    cache = worker.ModelCache(capacity=1)

    first, cached_first = cache.get(str(tiny), "cpu")
    again, cached_again = cache.get(str(tiny), "cpu")
    cache.get(str(other), "cpu")
    _, cached_after_eviction = cache.get(str(tiny), "cpu")

    assert again is first and (cached_first, cached_again, cached_after_eviction) == (False, True, False)
    assert cache.loads == 3 and cache.names() == ["tiny@cpu"]
