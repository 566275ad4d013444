"""Model cards: the JSON that says what a model folder holds and how to run it, validated before any weight is read.

A model folder contains ``model_card.json``, the weight files it names (safetensors) and a ``text_encoder/`` folder.
Everything the pipeline needs that is not a tensor (network configs, steps, encodings, geometry) comes from the card,
so the official MedSyn, the bundled demo and a user's own fine-tune run through the same code.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ..errors import MedSynError

if TYPE_CHECKING:
    from ..geometry import Grid

CARD_FILE = "model_card.json"
FORMAT_VERSION = 1
CHANNELS = ("ct", "lobes", "airway", "vessels")
LOWRES_CT_REDUCTIONS = ("subsample", "block_mean")
LOWRES_MASK_REDUCTIONS = ("subsample", "block_max", "block_max_airway")
LOBE_LABELS = {"LUL": 1, "LLL": 2, "RUL": 3, "RML": 4, "RLL": 5}


@dataclass
class StageCard:
    """One diffusion stage: its network config, weight file and default sampling settings."""

    network: dict[str, Any]
    weights: str
    sha256: str
    steps: int
    guidance_scale: float = 1.0
    combine: str = "x0"


@dataclass
class GridCard:
    """Canonical output geometry: the SR grid (LPS, ITK conventions) and how the low-res grid derives from it.

    ``lowres_ct`` says how the network's low-res CT was made from full resolution: ``"subsample"`` (every
    ``sr_factor``-th voxel, the official data) or ``"block_mean"`` (the mean of each sr_factor³ block, free of
    subsampling's aliasing; a training option, see docs/training-data.md). ``lowres_masks`` says the same for the
    airway and vessel channels: ``"subsample"`` (official) or ``"block_max"`` (inside where any voxel of the block is,
    so a thin tree stays a connected tree at low res instead of aliasing into scattered points) or
    ``"block_max_airway"`` (the airway only: the block-max vessel tree is about 2000 of a 32³ grid's voxels and may
    take a small network's capacity from the CT). Lobe labels are always subsampled: labels neither average nor take a
    maximum.
    """

    lowres_shape_zyx: list[int]
    sr_factor: int
    spacing_xyz: list[float]
    direction_lps: list[float]
    origin_lps: list[float]
    lowres_ct: str = "subsample"
    lowres_masks: str = "subsample"

    @property
    def shape_zyx(self) -> list[int]:
        return [n * self.sr_factor for n in self.lowres_shape_zyx]

    def to_grid(self) -> "Grid":
        """The SR-resolution grid as a :class:`~medsyn.geometry.Grid` (low-res: :meth:`to_lowres_grid`)."""
        from ..geometry import Grid

        return Grid(tuple(self.shape_zyx), tuple(self.spacing_xyz), tuple(self.origin_lps), tuple(self.direction_lps))

    def to_lowres_grid(self) -> "Grid":
        """The low-res grid: every sr_factor-th voxel, or the block centres when the low-res CT is a block mean."""
        return self.to_grid().downsampled(self.sr_factor, block_centres=self.lowres_ct == "block_mean")


@dataclass
class ModelCard:
    """Everything about a model except its tensors."""

    name: str
    description: str
    license: str
    intended_use: str
    lowres: StageCard
    sr: Optional[StageCard]
    text_encoder: str
    grid: GridCard
    hu_window: list[float] = field(default_factory=lambda: [-1024.0, 600.0])
    channels: list[str] = field(default_factory=lambda: list(CHANNELS))
    lobe_labels: dict[str, int] = field(default_factory=lambda: dict(LOBE_LABELS))
    text_tokens: int = 192
    schedule: dict[str, Any] = field(default_factory=lambda: {
        "type": "cosine_continuous", "num_timesteps": 1000, "prediction": "x0", "sampler": "ddim", "clip": "static"})
    resources: list[dict[str, Any]] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "model card") -> "ModelCard":
        try:
            data = dict(data)
            data["lowres"] = StageCard(**data["lowres"])
            data["sr"] = StageCard(**data["sr"]) if data.get("sr") else None
            data["grid"] = GridCard(**data["grid"])
            card = cls(**data)
        except (KeyError, TypeError) as exc:
            raise MedSynError(f"{source} is not a valid model card ({exc}); regenerate it with medsyn") from exc
        card.validate(source)
        return card

    def validate(self, source: str = "model card") -> None:
        """Check the fields the pipeline relies on; raise a one-line MedSynError naming the first problem."""
        problems = []
        if self.format_version != FORMAT_VERSION:
            problems.append(f"format_version {self.format_version} is not supported (expected {FORMAT_VERSION})")
        if not self.name.strip():
            problems.append("name is empty")
        if tuple(self.channels) != CHANNELS:
            problems.append(f"channels must be {list(CHANNELS)}")
        if self.lobe_labels != LOBE_LABELS:
            problems.append(f"lobe_labels must be {LOBE_LABELS}")
        if len(self.hu_window) != 2 or self.hu_window[0] >= self.hu_window[1]:
            problems.append("hu_window must be [low, high] with low < high")
        grid = self.grid
        if len(grid.lowres_shape_zyx) != 3 or min(grid.lowres_shape_zyx) < 1:
            problems.append("grid.lowres_shape_zyx must be three positive sizes")
        if grid.sr_factor < 1 or len(grid.spacing_xyz) != 3 or min(grid.spacing_xyz) <= 0:
            problems.append("grid.sr_factor and grid.spacing_xyz must be positive")
        if len(grid.direction_lps) != 9 or len(grid.origin_lps) != 3:
            problems.append("grid.direction_lps needs 9 numbers and grid.origin_lps 3")
        if grid.lowres_ct not in LOWRES_CT_REDUCTIONS:
            problems.append(f"grid.lowres_ct must be one of {list(LOWRES_CT_REDUCTIONS)}")
        if grid.lowres_masks not in LOWRES_MASK_REDUCTIONS:
            problems.append(f"grid.lowres_masks must be one of {list(LOWRES_MASK_REDUCTIONS)}")
        for stage_name, stage in (("lowres", self.lowres), ("sr", self.sr)):
            if stage is None:
                continue
            if stage.steps < 1 or stage.steps > int(self.schedule.get("num_timesteps", 1000)):
                problems.append(f"{stage_name}.steps must be in 1..num_timesteps")
            if len(stage.sha256) != 64:
                problems.append(f"{stage_name}.sha256 must be a 64-character hex digest")
            if stage.combine not in ("x0", "eps_batched"):
                problems.append(f"{stage_name}.combine must be 'x0' or 'eps_batched'")
        if problems:
            raise MedSynError(f"{source} failed validation: {problems[0]}")


def load_card(folder: Path) -> ModelCard:
    """Read and validate ``folder/model_card.json``."""
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        raise MedSynError(f"no {CARD_FILE} in {folder}; is this a MedSyn model folder?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise MedSynError(f"{path} is not readable JSON ({exc})") from exc
    return ModelCard.from_dict(data, source=str(path))


def save_card(card: ModelCard, folder: Path) -> Path:
    """Validate and write the card (atomically, so a crash never leaves half a card)."""
    from ..io.provenance import write_json_atomic

    card.validate()
    path = Path(folder) / CARD_FILE
    write_json_atomic(path, card.to_dict())
    return path
