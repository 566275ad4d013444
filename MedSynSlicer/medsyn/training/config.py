"""What to train: ``TrainConfig`` (the ``medsyn train`` options) and the network/grid description it points at."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Optional

from ..codec import DEFAULT_HU_WINDOW
from ..data.transforms import RESAMPLE_MODES
from ..diffusion.precision import PRECISIONS
from ..errors import MedSynError
from ..models.card import CARD_FILE, GridCard
from ..networks.config import LowResConfig, NetworkConfig, SRConfig

STAGES = {"lowres": LowResConfig, "sr": SRConfig}


@dataclass
class TrainConfig:
    """One training run of one stage; defaults follow the paper / official scripts (reference §1-§3, §7)."""

    stage: str  # "lowres" | "sr"
    data: Path  # manifest (JSONL or CSV), see docs/training-data.md
    out: Path  # run folder: checkpoints/, loss.jsonl, loss.png, data/
    model_config: Path  # model card (or template) JSON / model folder, or {"network", "grid"[, "hu_window"]} JSON
    text_encoder: Optional[Path] = None  # local text encoder folder; required for the low-res stage
    steps: int = 40_000  # total optimizer steps (the paper converged after 40k)
    batch_size: int = 1  # per process and micro-batch
    grad_accum: int = 1
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: Optional[float] = None  # None: 0.999 (low-res) / 0.995 (SR)
    ema_every: Optional[int] = None  # None: every step (low-res) / every 10 steps (SR)
    ema_start: int = 10_000  # EMA is a copy of the online weights before this step
    text_dropout: float = 0.1  # low-res: share of samples trained with the learned null text embedding
    channel_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)  # loss weight of CT, lobes, airway,
    # vessels: thin airway/vessel trees are ~1 % of a small grid's voxels, and with equal weights a small model learns
    # to leave their channels empty; raising theirs (e.g. 1,1,4,4) trades a little CT loss for visible trees
    structure_ct_weights: tuple[float, float] = (1.0, 1.0)  # CT loss weight inside the target's airway, vessels:
    # their lumens and blood are a fraction of a percent of the CT's voxels, so a small SR network learns to copy the
    # blurred low-res CT there and ignore the channels it is given; raising the airway's (e.g. 10,1) teaches it to
    # carve the lumen wherever the airway channel says (what anatomy-conditioned editing relies on)
    fluid_ct_weight: float = 1.0  # CT loss weight where the target has pleural-fluid density outside the lung lobes:
    # fluid (8 HU) and the muscle or liver beside it (50-58 HU) differ by 0.05 in model space, so a small low-res
    # network trained with the plain MSE may fill an effusion with tissue density, which no reader calls fluid
    min_snr_gamma: Optional[float] = None  # None: the official uniform x0 MSE over t. γ weights each sample by
    # min(SNR(t), γ)/γ (Min-SNR, Hang et al. 2023): high-noise steps count less, so a small model spends its capacity
    # on the low-noise steps that decide the final intensities
    crop: Optional[tuple[int, ...]] = None  # SR crop (H, W) full depth or (D, H, W); None: official 72×72 scaled
    # to the grid. Whole axial planes (D, H, W = the grid's) give GroupNorm the statistics of a whole-volume run
    lr_noise_max: float = 0.4  # SR: x_lr ← (1−a)·x_lr + a·N(0,1), a ~ U(0, lr_noise_max)
    tree_thinning: float = 0.0  # SR on block_max grids: a low-res tree voxel needs a share of its block > τ ~ U(0, max)
    rendered_lowres: Optional[Path] = None  # SR: ``medsyn render-lowres`` folder, the low-res network's rendering of
    # each case; a small SR network trained only on true low-res volumes does not recognise the softer, thinner trees
    # it is given at inference (see rendered_lowres.py)
    rendered_share: float = 0.5  # SR with rendered_lowres: share of samples conditioned on the rendering
    lowres_mask_dropout: tuple[float, float, float] = (0.0, 0.0, 0.0)  # SR: chance per sample that the conditioning's
    # lobe, airway, vessel channel is blanked to background, so the SR stage learns to draw that structure from the
    # CT when a low-res network leaves its channel empty (the demo low-res network never commits to thin trees)
    resample: str = "spacing"  # "spacing" (card spacing + centred pad/crop) or "resize" (whole volume to the grid)
    seed: int = 0
    resume: bool = False
    checkpoint_every: int = 1000
    device: str = "auto"
    precision: str = "auto"  # "auto": bf16 (fp16 without bf16 support) on CUDA, fp32 on CPU
    num_workers: int = 0  # DataLoader worker processes
    data_cache: Optional[Path] = None  # prepared data folder; None: <out>/data
    init_weights: Optional[Path] = None  # fine-tune: start from this weight file or model folder (ignored on resume)
    anchor_model: Optional[Path] = None  # fine-tune: frozen network (weight file or model folder) whose x̂0 is the
    # target for the channels in anchor_share, so the fine-tune keeps what it does there (see anchor.py)
    anchor_share: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # per channel (CT, lobes, airway,
    # vessels): how far the target moves from the data to the anchor's x̂0 (1 = the anchor's prediction alone)

    @classmethod
    def from_cli_args(cls, **kwargs: Any) -> "TrainConfig":
        """Build from CLI values: None means "use the default", ``crop`` may be "HxW" or "DxHxW" and
        ``channel_weights`` "1,1,4,4", ``structure_ct_weights`` "10,1", ``lowres_mask_dropout`` "0,0.5,0",
        ``anchor_share`` "1,1,0,1", paths may be strings."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise MedSynError(f"unknown training option(s) {unknown}; allowed: {sorted(known)}")
        values = {key: value for key, value in kwargs.items() if value is not None}
        for key in ("data", "out", "model_config", "text_encoder", "data_cache", "init_weights", "rendered_lowres",
                    "anchor_model"):
            if key in values:
                values[key] = Path(values[key])
        if isinstance(values.get("crop"), str):
            values["crop"] = parse_crop(values["crop"])
        for key, (names, what) in NUMBER_LISTS.items():
            if isinstance(values.get(key), str):
                values[key] = parse_numbers(values[key], names, what)
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        if self.stage not in STAGES:
            raise MedSynError(f"unknown stage {self.stage!r}; use 'lowres' or 'sr'")
        if self.stage == "lowres" and self.text_encoder is None:
            raise MedSynError("the low-res stage is text-conditioned; pass --text-encoder with a text encoder folder")
        for name in ("steps", "batch_size", "grad_accum", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise MedSynError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.grad_clip <= 0:
            raise MedSynError("lr and grad_clip must be positive")
        if not all(0.0 <= value <= 1.0 for value in (self.text_dropout, self.lr_noise_max, self.tree_thinning,
                                                     self.rendered_share)):
            raise MedSynError("text_dropout, lr_noise_max, tree_thinning and rendered_share must lie in [0, 1]")
        if self.rendered_lowres is not None and self.stage != "sr":
            raise MedSynError("rendered_lowres conditions the SR stage; drop it for the low-res stage")
        if len(self.lowres_mask_dropout) != 3 or not all(0.0 <= p <= 1.0 for p in self.lowres_mask_dropout):
            raise MedSynError(f"lowres_mask_dropout {self.lowres_mask_dropout} must be 3 chances in [0, 1] "
                              "(lobes, airway, vessels)")
        if any(self.lowres_mask_dropout) and self.stage != "sr":
            raise MedSynError("lowres_mask_dropout blanks the SR stage's low-res condition; drop it for the low-res "
                              "stage")
        if len(self.channel_weights) != 4 or min(self.channel_weights) < 0 or max(self.channel_weights) <= 0:
            raise MedSynError(f"channel_weights {self.channel_weights} must be 4 non-negative numbers, not all 0")
        if len(self.structure_ct_weights) != 2 or min(self.structure_ct_weights) <= 0:
            raise MedSynError(f"structure_ct_weights {self.structure_ct_weights} must be 2 positive numbers "
                              "(airway, vessels)")
        if self.fluid_ct_weight <= 0:
            raise MedSynError(f"fluid_ct_weight must be positive (1 = the official loss), got {self.fluid_ct_weight}")
        if self.min_snr_gamma is not None and self.min_snr_gamma <= 0:
            raise MedSynError(f"min_snr_gamma must be positive (e.g. 5), got {self.min_snr_gamma}")
        if len(self.anchor_share) != 4 or not all(0.0 <= share <= 1.0 for share in self.anchor_share):
            raise MedSynError(f"anchor_share {self.anchor_share} must be 4 shares in [0, 1] (CT, lobes, airway, "
                              "vessels)")
        if (self.anchor_model is None) != (not any(self.anchor_share)):
            raise MedSynError("anchor_model and anchor_share go together: pass --anchor-model with a model folder "
                              "or weight file and --anchor-share with at least one non-zero share (e.g. 1,1,0,1)")
        if self.precision not in PRECISIONS:
            raise MedSynError(f"unknown precision {self.precision!r}; use one of {PRECISIONS}")
        if self.resample not in RESAMPLE_MODES:
            raise MedSynError(f"unknown resample mode {self.resample!r}; use one of {RESAMPLE_MODES}")

    @property
    def data_folder(self) -> Path:
        return self.data_cache or self.out / "data"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (paths as strings)."""
        return {key: str(value) if isinstance(value, Path) else value for key, value in asdict(self).items()}


def parse_crop(text: str) -> tuple[int, ...]:
    """"72x72" → (72, 72) (in-plane, full depth); "16x128x128" → (16, 128, 128) (depth × height × width)."""
    try:
        sizes = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        sizes = ()
    if len(sizes) not in (2, 3):
        raise MedSynError(f"crop {text!r} must look like HxW or DxHxW, e.g. 72x72 or 16x128x128")
    return sizes


NUMBER_LISTS = {"channel_weights": (("CT", "lobes", "airway", "vessels"), "channel weights"),
                "structure_ct_weights": (("airway", "vessels"), "structure CT weights"),
                "lowres_mask_dropout": (("lobes", "airway", "vessels"), "low-res mask dropout"),
                "anchor_share": (("CT", "lobes", "airway", "vessels"), "anchor shares")}


def parse_numbers(text: str, names: tuple[str, ...], what: str = "weights") -> tuple[float, ...]:
    """"1,1,4,4" → (1.0, 1.0, 4.0, 4.0): one number per name, comma-separated (weights, a noise range)."""
    example = ",".join(["1"] * len(names))
    try:
        weights = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise MedSynError(f"{what} {text!r} must look like {example} ({', '.join(names)})") from None
    if len(weights) != len(names):
        raise MedSynError(f"{what} {text!r} must have {len(names)} numbers ({', '.join(names)})")
    return weights


@dataclass(frozen=True)
class StageSpec:
    """The network to train plus the grid and HU window its data are prepared on."""

    network: NetworkConfig
    grid: GridCard
    hu_window: list[float]


def read_stage_spec(path: Path, stage: str) -> StageSpec:
    """Network, grid and HU window from a model card (template) or a ``{"network", "grid"[, "hu_window"]}`` JSON."""
    path = Path(path)
    if path.is_dir():
        path = path / CARD_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise MedSynError(f"cannot read model config {path} ({exc}); pass a model card or network config JSON") \
            from exc
    if stage in data:  # a model card: one entry per stage
        if not data[stage]:
            raise MedSynError(f"{path} has no '{stage}' stage; add its network config")
        network = data[stage].get("network")
    else:
        network = data.get("network")
    if network is None or "grid" not in data:
        raise MedSynError(f"{path} needs a 'grid' entry and a '{stage}.network' (model card) or 'network' entry")
    try:
        grid = GridCard(**data["grid"])
    except TypeError as exc:
        raise MedSynError(f"{path}: invalid grid entry ({exc})") from exc
    hu_window = [float(v) for v in data.get("hu_window", DEFAULT_HU_WINDOW)]
    return StageSpec(STAGES[stage].from_dict(network), grid, hu_window)
