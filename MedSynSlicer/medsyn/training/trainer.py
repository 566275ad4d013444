"""``train(TrainConfig)``: one MedSyn stage (low-res or SR) from a manifest to checkpoints, resumable bit-exactly.

Every random draw comes from generators seeded by (seed, sample position) (samples.py), the weights, EMA, optimizer,
grad scaler and global RNG states are checkpointed, so stopping and resuming changes nothing, and a killed run
continues from its last checkpoint with ``resume=True``.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from tqdm import tqdm

from ..data.dataset import PreparedDataset
from ..data.prepare import prepare_dataset
from ..diffusion.precision import resolve_precision
from ..errors import MedSynError
from ..progress import ProgressCallback, report
from .anchor import load_anchor
from .checkpoint import checkpoint_folder, latest_checkpoint, load_checkpoint, save_checkpoint
from .config import StageSpec, TrainConfig, read_stage_spec
from .ddp import DistributedContext, distributed
from .ema import EMA, STAGE_DEFAULTS
from .init_weights import load_init_weights
from .loss_log import LossLog
from .objective import x0_loss
from .rendered_lowres import RenderedLowres
from .samples import BatchLayout, TrainingSamples

STATE_FORMAT = 1


@dataclass(frozen=True)
class TrainResult:
    """Where the run ended: its last checkpoint, step count, last logged loss and total training time."""

    run_dir: Path
    checkpoint: Path
    steps: int
    loss: float
    wall_time_s: float


def train(config: TrainConfig, callback: Optional[ProgressCallback] = None) -> TrainResult:
    """Train ``config.stage`` for ``config.steps`` optimizer steps in total (resumed steps included)."""
    config.validate()
    spec = read_stage_spec(config.model_config, config.stage)
    with distributed(config.device) as context:
        return _Run(config, spec, context, callback).execute()


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """Mixed precision only on CUDA ("auto" as for sampling: bf16 where supported); CPU trains in float32."""
    resolved = resolve_precision(precision, device)
    if device.type != "cuda" and resolved != "fp32":
        raise MedSynError(f"{resolved} training needs a CUDA GPU; use --precision fp32 or auto on CPU")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[resolved]


@dataclass
class _Parts:
    """What a checkpoint restores: online network, EMA, optimizer, grad scaler, and where training stood."""

    net: torch.nn.Module
    ema: EMA
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    start_step: int = 0
    previous_wall_time: float = 0.0


class _Run:
    """State of one training process; methods follow the order they run in."""

    def __init__(self, config: TrainConfig, spec: StageSpec, context: DistributedContext,
                 callback: Optional[ProgressCallback]) -> None:
        self.config, self.spec, self.context, self.callback = config, spec, context, callback
        self.device = context.device
        self.layout = BatchLayout(config.batch_size, config.grad_accum, context.world_size)
        self.amp_dtype = autocast_dtype(config.precision, self.device)
        self.init_sha256: Optional[str] = None  # of the weights a fine-tune started from; kept across resumes
        self.anchor: Optional[torch.nn.Module] = None
        self.anchor_sha256: Optional[str] = None

    def execute(self) -> TrainResult:
        config = self.config
        resume_from = self._find_resume_checkpoint()
        data = self._prepare_data()
        rendered = None if config.rendered_lowres is None else RenderedLowres(config.rendered_lowres, data.grid)
        samples = TrainingSamples(data, config.stage, config.seed, config.text_dropout, config.crop,
                                  config.lr_noise_max, config.tree_thinning, rendered, config.rendered_share,
                                  config.lowres_mask_dropout)
        parts = self._build(data, resume_from)
        first_step, started = parts.start_step, time.perf_counter()
        checkpoint, loss = self._loop(parts, data, samples, started)
        self.context.barrier()
        return TrainResult(config.out, checkpoint or resume_from, max(first_step, config.steps), loss,
                           parts.previous_wall_time + time.perf_counter() - started)

    def _build(self, data: PreparedDataset, resume_from: Optional[Path]) -> _Parts:
        """Fresh networks from the seed (or from ``init_weights``), or everything restored from the checkpoint to resume
        from."""
        config = self.config
        torch.manual_seed(config.seed)  # identical initial weights on every rank
        net = self.spec.network.build()
        if resume_from is None and config.init_weights is not None:
            self.init_sha256 = load_init_weights(net, config.init_weights, config.stage)
        net = net.to(self.device)
        self._check_text_width(net, data)
        if config.anchor_model is not None:
            self.anchor, self.anchor_sha256 = load_anchor(self.spec, config.anchor_model, config.stage, self.device)
        decay, every = STAGE_DEFAULTS[config.stage]
        parts = _Parts(net, EMA(net, config.ema_decay or decay, config.ema_every or every, config.ema_start),
                       torch.optim.AdamW(net.parameters(), lr=config.lr, betas=config.betas,
                                         weight_decay=config.weight_decay),
                       torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16))
        if resume_from is not None:
            state = load_checkpoint(resume_from, net, parts.ema.model, parts.optimizer)
            self._check_compatible(state, resume_from)
            parts.scaler.load_state_dict(state["grad_scaler"])
            parts.start_step, parts.previous_wall_time = state["step"], state["wall_time_s"]
            self.init_sha256 = state.get("init_weights_sha256")
        return parts

    def _loop(self, parts: _Parts, data: PreparedDataset, samples: TrainingSamples, started: float
              ) -> tuple[Optional[Path], float]:
        """Steps ``parts.start_step`` … ``config.steps``; returns the last checkpoint written and the last loss."""
        config, context = self.config, self.context
        model = context.wrap(parts.net)
        log = LossLog(config.out, parts.start_step) if context.is_main else None
        batches = iter(torch.utils.data.DataLoader(
            samples, batch_size=config.batch_size, num_workers=config.num_workers,
            sampler=self.layout.rank_positions(context.rank, parts.start_step, config.steps)))
        progress = tqdm(total=config.steps, initial=parts.start_step, desc=f"train {config.stage}", unit="step",
                        disable=not context.is_main)
        checkpoint, loss = None, float("nan")
        for step in range(parts.start_step, config.steps):
            loss, cases = self._optimizer_step(model, parts, batches)
            parts.ema.update(parts.net, step)
            done = step + 1
            if log is not None:
                log.add(done, loss, [[data.case_id(int(i)) for i in rank_cases] for rank_cases in cases])
            progress.update(1)
            progress.set_postfix(loss=f"{loss:.4g}")
            report(self.callback, "train", done, config.steps)
            if done % config.checkpoint_every == 0 or done == config.steps:
                elapsed = parts.previous_wall_time + time.perf_counter() - started
                checkpoint = self._checkpoint(done, parts, log, elapsed)
        progress.close()
        if log is not None:
            log.plot(f"MedSyn {config.stage} training")
        return checkpoint, loss

    def _find_resume_checkpoint(self) -> Optional[Path]:
        out = self.config.out
        if self.context.is_main:
            out.mkdir(parents=True, exist_ok=True)
        self.context.barrier()
        found = latest_checkpoint(out)
        if found is not None and not self.config.resume:
            raise MedSynError(f"{out} already holds checkpoints (latest {found.name}); pass --resume to continue "
                              "that run or choose a new --out folder")
        return found

    def _prepare_data(self) -> PreparedDataset:
        """Rank 0 prepares (or reuses) the data folder while the others wait, then every rank reads it."""
        config = self.config
        if self.context.is_main:
            text_encoder = config.text_encoder if config.stage == "lowres" else None
            prepare_dataset(config.data, self.spec.grid, self.spec.hu_window, config.data_folder, text_encoder,
                            config.resample)
        self.context.barrier()
        return PreparedDataset(config.data_folder)

    def _check_text_width(self, net: torch.nn.Module, data: PreparedDataset) -> None:
        if self.config.stage != "lowres":
            return
        width, cond_dim = data.text_features(0).shape[-1], net.null_cond_emb.shape[-1]
        if width != cond_dim:
            raise MedSynError(f"the text encoder gives {width}-wide features but the network's cond_dim is "
                              f"{cond_dim}; use the matching encoder or change cond_dim in the model config")

    def _check_compatible(self, state: dict[str, Any], folder: Path) -> None:
        """A resumed run must train the same thing the same way, or its steps would not continue the old ones."""
        expected = self._identity()
        for key, value in expected.items():
            if state.get(key) != value:
                raise MedSynError(f"cannot resume from {folder}: its {key} {state.get(key)} differs from this run's "
                                  f"{value}; use the original settings or a new --out folder")

    def _identity(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "stage": self.config.stage, "network": self.spec.network.to_dict(),
                "grid": asdict(self.spec.grid), "hu_window": self.spec.hu_window, "seed": self.config.seed,
                "global_batch": self.layout.global_batch}

    def _optimizer_step(self, model: torch.nn.Module, parts: _Parts, batches: Iterator[dict[str, torch.Tensor]]
                        ) -> tuple[float, list[list[int]]]:
        """Accumulate ``grad_accum`` micro-batches, clip, step; returns the rank-mean loss and every rank's cases."""
        config, context = self.config, self.context
        parts.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        cases = []
        null_cond_emb = parts.net.null_cond_emb if config.stage == "lowres" else None
        for micro in range(config.grad_accum):
            batch = {key: value.to(self.device) for key, value in next(batches).items()}
            last = micro == config.grad_accum - 1
            with nullcontext() if last or not context.active else model.no_sync():
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    loss = x0_loss(model, null_cond_emb, batch, config.stage, config.channel_weights,
                                   config.min_snr_gamma, config.structure_ct_weights, config.fluid_ct_weight,
                                   self.spec.hu_window, self.anchor, config.anchor_share)
                parts.scaler.scale(loss / config.grad_accum).backward()
            total += loss.detach() / config.grad_accum
            cases.append(batch["case"])
        parts.scaler.unscale_(parts.optimizer)
        torch.nn.utils.clip_grad_norm_(parts.net.parameters(), config.grad_clip)
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
        return float(context.mean(total)), [c.tolist() for c in context.gather(torch.cat(cases))]

    def _checkpoint(self, step: int, parts: _Parts, log: Optional[LossLog], wall_time: float) -> Path:
        """Rank 0 writes, every rank waits, so no rank runs ahead of a checkpoint that may still fail."""
        if self.context.is_main:
            state = {**self._identity(), "position": step * self.layout.global_batch,
                     "world_size": self.context.world_size, "wall_time_s": wall_time, "loss": log.flush(),
                     "grad_scaler": parts.scaler.state_dict(), "config": self.config.to_dict(),
                     "init_weights_sha256": self.init_sha256, "anchor_sha256": self.anchor_sha256}
            save_checkpoint(self.config.out, step, parts.net, parts.ema.model, parts.optimizer, state)
        self.context.barrier()
        return checkpoint_folder(self.config.out, step)
