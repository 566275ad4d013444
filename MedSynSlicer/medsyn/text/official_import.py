"""Convert a CXR-BERT download plus MedSyn's fine-tuned LM into a plain BERT folder that TextEncoder loads offline.

The official code fetches ``microsoft/BiomedVLP-CXR-BERT-specialized`` from the hub with ``trust_remote_code``, widens
its position table to 2048 rows and then loads ``pretrained_lm/pytorch_model.bin`` over it. We do the same once, at
import time, and write a standard ``BertForMaskedLM`` folder (safetensors, no custom classes, no remote code).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Optional

import torch

from ..errors import MedSynError
from .encoder import encoder_trunk_state_dict, find_weight_file, save_encoder_folder

OFFICIAL_POSITIONS = 2048
FINETUNED_CANDIDATES = ("pretrained_lm/pytorch_model.bin", "pretrained_lm/model.safetensors")
POSITION_KEY = "bert.embeddings.position_embeddings.weight"
# CXR-BERT's config entries that point at its remote-code classes or its unused projection head.
_REMOTE_CONFIG_KEYS = ("architectures", "auto_map", "model_type", "projection_size", "tokenizer_class",
                       "transformers_version", "_name_or_path")
# The official code leaves position rows it did not copy at nn.Embedding's N(0, 1) init; we seed it for reproducibility.
_NEW_ROWS_SEED = 0


def prepare_official_text_encoder(src: Path, dst: Path, finetuned: Optional[Path] = None) -> list[str]:
    """Write ``dst`` (config.json, model.safetensors, tokenizer files) from a CXR-BERT folder; returns import notes.

    ``src`` holds the CXR-BERT config.json and vocab.txt, optionally its weights and ``pretrained_lm/pytorch_model.bin``
    (MedSyn's fine-tuned LM), which ``finetuned`` can also name directly.
    """
    from transformers import BertForMaskedLM, BertTokenizer

    from ..models.weights import load_state_dict_strict, read_weight_file

    src, dst = Path(src), Path(dst)
    for name in ("config.json", "vocab.txt"):
        if not (src / name).is_file():
            raise MedSynError(f"{src} lacks {name}; download microsoft/BiomedVLP-CXR-BERT-specialized into it")
    finetuned = Path(finetuned) if finetuned is not None else _find_finetuned(src)
    base = find_weight_file(src)
    if base is None and finetuned is None:
        raise MedSynError(f"{src} has no weights: add MedSyn's pretrained_lm/pytorch_model.bin or CXR-BERT's weights")

    notes = []
    state: dict[str, torch.Tensor] = {}
    for label, path in (("CXR-BERT base", base), ("MedSyn fine-tuned LM", finetuned)):
        if path is not None:
            loaded = _masked_lm_state(read_weight_file(path))
            if POSITION_KEY not in loaded:
                raise MedSynError(f"{path} holds no BERT embeddings; is it a CXR-BERT / MedSyn pretrained_lm file?")
            state.update(loaded)
            notes.append(f"text: read {label} {path} ({len(loaded)} tensors)")
    if finetuned is None:
        warnings.warn("no MedSyn fine-tuned LM (pretrained_lm/pytorch_model.bin) was given; the features will not "
                      "match those the released diffusion model was trained on", stacklevel=2)
        notes.append("text: WARNING no MedSyn fine-tuned LM; base CXR-BERT weights only")
    state[POSITION_KEY], note = _extend_positions(state[POSITION_KEY], OFFICIAL_POSITIONS)
    notes.append(note)

    model = BertForMaskedLM(_official_config(src / "config.json"))
    load_state_dict_strict(model, state, source=" + ".join(str(p) for p in (base, finetuned) if p is not None))
    tokenizer = BertTokenizer(vocab=str(src / "vocab.txt"), do_lower_case=_do_lower_case(src),
                              model_max_length=OFFICIAL_POSITIONS)
    save_encoder_folder(model, tokenizer, dst)
    return notes


def _find_finetuned(src: Path) -> Optional[Path]:
    return next((src / name for name in FINETUNED_CANDIDATES if (src / name).is_file()), None)


def _masked_lm_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BertForMaskedLM keys of a CXRBertModel / BertForMaskedLM / BertModel checkpoint; other heads dropped."""
    state = {key.removeprefix("module."): value for key, value in state.items()}
    masked_lm = {f"bert.{key}": value for key, value in encoder_trunk_state_dict(state).items()}
    masked_lm.update({key: value for key, value in state.items() if key.startswith("cls.predictions.")})
    # BERT ties the decoder to the word embeddings and its bias to predictions.bias; some saves omit the tied copies.
    if "cls.predictions.bias" in masked_lm and "bert.embeddings.word_embeddings.weight" in masked_lm:
        masked_lm.setdefault("cls.predictions.decoder.bias", masked_lm["cls.predictions.bias"])
        masked_lm.setdefault("cls.predictions.decoder.weight", masked_lm["bert.embeddings.word_embeddings.weight"])
    return masked_lm


def _extend_positions(table: torch.Tensor, rows: int) -> tuple[torch.Tensor, str]:
    """Copy the first rows into a ``rows``-row table like the official code (rows beyond: seeded N(0, 1))."""
    have = table.shape[0]
    if have == rows:
        return table, f"text: position embeddings already have {rows} rows"
    if have > rows:
        raise MedSynError(f"the position table has {have} rows, more than MedSyn's {rows}; this is not CXR-BERT")
    generator = torch.Generator().manual_seed(_NEW_ROWS_SEED)
    extended = torch.randn(rows, table.shape[1], generator=generator, dtype=table.dtype)
    extended[:have] = table
    return extended, f"text: extended position embeddings {have} → {rows} rows ({have}+ seeded N(0,1) as in MedSyn)"


def _official_config(path: Path):
    """CXR-BERT's config as a plain BertConfig with MedSyn's 2048 positions."""
    from transformers import BertConfig

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise MedSynError(f"{path} is not readable JSON ({exc})") from exc
    data = {key: value for key, value in data.items() if key not in _REMOTE_CONFIG_KEYS}
    config = BertConfig.from_dict({**data, "max_position_embeddings": OFFICIAL_POSITIONS})
    config.architectures = ["BertForMaskedLM"]
    return config


def _do_lower_case(src: Path) -> bool:
    path = src / "tokenizer_config.json"
    if not path.is_file():
        return True
    return bool(json.loads(path.read_text(encoding="utf-8")).get("do_lower_case", True))
