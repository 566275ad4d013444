"""Report text → the (B, 192, H) token features MedSyn's diffusion model cross-attends to.

Reproduces the official ``extract_text_feature.py``: the last BERT layer's hidden states of [CLS], the report tokens,
[SEP] and the PAD positions up to 192, neither pooled nor zeroed. The encoder is loaded from a local folder only
(no hub call, no remote code), so the official fine-tuned CXR-BERT and the bundled demo encoder share one path.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import MedSynError

FEATURE_TOKENS = 192
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
# Parts of a BERT checkpoint that are not the encoder trunk: MLM / pairing heads, CXR-BERT's projection and
# classifier, the pooler, and position/token-type id buffers that older transformers versions saved.
_IGNORED_PREFIXES = ("cls.", "cls_projection_head.", "classifier.", "pooler.")
_IGNORED_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
_TIED_KEYS = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")


def find_weight_file(folder: Path) -> Optional[Path]:
    """The folder's weight file, safetensors preferred (as transformers does)."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def save_encoder_folder(model, tokenizer, folder: Path) -> None:
    """Write a BertForMaskedLM folder (config.json, model.safetensors, tokenizer files) that ``from_folder`` reads.

    The decoder's weight and bias are tied to the word embeddings and ``predictions.bias``, so they are left out as
    transformers' own saves do (safetensors refuses shared storage); loaders re-tie them.
    """
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    model.config.to_json_file(folder / "config.json")
    state = {key: value.detach().contiguous() for key, value in model.state_dict().items() if key not in _TIED_KEYS}
    save_file(state, str(folder / WEIGHT_FILES[0]), metadata={"format": "pt"})
    tokenizer.save_pretrained(str(folder))


def encoder_trunk_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BertModel keys of a BertModel / BertForMaskedLM / BertForPreTraining / CXRBertModel checkpoint, heads dropped."""
    trunk = {}
    for key, value in state.items():
        key = key.removeprefix("bert.")
        if not key.startswith(_IGNORED_PREFIXES) and key not in _IGNORED_BUFFERS:
            trunk[key] = value
    return trunk


class TextEncoder:
    """A BERT encoder (eval mode, float32) plus its WordPiece tokenizer, identified by its weights' sha256."""

    def __init__(self, tokenizer, model, encoder_id: str):
        self.tokenizer = tokenizer
        self.model = model.eval().requires_grad_(False)
        self.encoder_id = encoder_id

    @classmethod
    def from_folder(cls, folder: Union[str, Path], device: Union[str, torch.device] = "cpu") -> "TextEncoder":
        """Load config.json + tokenizer + weights from ``folder``; every problem is a one-line MedSynError."""
        from transformers import BertModel, BertTokenizer

        from ..models.weights import load_state_dict_strict, read_weight_file, sha256_file

        folder = Path(folder)
        if not folder.is_dir():
            raise MedSynError(f"text encoder folder {folder} does not exist; check the model card's text_encoder entry")
        weights = find_weight_file(folder)
        missing = [name for name, present in (
            ("config.json", (folder / "config.json").is_file()),
            (" or ".join(TOKENIZER_FILES), any((folder / n).is_file() for n in TOKENIZER_FILES)),
            (" or ".join(WEIGHT_FILES), weights is not None),
        ) if not present]
        if missing:
            raise MedSynError(f"text encoder folder {folder} lacks {', '.join(missing)}; re-import or re-download it")
        config = _read_bert_config(folder / "config.json")
        model = BertModel(config, add_pooling_layer=False)
        load_state_dict_strict(model, encoder_trunk_state_dict(read_weight_file(weights)), source=str(weights))
        tokenizer = BertTokenizer.from_pretrained(str(folder), local_files_only=True)
        return cls(tokenizer, model.to(device), sha256_file(weights))

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def max_positions(self) -> int:
        return int(self.model.config.max_position_embeddings)

    def encode(self, text: str) -> torch.Tensor:
        """Features of one report: float32 (1, 192, H) on the CPU."""
        return self.encode_batch([text])

    @torch.no_grad()
    def encode_batch(self, texts: Sequence[str]) -> torch.Tensor:
        """Features of several reports: float32 (B, 192, H) on the CPU; row i matches ``encode(texts[i])``."""
        if not texts:
            raise MedSynError("no reports were given; pass at least one report")
        for text in texts:
            if not text.strip():
                raise MedSynError("the report is empty; type the findings, e.g. 'Large right pleural effusion.'")
        lengths = [len(ids) for ids in self.tokenizer(list(texts))["input_ids"]]
        for length in lengths:
            if length > FEATURE_TOKENS:
                warnings.warn(f"the report has {length} tokens; only the first {FEATURE_TOKENS} reach the diffusion "
                              f"model (the rest still inform them as context, up to {self.max_positions})",
                              stacklevel=2)
        # PAD keys are masked, so padding to max(192, longest) reproduces the official 2048-padded outputs, cheaply.
        pad_to = min(max(FEATURE_TOKENS, max(lengths)), self.max_positions)
        batch = self.tokenizer(list(texts), padding="max_length", max_length=pad_to, truncation=True,
                               return_tensors="pt").to(self.model.device)
        hidden = self.model(**batch).last_hidden_state
        return hidden[:, :FEATURE_TOKENS, :].float().cpu()


def _read_bert_config(path: Path):
    """BertConfig from config.json, refusing non-BERT types (an unconverted CXR-BERT download needs remote code)."""
    from transformers import BertConfig

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise MedSynError(f"{path} is not readable JSON ({exc})") from exc
    if data.get("model_type") != "bert":
        raise MedSynError(f"{path} has model_type '{data.get('model_type')}', not 'bert'; convert a CXR-BERT download "
                          "with medsyn.text.official_import.prepare_official_text_encoder first")
    config = BertConfig.from_dict(data)
    if config.max_position_embeddings < FEATURE_TOKENS:
        raise MedSynError(f"{path} allows only {config.max_position_embeddings} positions; the diffusion model needs "
                          f"{FEATURE_TOKENS} token features")
    return config


class FeatureCache:
    """Report → features memo for one encoder: an in-memory LRU plus an optional on-disk safetensors store.

    Keyed by (sha256 of the report, encoder id), so a prompt typed again, in this session or (with ``disk_dir``) a later
    one, costs no forward pass, and features of a different encoder are never mixed up.
    """

    def __init__(self, encoder: TextEncoder, max_items: int = 128, disk_dir: Optional[Union[str, Path]] = None):
        self.encoder = encoder
        self.max_items = max_items
        self.disk_dir = Path(disk_dir) / encoder.encoder_id[:16] if disk_dir is not None else None
        self._memory: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()

    def get(self, text: str) -> torch.Tensor:
        """Features (1, 192, H) of one report."""
        return self.get_batch([text])

    def get_batch(self, texts: Sequence[str]) -> torch.Tensor:
        """Features (B, 192, H); only reports seen neither in memory nor on disk are encoded, in one batch."""
        keys = [(hashlib.sha256(text.encode("utf-8")).hexdigest(), self.encoder.encoder_id) for text in texts]
        found = {key: self._lookup(key) for key in dict.fromkeys(keys)}
        todo = {key: text for key, text in zip(keys, texts) if found[key] is None}
        if todo:
            for key, features in zip(todo, self.encoder.encode_batch(list(todo.values()))):
                found[key] = features
                self._store(key, features)
        return torch.stack([found[key] for key in keys])

    def _lookup(self, key: tuple[str, str]) -> Optional[torch.Tensor]:
        if key in self._memory:
            self._memory.move_to_end(key)
            return self._memory[key]
        path = self._disk_path(key)
        if path is None or not path.is_file():
            return None
        from safetensors.torch import load_file

        features = load_file(str(path))["features"]
        self._remember(key, features)
        return features

    def _store(self, key: tuple[str, str], features: torch.Tensor) -> None:
        self._remember(key, features)
        path = self._disk_path(key)
        if path is not None:
            from safetensors.torch import save_file

            from ..io.atomic import atomic_write

            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(path) as partial:  # another process reading the cache never sees half a file
                save_file({"features": features.contiguous()}, str(partial), metadata={"encoder_id": key[1]})

    def _remember(self, key: tuple[str, str], features: torch.Tensor) -> None:
        self._memory[key] = features
        self._memory.move_to_end(key)
        while len(self._memory) > self.max_items:
            self._memory.popitem(last=False)

    def _disk_path(self, key: tuple[str, str]) -> Optional[Path]:
        return self.disk_dir / f"{key[0]}.safetensors" if self.disk_dir is not None else None
