"""Which model channel and label a named segment stands for, so segmentations from Slicer, TotalSegmentator or our
own outputs are understood without renaming.

Names compare case-insensitively with ``_`` and ``-`` read as spaces. Documented names (our ``.seg.nrrd`` names):
``left upper lobe``, ``left lower lobe``, ``right upper lobe``, ``right middle lobe``, ``right lower lobe``,
``airway``, ``vessels``; the synonyms below cover abbreviations and TotalSegmentator's names. ``--segment-map``
adds or overrides names: ``"My LUL=lobe:LUL,Trachea=airway,Arteries=vessels"``.
"""
from __future__ import annotations

import re
from typing import Optional

from medsyn.errors import MedSynError
from medsyn.io.segmentation import SEGMENTS
from medsyn.models.card import LOBE_LABELS

Target = tuple[str, int]  # (anatomy role: "lobes" | "airway" | "vessels", label value in that role's map)

_SYNONYMS: dict[Target, tuple[str, ...]] = {
    ("lobes", LOBE_LABELS["LUL"]): ("lul", "lung upper lobe left", "upper lobe of left lung",
                                    "left upper lobe of lung"),
    ("lobes", LOBE_LABELS["LLL"]): ("lll", "lung lower lobe left", "lower lobe of left lung",
                                    "left lower lobe of lung"),
    ("lobes", LOBE_LABELS["RUL"]): ("rul", "lung upper lobe right", "upper lobe of right lung",
                                    "right upper lobe of lung"),
    ("lobes", LOBE_LABELS["RML"]): ("rml", "lung middle lobe right", "middle lobe of right lung",
                                    "right middle lobe of lung"),
    ("lobes", LOBE_LABELS["RLL"]): ("rll", "lung lower lobe right", "lower lobe of right lung",
                                    "right lower lobe of lung"),
    ("airway", 1): ("airways", "airway tree", "trachea and bronchus", "trachea and bronchi", "lung trachea bronchia",
                    "bronchi", "bronchial tree"),
    ("vessels", 1): ("vessel", "lung vessels", "pulmonary vessels", "blood vessel", "blood vessels"),
}


def normalise(name: str) -> str:
    """Lower case, ``_``/``-`` as spaces, single spaces."""
    return " ".join(re.sub(r"[_\-]+", " ", name).lower().split())


KNOWN_NAMES: dict[str, Target] = {
    **{normalise(segment.name): (segment.layer, segment.label) for segment in SEGMENTS},
    **{normalise(name): target for target, names in _SYNONYMS.items() for name in names},
}


def parse_segment_map(text: Optional[str]) -> dict[str, Target]:
    """Parse ``"name=lobe:LUL,name2=airway,name3=vessels"`` into normalised name -> target."""
    overrides: dict[str, Target] = {}
    if not text:
        return overrides
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, target = item.partition("=")
        if not name.strip() or not target.strip():
            raise MedSynError(f"segment map entry {item!r} must look like 'segment name=lobe:LUL', '=airway' or "
                              "'=vessels'")
        overrides[normalise(name)] = _parse_target(target.strip())
    return overrides


def segment_target(name: str, overrides: dict[str, Target]) -> Optional[Target]:
    """The (role, label) a segment name stands for, the user's map first; None if the name is not known."""
    key = normalise(name)
    return overrides.get(key, KNOWN_NAMES.get(key))


def _parse_target(text: str) -> Target:
    kind, _, detail = text.partition(":")
    kind = normalise(kind)
    if kind in ("airway", "vessels") and not detail:
        return kind, 1
    if kind == "lobe" and detail.strip().upper() in LOBE_LABELS:
        return "lobes", LOBE_LABELS[detail.strip().upper()]
    raise MedSynError(f"segment map target {text!r} is not one of lobe:{'/'.join(LOBE_LABELS)}, airway, vessels")
