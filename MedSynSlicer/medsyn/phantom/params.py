"""What one phantom patient looks like: body habitus and findings, without noise or texture (those come from a seed).

The same ``PhantomParams`` drives the image (generator) and the text (reports), so every report sentence is true of its
image. Positions of nodules and bullae are stored as a number in [0, 1) that picks one admissible place in the lobe, so
the description stays independent of the grid.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from medsyn.errors import MedSynError

LOBES: tuple[str, ...] = ("LUL", "LLL", "RUL", "RML", "RLL")  # label = index + 1, the reference's lobe order
LOBE_LABEL: dict[str, int] = {name: index + 1 for index, name in enumerate(LOBES)}
EFFUSION_SIDES = ("none", "left", "right", "bilateral")
SEVERITIES = ("none", "small", "moderate", "large")
EMPHYSEMA_GRADES = ("none", "mild", "moderate", "severe")
# Target ranges, chosen so "large" fills about half a hemithorax of the phantom, "small" a posterior rim.
EFFUSION_ML_RANGE = {"small": (80.0, 200.0), "moderate": (300.0, 500.0), "large": (650.0, 900.0)}
LAA950_RANGE = {"none": (0.0, 0.0), "mild": (5.0, 9.0), "moderate": (12.0, 18.0), "severe": (22.0, 30.0)}
NORMAL_CTR = (0.42, 0.48)
ENLARGED_CTR = (0.55, 0.65)
CARDIOMEGALY_CTR = 0.5  # the radiological threshold


@dataclass(frozen=True)
class Lesion:
    """A nodule or bulla: a sphere of ``diameter_mm`` in ``lobe``; ``position`` in [0, 1) picks where."""

    lobe: str
    diameter_mm: float
    position: float

    def __post_init__(self) -> None:
        if self.lobe not in LOBE_LABEL:
            raise MedSynError(f"lesion lobe {self.lobe!r} is not one of {', '.join(LOBES)}")
        if not 2.0 <= self.diameter_mm <= 60.0:
            raise MedSynError(f"lesion diameter {self.diameter_mm} mm is outside 2..60 mm")
        if not 0.0 <= self.position < 1.0:
            raise MedSynError(f"lesion position {self.position} must lie in [0, 1)")


@dataclass(frozen=True)
class PhantomParams:
    """Seed-independent description of one patient; sizes in mm, volumes in mL, %LAA-950 in percent."""

    body_width_mm: float = 300.0
    body_depth_mm: float = 212.0
    fat_mm: float = 14.0
    lung_height_mm: float = 165.0  # apex to the top of the right hemidiaphragm
    effusion_side: str = "none"
    effusion_severity: str = "none"
    effusion_ml: float = 0.0  # per affected side
    ctr: float = 0.45
    emphysema: str = "none"
    laa950_target: float = 0.0
    bullae: tuple[Lesion, ...] = ()
    consolidation: tuple[str, ...] = ()
    nodules: tuple[Lesion, ...] = ()

    def __post_init__(self) -> None:
        _check_choice("effusion_side", self.effusion_side, EFFUSION_SIDES)
        _check_choice("effusion_severity", self.effusion_severity, SEVERITIES)
        _check_choice("emphysema", self.emphysema, EMPHYSEMA_GRADES)
        if (self.effusion_side == "none") != (self.effusion_severity == "none"):
            raise MedSynError("effusion_side and effusion_severity must both be 'none' or both be set")
        if (self.effusion_side == "none") != (self.effusion_ml == 0.0):
            raise MedSynError("effusion_ml must be 0 without an effusion and positive with one")
        for lobe in self.consolidation:
            _check_choice("consolidation lobe", lobe, LOBES)
        if not 0.35 <= self.ctr <= 0.7:
            raise MedSynError(f"cardiothoracic ratio {self.ctr} is outside 0.35..0.70")
        if not 0.0 <= self.laa950_target <= 40.0:
            raise MedSynError(f"%LAA-950 target {self.laa950_target} is outside 0..40")
        if (self.emphysema == "none") != (self.laa950_target == 0.0):
            raise MedSynError("laa950_target must be 0 without emphysema and positive with it")
        if not (200.0 <= self.body_width_mm <= 320.0 and 160.0 <= self.body_depth_mm <= 240.0
                and 4.0 <= self.fat_mm <= 30.0 and 140.0 <= self.lung_height_mm <= 185.0):
            raise MedSynError("body size out of range: width 200..320, depth 160..240, fat 4..30, "
                              "lung height 140..185 mm")

    @property
    def effusion_sides(self) -> tuple[str, ...]:
        """The sides holding fluid: (), ('left',), ('right',) or ('left', 'right')."""
        return {"none": (), "left": ("left",), "right": ("right",), "bilateral": ("left", "right")}[self.effusion_side]

    @property
    def cardiomegaly(self) -> bool:
        return self.ctr >= CARDIOMEGALY_CTR

    @property
    def is_normal(self) -> bool:
        return not (self.effusion_sides or self.cardiomegaly or self.emphysema != "none" or self.bullae
                    or self.consolidation or self.nodules)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (lesions become dicts), as stored in each case's params.json."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PhantomParams":
        """Inverse of ``to_dict``; unknown keys and malformed lesions are reported by name."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise MedSynError(f"unknown phantom parameter(s) {', '.join(sorted(unknown))}")
        values = dict(data)
        for key in ("bullae", "nodules"):
            try:
                values[key] = tuple(Lesion(**lesion) for lesion in values.get(key, ()))
            except TypeError:
                raise MedSynError(f"each of {key} needs exactly lobe, diameter_mm and position") from None
        values["consolidation"] = tuple(values.get("consolidation", ()))
        return cls(**values)


def sample_params(rng: np.random.Generator, findings_prob: float = 0.3) -> PhantomParams:
    """A random patient: each of the five findings is present with ``findings_prob``, so (1-p)^5 of cases are normal."""
    if not 0.0 <= findings_prob <= 1.0:
        raise MedSynError(f"findings_prob {findings_prob} must lie in [0, 1]")
    present = rng.random(5) < findings_prob
    values: dict[str, Any] = dict(
        body_width_mm=float(rng.uniform(280.0, 312.0)),
        body_depth_mm=float(rng.uniform(195.0, 225.0)),
        fat_mm=float(rng.uniform(8.0, 22.0)),
        lung_height_mm=float(rng.uniform(155.0, 175.0)),
        ctr=float(rng.uniform(*(ENLARGED_CTR if present[1] else NORMAL_CTR))),
    )
    if present[0]:
        severity = str(rng.choice(SEVERITIES[1:]))
        values.update(effusion_side=str(rng.choice(EFFUSION_SIDES[1:])), effusion_severity=severity,
                      effusion_ml=float(rng.uniform(*EFFUSION_ML_RANGE[severity])))
    if present[2]:
        grade = str(rng.choice(EMPHYSEMA_GRADES[1:]))
        bulla_count = int(rng.integers(1, 4)) if rng.random() < 0.5 else 0
        values.update(emphysema=grade, laa950_target=float(rng.uniform(*LAA950_RANGE[grade])),
                      bullae=tuple(_lesion(rng, ("LUL", "RUL"), (15.0, 40.0)) for _ in range(bulla_count)))
    if present[3]:
        count = 1 + int(rng.random() < 0.25)
        values["consolidation"] = tuple(sorted(rng.choice(LOBES, size=count, replace=False).tolist(), key=LOBES.index))
    if present[4]:  # a nodule inside a consolidated lobe would be invisible, so it goes elsewhere
        visible_lobes = tuple(lobe for lobe in LOBES if lobe not in values.get("consolidation", ()))
        values["nodules"] = tuple(_lesion(rng, visible_lobes, (4.0, 24.0)) for _ in range(rng.integers(1, 4)))
    return PhantomParams(**values)


def _lesion(rng: np.random.Generator, lobes: tuple[str, ...], diameter_range: tuple[float, float]) -> Lesion:
    return Lesion(lobe=str(rng.choice(lobes)), diameter_mm=round(float(rng.uniform(*diameter_range)), 1),
                  position=float(rng.random()))


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise MedSynError(f"{name} {value!r} is not one of {', '.join(choices)}")
