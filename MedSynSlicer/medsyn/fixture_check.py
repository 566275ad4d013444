"""``medsyn check-fixture DIR``: compare our networks and sampler with tensors recorded from the official MedSyn code.

Everything is derived from the fixture's ``manifest.json`` and tensor shapes (network sizes, batch, volume shape, step
count), so any fixture in the medsyn_official_tiny format can be checked. Tolerances follow its ``tolerance_advice``.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from .diffusion.ddim import ddim_sample, ddim_step, predict_x0
from .diffusion.guidance import LowResDenoiser, SRDenoiser
from .diffusion.known_region import KnownRegion
from .diffusion.schedule import NUM_TIMESTEPS, ddim_delta, ddim_time_grid
from .errors import MedSynError
from .models.weights import load_state_dict_strict, normalize_official_state_dict, read_weight_file
from .networks.config import OFFICIAL_LOWRES, OFFICIAL_SR, count_parameters, from_official_kwargs
from .networks.unet_levels import last_module_of_up_level

FORWARD_ATOL = 1e-4  # network outputs and teacher-forced DDIM tensors
INTERMEDIATE_RTOL = 3e-5  # intermediates, relative to the recorded abs-max (≈ FORWARD_ATOL on outputs of |x|~3)
SAMPLE_ATOL = 1e-3  # free-running DDIM samples (CFG amplifies per-step rounding)

# DDIM run names: <family>[_<order>][_cs<scale>][_fix<channels>], e.g. eval_cs1, cg_cs3_fix12, sr_eval.
_RUN_NAME = re.compile(
    r"^(?P<family>eval|cg|sr)(?:_(?P<order>eval|train))?(?:_cs(?P<scale>\d+))?(?:_fix(?P<fix>\d+))?$")
# family -> (network, default up order, CFG combination): "cg" is conditional_generalization.py's batched ε-space CFG.
_RUN_FAMILIES = {"eval": ("lowres", "eval", "x0"), "cg": ("lowres", "train", "eps_batched"), "sr": ("sr", "eval", "x0")}
_FORWARD_OUTPUT = re.compile(r"^out_(?P<order>eval|train)(?:_(?P<variant>cond|null|cfg(?P<scale>\d+)))?$")


@dataclass(frozen=True)
class CheckResult:
    """One compared quantity: the largest absolute difference and the tolerance it must not exceed."""

    name: str
    max_abs: float
    tol: float

    @property
    def passed(self) -> bool:
        return self.max_abs <= self.tol  # NaN fails

    def line(self) -> str:
        return f"{self.name:<56} {self.max_abs:10.3e} {self.tol:9.1e}  {'OK' if self.passed else 'FAIL'}"


@dataclass
class FixtureReport:
    """All checks of one fixture folder."""

    folder: Path
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed]

    def compare(self, name: str, actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
        max_abs = (actual - expected).abs().max().item() if actual.shape == expected.shape else math.inf
        self.results.append(CheckResult(name, max_abs, tol))


class _Fixture:
    """The manifest plus lazily read tensor files of one fixture folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        try:
            self.manifest = json.loads((folder / "manifest.json").read_text())
        except (OSError, ValueError) as exc:
            raise MedSynError(f"{folder} has no readable manifest.json; pass a MedSyn fixture folder") from exc
        self._files: dict[str, dict[str, torch.Tensor]] = {}

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        if name not in self._files:
            self._files[name] = read_weight_file(self.folder / name)
        return self._files[name]

    def has(self, name: str) -> bool:
        return name in self.manifest.get("files", {})


def _layout_mismatches(net: nn.Module, expected: dict[str, list[int]]) -> int:
    layout = {key: list(value.shape) for key, value in net.state_dict().items()}
    return sum(layout.get(key) != expected.get(key) for key in set(layout) | set(expected))


def _flat(net: nn.Module) -> torch.Tensor:
    return torch.cat([value.flatten() for value in net.state_dict().values()])


def _load_networks(fixture: _Fixture, report: FixtureReport) -> dict[str, nn.Module]:
    """Build each recorded network from its official kwargs, check its key layout and parameter count, and strictly
    load every ``<kind>_state_dict*`` file (plain and wrapped layouts must give identical weights)."""
    nets = {}
    for kind, model in fixture.manifest["models"].items():
        if "constructor_kwargs" not in model:  # e.g. full_size_official_reference
            continue
        config = from_official_kwargs(kind, model["constructor_kwargs"])
        reference = config.build()
        report.results.append(CheckResult(f"{kind}.state_dict layout (wrong keys)",
                                          _layout_mismatches(reference, model["state_dict_keys_and_shapes"]), 0))
        report.results.append(CheckResult(f"{kind}.unique parameters (difference)",
                                          abs(count_parameters(reference) - model["unique_parameter_count"]), 0))
        weight_files = sorted(name for name in fixture.manifest["files"] if name.startswith(f"{kind}_state_dict"))
        if not weight_files:
            raise MedSynError(f"the fixture lists no {kind}_state_dict* file; it cannot be checked")
        for index, name in enumerate(weight_files):
            state, _ = normalize_official_state_dict(fixture.tensors(name), kind)
            net = reference if index == 0 else config.build()
            load_state_dict_strict(net, state, source=name)
            if index > 0:  # every layout of the same weights must load to the identical network
                report.compare(f"{name} (loaded weights)", _flat(net), _flat(reference), 0.0)
        nets[kind] = reference.eval()
    return nets


def _check_full_size_counts(fixture: _Fixture, report: FixtureReport) -> None:
    """Parameter counts of the released configurations, built on the meta device (no memory, no init)."""
    reference = fixture.manifest["models"].get("full_size_official_reference", {})
    for kind, config in (("lowres", OFFICIAL_LOWRES), ("sr", OFFICIAL_SR)):
        if kind in reference:
            with torch.device("meta"):
                count = count_parameters(config.build())
            report.results.append(CheckResult(f"{kind}.official full-size parameters (difference)",
                                              abs(count - reference[kind]["unique_parameter_count"]), 0))


def _probe(net: nn.Module, name: str) -> tuple[nn.Module, bool]:
    """The module whose output (or, when the flag is set, whose input) is the recorded intermediate ``name``."""
    if name == "init_conv_out":
        return (net.init_conv0 if hasattr(net, "init_conv0") else net.init_conv), False
    if name == "time_emb":
        return net.time_mlp, False
    if name == "mid_in":
        return net.mid_block1, True
    if match := re.fullmatch(r"skip(\d+)", name):
        return net.downs[int(match[1])][1], False
    if match := re.fullmatch(r"up(\d+)_out", name):
        return last_module_of_up_level(net.ups[int(match[1])], net.up_order), False
    try:
        return net.get_submodule(name), False
    except AttributeError as exc:
        raise MedSynError(f"fixture intermediate {name!r} names no part of {type(net).__name__}") from exc


def _run_with_probes(net: nn.Module, names: list[str], forward: Callable[[], torch.Tensor]
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run ``forward`` while hooks capture the named intermediates."""
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        module, is_input = _probe(net, name)
        if is_input:
            handles.append(module.register_forward_pre_hook(
                lambda _module, args, name=name: captured.__setitem__(name, args[0])))
        else:
            handles.append(module.register_forward_hook(
                lambda _module, _args, out, name=name: captured.__setitem__(name, out)))
    try:
        return forward(), captured
    finally:
        for handle in handles:
            handle.remove()


def _forward_call(kind: str, net: nn.Module, io: dict[str, torch.Tensor], output: re.Match
                  ) -> Callable[[], torch.Tensor]:
    """The call that produced a recorded ``out_*`` tensor (cond, null, or CFG combined in x0 space)."""
    if kind == "sr":
        return lambda: SRDenoiser(net, io["x_lr"])(io["x_t"], io["t"])
    cond = None if output["variant"] == "null" else io["cond"]
    scale = float(output["scale"] or 1)
    return lambda: LowResDenoiser(net, cond, scale, combine="x0")(io["x"], io["t"])


def _check_forwards(fixture: _Fixture, nets: dict[str, nn.Module], report: FixtureReport) -> None:
    """Every ``out_<order>[_variant]`` of ``<kind>_io.safetensors`` plus its ``<order>[_variant].*`` intermediates."""
    for kind, net in nets.items():
        if not fixture.has(f"{kind}_io.safetensors"):
            continue
        io = fixture.tensors(f"{kind}_io.safetensors")
        for key in sorted(key for key in io if _FORWARD_OUTPUT.match(key)):
            output = _FORWARD_OUTPUT.match(key)
            prefix = key[len("out_"):]
            names = sorted(k.split(".", 1)[1] for k in io if k.startswith(prefix + "."))
            net.up_order = output["order"]
            out, captured = _run_with_probes(net, names, _forward_call(kind, net, io, output))
            report.compare(f"{kind}.{key}", out, io[key], FORWARD_ATOL)
            for name in names:
                expected = io[f"{prefix}.{name}"]
                tol = INTERMEDIATE_RTOL * max(expected.abs().max().item(), 1.0)
                report.compare(f"{kind}.{prefix}.{name}", captured.get(name, torch.tensor(math.nan)), expected, tol)


@dataclass(frozen=True)
class _RunSpec:
    """How an official DDIM run was made, decoded from its name."""

    kind: str
    up_order: str
    combine: str
    scale: float
    fixed_channels: list[int]

    @classmethod
    def parse(cls, run: str) -> "_RunSpec":
        match = _RUN_NAME.match(run)
        if match is None:
            raise MedSynError(f"cannot interpret DDIM run {run!r}: expected <eval|cg|sr>[_eval|_train][_cs<scale>]"
                              "[_fix<channels>]")
        kind, up_order, combine = _RUN_FAMILIES[match["family"]]
        return cls(kind, match["order"] or up_order, combine, float(match["scale"] or 1),
                   [int(c) for c in match["fix"] or ""])

    def denoiser(self, net: nn.Module, trace: dict[str, torch.Tensor]) -> Callable:
        if self.kind == "sr":
            return SRDenoiser(net, trace["sr_x_lr"])
        return LowResDenoiser(net, trace["cond"], self.scale, combine=self.combine)

    def known(self, trace: dict[str, torch.Tensor]) -> Optional[KnownRegion]:
        return KnownRegion.channels(trace["known"], self.fixed_channels) if self.fixed_channels else None


def _teacher_forced(run: str, denoiser: Callable, net: nn.Module, known: Optional[KnownRegion], grid: list[int],
                    delta: int, trace: dict[str, torch.Tensor], report: FixtureReport) -> None:
    """Feed each recorded x_t[i]; compare the raw network outputs, x̂0[i] and the next state x_t[i+1]."""
    x_t = trace[f"{run}.x_t"]
    branches = [name for name in ("net_out_cond", "net_out_null") if f"{run}.{name}" in trace]
    ours: dict[str, list[torch.Tensor]] = {name: [] for name in [*branches, "x0_hat", "x_t"]}
    calls: list[torch.Tensor] = []
    hook = net.register_forward_hook(lambda _module, _args, out: calls.append(out))
    try:
        for i, t in enumerate(grid):
            calls.clear()
            x0 = predict_x0(denoiser, x_t[i], t, known)
            for name, out in zip(branches, torch.cat(calls).chunk(len(branches))):
                ours[name].append(out)
            ours["x0_hat"].append(x0)
            ours["x_t"].append(x0 if t < delta else ddim_step(x_t[i], x0, t, t - delta))
    finally:
        hook.remove()
    for name, values in ours.items():
        expected = x_t[1:] if name == "x_t" else trace[f"{run}.{name}"]
        report.compare(f"{run}.{name} (teacher-forced)", torch.stack(values), expected, FORWARD_ATOL)


def _check_ddim(fixture: _Fixture, nets: dict[str, nn.Module], report: FixtureReport) -> None:
    """Every run of ``ddim_trace.safetensors``: time grid, teacher-forced steps, free-running final sample."""
    if not fixture.has("ddim_trace.safetensors"):
        return
    trace = fixture.tensors("ddim_trace.safetensors")
    for run in sorted(key[: -len(".x_t")] for key in trace if key.endswith(".x_t")):
        spec = _RunSpec.parse(run)
        if spec.kind not in nets:
            raise MedSynError(f"DDIM run {run!r} needs the {spec.kind} network, which the manifest does not describe")
        net = nets[spec.kind]
        net.up_order = spec.up_order
        step_t, step_t_minus = trace[f"{run}.step_t"][:, 0], trace[f"{run}.step_t_minus"][:, 0]
        grid, delta = [int(t) for t in step_t.tolist()], int(step_t[0] - step_t_minus[0])
        steps = NUM_TIMESTEPS // delta
        grid_ok = ddim_time_grid(steps) == grid and ddim_delta(steps) == delta
        report.results.append(CheckResult(f"{run}.time_grid ({steps} steps)", 0.0 if grid_ok else math.inf, 0.0))
        if not grid_ok:
            continue
        denoiser, known = spec.denoiser(net, trace), spec.known(trace)
        _teacher_forced(run, denoiser, net, known, grid, delta, trace, report)
        sample = ddim_sample(denoiser, trace[f"{run}.x_t"][0], steps, known=known)
        report.compare(f"{run}.sample (free-running)", (sample + 1) / 2, trace[f"{run}.sample"], SAMPLE_ATOL)


def check_fixture(folder: Path | str) -> FixtureReport:
    """Run every check the fixture in ``folder`` supports."""
    fixture = _Fixture(Path(folder))
    report = FixtureReport(fixture.folder)
    try:
        with torch.no_grad():
            _check_full_size_counts(fixture, report)
            nets = _load_networks(fixture, report)
            _check_forwards(fixture, nets, report)
            _check_ddim(fixture, nets, report)
    except KeyError as exc:
        raise MedSynError(f"{fixture.folder} is incomplete: manifest.json or a tensor file lacks {exc}") from exc
    return report


def run_check_fixture(folder: Path, verbose: bool = True) -> int:
    """CLI body: print one line per check (only failures unless ``verbose``) and return the exit code (0 = conforms)."""
    report = check_fixture(folder)
    if verbose:
        print(f"{'check':<56} {'max_abs':>10} {'tol':>9}  status")
    for result in report.results:
        if verbose or not result.passed:
            print(result.line())
    verdict = "conforms" if report.ok else "does NOT conform"
    print(f"{len(report.results) - len(report.failures)}/{len(report.results)} checks passed: {folder} {verdict}")
    return 0 if report.ok else 1
