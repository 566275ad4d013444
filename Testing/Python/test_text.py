"""Text side: official-equivalent token features, caching, CXR-BERT import and demo-encoder pretraining (tiny BERTs)."""
from __future__ import annotations

import itertools
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertModel

from medsyn.errors import MedSynError
from medsyn.text.encoder import FEATURE_TOKENS, FeatureCache, TextEncoder
from medsyn.text.official_import import prepare_official_text_encoder
from medsyn.text.pretrain import PretrainConfig, pretrain_text_encoder, train_wordpiece_tokenizer

SENTENCES = [
    "No pleural effusion or pneumothorax.", "Large right pleural effusion with adjacent atelectasis.",
    "Small left pleural effusion.", "The heart is enlarged.", "Heart size is normal.",
    "Emphysema in both upper lobes.", "No focal consolidation.", "Right lower lobe consolidation.",
]
HIDDEN = 32


def _tiny_config(positions: int) -> BertConfig:
    return BertConfig(vocab_size=1, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=positions)


def _random_masked_lm(vocab_size: int, positions: int, seed: int) -> BertForMaskedLM:
    torch.manual_seed(seed)
    config = _tiny_config(positions)
    config.vocab_size = vocab_size
    return BertForMaskedLM(config).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return train_wordpiece_tokenizer(SENTENCES * 3, vocab_size=120, max_positions=2048)


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory, tokenizer) -> Path:
    """A BERT folder like the converted CXR-BERT: 2048 positions, BertForMaskedLM weights, random values."""
    folder = tmp_path_factory.mktemp("bert")
    _random_masked_lm(len(tokenizer), 2048, seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def encoder(bert_folder) -> TextEncoder:
    return TextEncoder.from_folder(bert_folder)


def _official_features(folder: Path, text: str) -> torch.Tensor:
    """What extract_text_feature.py computes: pad to 2048, last hidden layer, first 192 positions."""
    from transformers import BertTokenizer

    model = BertForMaskedLM.from_pretrained(folder, local_files_only=True).eval()
    batch = BertTokenizer.from_pretrained(str(folder), local_files_only=True)(
        text, padding="max_length", max_length=2048, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch, output_hidden_states=True).hidden_states[-1][:, :FEATURE_TOKENS, :]


def test_features_match_the_official_2048_padded_computation(encoder, bert_folder):
    text = "Large right pleural effusion with adjacent atelectasis."
    features = encoder.encode(text)
    assert features.shape == (1, FEATURE_TOKENS, HIDDEN) and features.dtype == torch.float32
    n_tokens = len(encoder.tokenizer(text)["input_ids"])
    pad_states = features[0, n_tokens:]
    assert pad_states.abs().amax() > 0.1  # PAD positions are kept, neither zeroed nor dropped
    assert torch.allclose(features, _official_features(bert_folder, text), atol=1e-5, rtol=0)


def test_batch_equals_single_and_is_deterministic(encoder):
    texts = ["No pleural effusion.", "Large right pleural effusion with adjacent atelectasis. " * 3]
    batch = encoder.encode_batch(texts)
    assert batch.shape == (2, FEATURE_TOKENS, HIDDEN)
    for row, text in zip(batch, texts):
        assert torch.allclose(row, encoder.encode(text)[0], atol=1e-5, rtol=0)
    assert torch.equal(encoder.encode(texts[0]), encoder.encode(texts[0]))
    assert not torch.allclose(batch[0], batch[1], atol=1e-3)


def test_cache_answers_repeated_prompts_without_running_the_model(encoder, tmp_path):
    forwards = []
    hook = encoder.model.register_forward_hook(lambda module, args, output: forwards.append(1))
    try:
        cache = FeatureCache(encoder, disk_dir=tmp_path)
        first = cache.get("Small left pleural effusion.")
        again = cache.get("Small left pleural effusion.")
        assert len(forwards) == 1 and torch.equal(first, again)
        assert torch.equal(first, encoder.encode("Small left pleural effusion."))
        forwards.clear()
        from_disk = FeatureCache(encoder, disk_dir=tmp_path).get("Small left pleural effusion.")
        assert not forwards and torch.equal(first, from_disk)
        mixed = cache.get_batch(["The heart is enlarged.", "Small left pleural effusion.", "The heart is enlarged."])
        assert len(forwards) == 1 and torch.equal(mixed[1], first[0]) and torch.equal(mixed[0], mixed[2])
    finally:
        hook.remove()


def test_small_lru_evicts_the_oldest_prompt(encoder):
    cache = FeatureCache(encoder, max_items=1)
    cache.get("No focal consolidation.")
    cache.get("The heart is enlarged.")
    forwards = []
    hook = encoder.model.register_forward_hook(lambda module, args, output: forwards.append(1))
    try:
        cache.get("The heart is enlarged.")
        assert not forwards
        cache.get("No focal consolidation.")
        assert len(forwards) == 1
    finally:
        hook.remove()


@pytest.mark.parametrize("text", ["", "   \n\t"])
def test_empty_report_is_a_user_error(encoder, text):
    with pytest.raises(MedSynError, match="report is empty"):
        encoder.encode(text)


def test_long_report_warns_and_keeps_full_context(encoder):
    words = list(itertools.islice(itertools.cycle("effusion heart lobe consolidation emphysema".split()), 300))
    with pytest.warns(UserWarning, match="only the first 192"):
        features = encoder.encode(" ".join(words))
    assert features.shape == (1, FEATURE_TOKENS, HIDDEN)
    with pytest.warns(UserWarning, match="only the first 192"):
        other_ending = encoder.encode(" ".join(words[:200] + ["normal"] * 100))
    # Words far past token 192 still change the first 192 outputs: they are encoded as context, as in the official run.
    assert not torch.allclose(features, other_ending, atol=1e-4)


def test_missing_or_unconverted_folders_are_user_errors(tmp_path, bert_folder):
    with pytest.raises(MedSynError, match="does not exist"):
        TextEncoder.from_folder(tmp_path / "nowhere")
    no_weights = tmp_path / "no_weights"
    shutil.copytree(bert_folder, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(MedSynError, match="lacks model.safetensors or pytorch_model.bin"):
        TextEncoder.from_folder(no_weights)
    remote = tmp_path / "remote"
    shutil.copytree(bert_folder, remote)
    config = json.loads((remote / "config.json").read_text())
    (remote / "config.json").write_text(json.dumps({**config, "model_type": "cxr-bert"}))
    with pytest.raises(MedSynError, match="prepare_official_text_encoder"):
        TextEncoder.from_folder(remote)


def _official_layout(folder: Path, tokenizer, finetuned_rows: int | None) -> tuple[dict, dict | None]:
    """A CXR-BERT download (remote-code config, 512 positions, extra heads) plus optionally MedSyn's pretrained_lm."""
    folder.mkdir()
    base = _random_masked_lm(len(tokenizer), 512, seed=1).state_dict()
    config = {**_tiny_config(512).to_dict(), "vocab_size": len(tokenizer), "model_type": "cxr-bert",
              "architectures": ["CXRBertModel"], "projection_size": 8,
              "auto_map": {"AutoModel": "modeling_cxrbert.CXRBertModel"}}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "vocab.txt").write_text("\n".join(sorted(tokenizer.get_vocab(), key=tokenizer.get_vocab().get)) + "\n")
    extras = {"cls_projection_head.dense_to_hidden.weight": torch.randn(HIDDEN, HIDDEN),
              "bert.embeddings.position_ids": torch.arange(512)[None]}
    torch.save({**base, **extras}, folder / "pytorch_model.bin")
    if finetuned_rows is None:
        return base, None
    finetuned = _random_masked_lm(len(tokenizer), finetuned_rows, seed=2).state_dict()
    (folder / "pretrained_lm").mkdir()
    torch.save({**finetuned, "classifier.weight": torch.randn(2, 8)}, folder / "pretrained_lm" / "pytorch_model.bin")
    return base, finetuned


def _trunk(state: dict) -> dict:
    return {k.removeprefix("bert."): v for k, v in state.items() if k.startswith("bert.")}


def test_official_import_uses_the_finetuned_2048_position_lm(tmp_path, tokenizer):
    _, finetuned = _official_layout(tmp_path / "cxr", tokenizer, finetuned_rows=2048)
    with pytest.raises(MedSynError, match="model_type 'cxr-bert'"):
        TextEncoder.from_folder(tmp_path / "cxr")
    notes = prepare_official_text_encoder(tmp_path / "cxr", tmp_path / "out")
    assert any("already have 2048" in note for note in notes)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["model_type"], config["architectures"], config["max_position_embeddings"]) == (
        "bert", ["BertForMaskedLM"], 2048)
    assert "auto_map" not in config and "projection_size" not in config
    encoder = TextEncoder.from_folder(tmp_path / "out")
    reference = BertModel(encoder.model.config, add_pooling_layer=False).eval()
    reference.load_state_dict(_trunk(finetuned))
    text = "Small left pleural effusion."
    with torch.no_grad():
        expected = reference(**encoder.tokenizer(text, padding="max_length", max_length=FEATURE_TOKENS,
                                                 return_tensors="pt")).last_hidden_state
    assert torch.allclose(encoder.encode(text), expected, atol=1e-5, rtol=0)
    # The fine-tuned file may also live outside the CXR-BERT folder and be named explicitly.
    elsewhere = tmp_path / "pretrained_lm.bin"
    (tmp_path / "cxr" / "pretrained_lm" / "pytorch_model.bin").rename(elsewhere)
    prepare_official_text_encoder(tmp_path / "cxr", tmp_path / "out2", finetuned=elsewhere)
    assert torch.equal(TextEncoder.from_folder(tmp_path / "out2").encode(text), encoder.encode(text))


@pytest.mark.parametrize("finetuned_rows", [None, 512])
def test_official_import_extends_512_positions_reproducibly(tmp_path, tokenizer, finetuned_rows):
    base, finetuned = _official_layout(tmp_path / "cxr", tokenizer, finetuned_rows)
    context = pytest.warns(UserWarning, match="fine-tuned") if finetuned is None else warnings.catch_warnings()
    with context:
        notes = prepare_official_text_encoder(tmp_path / "cxr", tmp_path / "a")
        prepare_official_text_encoder(tmp_path / "cxr", tmp_path / "b")
    assert any("512 → 2048" in note for note in notes)
    table = TextEncoder.from_folder(tmp_path / "a").model.embeddings.position_embeddings.weight
    source = (finetuned or base)["bert.embeddings.position_embeddings.weight"]
    assert table.shape == (2048, HIDDEN) and torch.equal(table[:512], source)
    assert torch.equal(table, TextEncoder.from_folder(tmp_path / "b").model.embeddings.position_embeddings.weight)


def test_official_import_names_what_is_missing(tmp_path):
    (tmp_path / "cxr").mkdir()
    (tmp_path / "cxr" / "config.json").write_text("{}")
    with pytest.raises(MedSynError, match="lacks vocab.txt"):
        prepare_official_text_encoder(tmp_path / "cxr", tmp_path / "out")


def _tiny_report_corpus() -> list[tuple[str, str]]:
    sizes, sides, hearts = ("Small", "Moderate", "Large"), ("right", "left"), ("normal", "enlarged")
    return [(f"{size} {side} pleural effusion. The heart size is {heart}.",
             f"{size} {side} effusion." if heart == "normal" else f"{size} {side} effusion and cardiomegaly.")
            for size, side, heart in itertools.product(sizes, sides, hearts)] * 2


def test_pretraining_learns_and_saves_a_loadable_encoder(tmp_path):
    config = PretrainConfig(vocab_size=150, hidden_size=HIDDEN, num_layers=1, num_heads=2, intermediate_size=64,
                            max_positions=FEATURE_TOKENS, batch_size=8, learning_rate=3e-3, log_every=10)
    metrics = pretrain_text_encoder(_tiny_report_corpus(), tmp_path / "demo", steps=60, seed=0, config=config)
    history = metrics["history"]
    assert history[-1]["step"] == 60 and history[-1]["mlm_loss"] < 0.8 * history[0]["mlm_loss"]
    assert metrics["heldout"]["mlm_loss"] < metrics["heldout_before"]["mlm_loss"]
    assert 0.0 <= metrics["heldout"]["paired_accuracy"] <= 1.0
    assert json.loads((tmp_path / "demo" / "training_log.json").read_text())["heldout"] == metrics["heldout"]
    encoder = TextEncoder.from_folder(tmp_path / "demo")
    assert encoder.hidden_size == HIDDEN and encoder.encoder_id == metrics["encoder_id"]
    assert encoder.encode("Large right pleural effusion.").shape == (1, FEATURE_TOKENS, HIDDEN)


def test_pretraining_refuses_a_tiny_corpus(tmp_path):
    with pytest.raises(MedSynError, match="at least"):
        pretrain_text_encoder(_tiny_report_corpus()[:3], tmp_path / "demo", steps=1)
