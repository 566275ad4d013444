"""Radiology reports (Findings + Impression) that describe a phantom's params truthfully, in varied wording.

Every finding is either described (severity, laterality, lobe, size) or explicitly negated, alone ("No pleural
effusion.") or in a list ("No consolidation, pleural effusion or pneumothorax."). Synonyms, sentence and section
order, units and optional normal statements vary with the seed, so a text encoder must read meaning, not a template.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from medsyn.phantom.params import PhantomParams

LOBE_NAMES = {"LUL": "left upper lobe", "LLL": "left lower lobe", "RUL": "right upper lobe",
              "RML": "right middle lobe", "RLL": "right lower lobe"}
SECTIONS = ("lungs", "pleura", "heart")
OPTIONAL_NORMALS = {
    "lungs": ("The central airways are patent.", "The trachea and main bronchi are clear."),
    "heart": ("No mediastinal or hilar lymphadenopathy.", "The thoracic aorta is normal in caliber.",
              "No pericardial effusion."),
    "other": ("No acute osseous abnormality.", "The visualized upper abdomen is unremarkable.",
              "The osseous structures are intact."),
}
NORMAL_IMPRESSIONS = ("No acute cardiopulmonary abnormality.", "Normal CT of the chest.",
                      "No acute intrathoracic process.", "Unremarkable chest CT.")


@dataclass(frozen=True)
class Report:
    findings: str
    impression: str

    @property
    def text(self) -> str:
        return f"FINDINGS: {self.findings} IMPRESSION: {self.impression}"


@dataclass(frozen=True)
class _Mention:
    """One finding family, either described (``sentences``, ``impression``) or negated (``absent_*``)."""

    section: str
    sentences: tuple[str, ...] = ()
    impression: Optional[str] = None
    absent_term: str = ""
    absent_sentence: str = ""

    @property
    def present(self) -> bool:
        return bool(self.sentences)


def write_report(params: PhantomParams, rng: np.random.Generator) -> Report:
    """A report true of ``params``; ``rng`` only chooses the wording and order."""
    mentions = [_effusion(params, rng), _pneumothorax(rng), _heart(params, rng), _emphysema(params, rng),
                _consolidation(params, rng), _nodules(params, rng)]
    by_section: dict[str, list[str]] = {section: [] for section in SECTIONS + ("other",)}
    # About half of the absent findings are negated together in one list sentence (when two or more are drawn).
    listed = [m for m in mentions if not m.present and rng.random() < 0.5]
    listed = listed if len(listed) > 1 else []
    for mention in mentions:
        if mention.present:
            by_section[mention.section].extend(mention.sentences)
        elif all(mention is not other for other in listed):
            by_section[mention.section].append(mention.absent_sentence)
    if listed:
        by_section[listed[0].section].append(_negated_list([m.absent_term for m in listed], rng))
    for section, options in OPTIONAL_NORMALS.items():
        by_section[section].extend(option for option in options if rng.random() < 0.25)
    order = list(SECTIONS) if rng.random() < 0.5 else [SECTIONS[i] for i in rng.permutation(len(SECTIONS))]
    findings = []
    for section in order + ["other"]:
        sentences = by_section[section]
        findings.extend(sentences[i] for i in rng.permutation(len(sentences)))
    impressions = [m.impression for m in mentions if m.present]
    return Report(findings=" ".join(findings), impression=_impression(impressions, rng))


def normal_report(rng: np.random.Generator) -> Report:
    """A report of a patient without findings."""
    return write_report(PhantomParams(), rng)


def _impression(items: Sequence[str], rng: np.random.Generator) -> str:
    if not items:
        return str(rng.choice(NORMAL_IMPRESSIONS))
    ordered = [items[i] for i in rng.permutation(len(items))] if rng.random() < 0.4 else list(items)
    if len(ordered) > 1 and rng.random() < 0.5:
        return " ".join(f"{number}. {item}" for number, item in enumerate(ordered, start=1))
    return " ".join(ordered)


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _negated_list(terms: Sequence[str], rng: np.random.Generator) -> str:
    terms = [terms[i] for i in rng.permutation(len(terms))]
    joined = ", ".join(terms[:-1]) + f"{',' if len(terms) > 2 and rng.random() < 0.5 else ''} or {terms[-1]}"
    return _pick(rng, (f"No {joined}.", f"There is no {joined}.", f"No evidence of {joined}."))


def _effusion(params: PhantomParams, rng: np.random.Generator) -> _Mention:
    if params.effusion_side == "none":
        return _Mention("pleura", absent_term="pleural effusion", absent_sentence=_pick(rng, (
            "No pleural effusion.", "There is no pleural effusion.", "No pleural fluid.",
            "No pleural effusion is seen.")))
    severity = params.effusion_severity
    if params.effusion_side == "bilateral":
        sentence = _pick(rng, (f"{_capital(severity)} bilateral pleural effusions.",
                               f"There are {severity} pleural effusions bilaterally.",
                               f"{_capital(severity)} bilateral pleural fluid collections layer dependently.",
                               f"Bilateral {severity} pleural effusions are present."))
        impression = _pick(rng, (f"{_capital(severity)} bilateral pleural effusions.",
                                 f"Bilateral pleural effusions, {severity}."))
    else:
        side = params.effusion_side
        sentence = _pick(rng, (f"{_capital(severity)} {side} pleural effusion.",
                               f"There is a {severity} {side}-sided pleural effusion.",
                               f"{_capital(severity)} amount of pleural fluid on the {side}.",
                               f"A {severity} {side} pleural effusion layers dependently."))
        impression = _pick(rng, (f"{_capital(severity)} {side} pleural effusion.",
                                 f"{_capital(side)} pleural effusion, {severity}."))
    return _Mention("pleura", (sentence,), impression)


def _pneumothorax(rng: np.random.Generator) -> _Mention:
    return _Mention("pleura", absent_term="pneumothorax", absent_sentence=_pick(rng, (
        "No pneumothorax.", "There is no pneumothorax.", "No pneumothorax is identified.")))


def _heart(params: PhantomParams, rng: np.random.Generator) -> _Mention:
    if not params.cardiomegaly:
        return _Mention("heart", absent_term="cardiomegaly", absent_sentence=_pick(rng, (
            "Heart size is normal.", "The heart is normal in size.", "No cardiomegaly.",
            "Normal cardiac silhouette.")))
    grade = "mild" if params.ctr < 0.56 else "moderate" if params.ctr < 0.61 else "marked"
    adverb = {"mild": "mildly", "moderate": "moderately", "marked": "markedly"}[grade]
    sentence = _pick(rng, (f"{_capital(grade)} cardiomegaly.", f"The heart is {adverb} enlarged.",
                           f"{_capital(adverb)} enlarged cardiac silhouette.", "Cardiomegaly.",
                           "The cardiac silhouette is enlarged."))
    impression = _pick(rng, ("Cardiomegaly.", f"{_capital(grade)} cardiomegaly.", "Enlarged heart."))
    return _Mention("heart", (sentence,), impression)


def _emphysema(params: PhantomParams, rng: np.random.Generator) -> _Mention:
    if params.emphysema == "none":
        return _Mention("lungs", absent_term="emphysema", absent_sentence=_pick(rng, (
            "No emphysema.", "No evidence of emphysema.", "The lung parenchyma shows no emphysema.")))
    grade = params.emphysema
    sentences = [_pick(rng, (f"{_capital(grade)} centrilobular emphysema, predominantly in the upper lobes.",
                             f"There is {grade} emphysema.", f"{_capital(grade)} emphysematous changes of both lungs.",
                             f"Emphysema, {grade}, with upper lobe predominance."))]
    if params.bullae:
        largest = max(params.bullae, key=lambda bulla: bulla.diameter_mm)
        lobes = _lobe_list(sorted({bulla.lobe for bulla in params.bullae}), rng)
        sentences.append(_pick(rng, (f"Bullae in the {lobes}, the largest measuring {_size(largest.diameter_mm, rng)}.",
                                     f"Bullous changes of the {lobes}.",
                                     f"Bullae are seen in the {lobes}.")))
    impression = f"{_capital(grade)} emphysema" + (" with bullae." if params.bullae else ".")
    return _Mention("lungs", tuple(sentences), impression)


def _consolidation(params: PhantomParams, rng: np.random.Generator) -> _Mention:
    if not params.consolidation:
        return _Mention("lungs", absent_term="focal consolidation", absent_sentence=_pick(rng, (
            "No focal consolidation.", "No consolidation.", "There is no airspace consolidation.")))
    lobes = _lobe_list(params.consolidation, rng)
    sentence = _pick(rng, (f"Consolidation in the {lobes} with air bronchograms.",
                           f"Dense airspace consolidation involving the {lobes}.",
                           f"There is lobar consolidation of the {lobes}.",
                           f"Airspace opacity fills the {lobes}, with air bronchograms."))
    impression = _pick(rng, (f"Consolidation of the {lobes}, compatible with pneumonia.",
                             f"Lobar pneumonia of the {lobes}.", f"{_capital(lobes)} consolidation."))
    return _Mention("lungs", (sentence,), impression)


def _nodules(params: PhantomParams, rng: np.random.Generator) -> _Mention:
    if not params.nodules:
        return _Mention("lungs", absent_term="pulmonary nodules", absent_sentence=_pick(rng, (
            "No pulmonary nodules.", "No suspicious pulmonary nodule.", "There are no lung nodules.")))
    described = [(_size(n.diameter_mm, rng), LOBE_NAMES[n.lobe]) for n in params.nodules]
    if len(described) == 1:
        size, lobe = described[0]
        sentences = (_pick(rng, (f"A {size} solid nodule in the {lobe}.",
                                 f"There is a {size} pulmonary nodule in the {lobe}.",
                                 f"{_capital(size)} nodule in the {lobe}.")),)
        impression = _pick(rng, (f"{_capital(size)} {lobe} nodule.", f"Pulmonary nodule in the {lobe} ({size})."))
    else:
        parts = [f"{size} in the {lobe}" for size, lobe in described]
        sentences = (f"{_capital(_count_word(len(parts)))} solid pulmonary nodules: {', '.join(parts)}.",)
        largest = max(params.nodules, key=lambda nodule: nodule.diameter_mm)
        impression = (f"Multiple pulmonary nodules, the largest {_size(largest.diameter_mm, rng)} in the "
                      f"{LOBE_NAMES[largest.lobe]}.")
    return _Mention("lungs", sentences, impression)


def _lobe_list(lobes: Sequence[str], rng: np.random.Generator) -> str:
    names = [LOBE_NAMES[lobe] for lobe in lobes]
    if len(names) == 1:
        return names[0]
    if rng.random() < 0.5 and len({name.split()[0] for name in names}) == 1:  # "right middle and lower lobes"
        side = names[0].split()[0]
        return f"{side} " + " and ".join(name.split()[1] for name in names) + " lobes"
    return ", ".join(names[:-1]) + f" and {names[-1]}"


def _size(diameter_mm: float, rng: np.random.Generator) -> str:
    if diameter_mm >= 10.0 and rng.random() < 0.5:
        return f"{diameter_mm / 10.0:.1f} cm"
    return f"{diameter_mm:.0f} mm"


def _count_word(count: int) -> str:
    return {2: "two", 3: "three", 4: "four"}.get(count, str(count))
