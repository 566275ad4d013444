"""Builds a tiny random-weight model folder (card + networks + text encoder) for fast end-to-end tests.

Random weights make no sense of the report, so nothing here is ever called "demo": it only proves the plumbing.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from medsyn.models.card import GridCard, ModelCard, StageCard, save_card
from medsyn.models.weights import sha256_file
from medsyn.networks.config import LowResConfig, SRConfig

WORDS = ["no", "large", "small", "right", "left", "pleural", "effusion", "cardiomegaly", "normal", "heart", "size",
         "lungs", "are", "clear", "there", "is", "a", "nodule", "in", "the", "lobe", "emphysema", "."]


def build_tiny_text_encoder(folder: Path, hidden: int = 8, seed: int = 0) -> Path:
    """A one-layer BERT with a word-level vocabulary, saved as a Hugging Face folder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(str(folder))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=256)
    BertModel(config).save_pretrained(str(folder), safe_serialization=True)
    return folder


def build_tiny_model(folder: Path, lowres_shape=(4, 8, 8), sr_factor: int = 2, seed: int = 0,
                     name: str = "tiny-random-test") -> Path:
    """A complete model folder whose networks are a few thousand random parameters."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    hidden = 8
    low_cfg = LowResConfig(dim=4, cond_dim=hidden, dim_mults=(1, 2), attn_heads=1, resnet_groups=2)
    sr_cfg = SRConfig(dim=4, dim_mults=(1, 2), attn_heads=1, resnet_groups=2)
    stages = {}
    for kind, cfg, steps in (("lowres", low_cfg, 4), ("sr", sr_cfg, 2)):
        net = cfg.build()
        path = folder / f"{kind}.safetensors"
        save_file({k: v.contiguous().clone() for k, v in net.state_dict().items()}, str(path))
        stages[kind] = StageCard(network=cfg.to_dict(), weights=path.name, sha256=sha256_file(path), steps=steps)
    build_tiny_text_encoder(folder / "text_encoder", hidden=hidden, seed=seed)
    shape = [n * sr_factor for n in lowres_shape]
    card = ModelCard(
        name=name, description="random weights for tests", license="Apache-2.0", intended_use="tests only",
        lowres=stages["lowres"], sr=stages["sr"], text_encoder="text_encoder",
        grid=GridCard(lowres_shape_zyx=list(lowres_shape), sr_factor=sr_factor, spacing_xyz=[3.0, 2.5, 2.0],
                      direction_lps=[1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0],
                      origin_lps=[-0.5 * 3.0 * shape[2], 0.5 * 2.5 * shape[1], -0.5 * 2.0 * shape[0]]))
    save_card(card, folder)
    return folder
