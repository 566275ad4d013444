"""The demo text encoder: a small BERT pretrained on reports the way MedSyn fine-tunes CXR-BERT.

MedSyn fine-tunes CXR-BERT with masked-language modelling (15%) plus "paired section" prediction: a [CLS] classifier
tells whether an Impression belongs to its Findings or was swapped in from another report. We train the same two tasks
from scratch, with a WordPiece vocabulary learnt from the corpus, small enough to run on a laptop CPU in minutes. The
result is saved as a plain ``BertForMaskedLM`` folder, so it loads through exactly the CXR-BERT path of TextEncoder.
"""
from __future__ import annotations

import copy
import json
import logging
import random
import string
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence, Union

import torch
import torch.nn.functional as F

from ..errors import MedSynError

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
LOG_FILE = "training_log.json"
PROBE_TEXTS = ("No pleural effusion.", "Large right pleural effusion.")
MIN_REPORTS = 8
Report = tuple[str, str]  # (findings, impression)


@dataclass
class PretrainConfig:
    """Network size and optimisation; the defaults give a ~1 M-parameter encoder that trains in minutes on 2 cores."""

    vocab_size: int = 1500
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    max_positions: int = 256
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    mask_probability: float = 0.15
    heldout_fraction: float = 0.1
    log_every: int = 50


def phantom_report_corpus(n: int, seed: int) -> list[Report]:
    """(Findings, Impression) of ``n`` reports written for random phantoms, reproducible from ``seed``."""
    import numpy as np

    from ..phantom.params import sample_params
    from ..phantom.reports import write_report

    rng = np.random.default_rng(seed)
    reports = (write_report(sample_params(rng), rng) for _ in range(n))
    return [(report.findings, report.impression) for report in reports]


def run_pretrain_text(n_reports: int, steps: int, seed: int, out_dir: Union[str, Path]) -> dict:
    """``medsyn pretrain-text``: pretrain the demo encoder on ``n_reports`` phantom reports into ``out_dir``."""
    return pretrain_text_encoder(phantom_report_corpus(n_reports, seed), out_dir, steps=steps, seed=seed)


def train_wordpiece_tokenizer(texts: Sequence[str], vocab_size: int, max_positions: int):
    """A lower-casing BERT WordPiece tokenizer learnt from ``texts``; ASCII seeds the alphabet so unseen words split
    into known pieces instead of [UNK]."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertTokenizer

    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=list(string.ascii_lowercase + string.digits + string.punctuation))
    wordpiece.train_from_iterator(texts, trainer)
    return BertTokenizer(vocab=wordpiece.get_vocab(), do_lower_case=True, model_max_length=max_positions)


def pretrain_text_encoder(reports: Sequence[Report], out_dir: Union[str, Path], steps: int = 3000, seed: int = 0,
                          config: PretrainConfig | None = None) -> dict:
    """Train tokenizer + encoder on ``reports``, save them with ``training_log.json`` in ``out_dir``; return metrics."""
    from transformers import BertConfig, BertForPreTraining

    from .encoder import TextEncoder, save_encoder_folder

    config = config or PretrainConfig()
    if len(reports) < MIN_REPORTS:
        raise MedSynError(f"only {len(reports)} reports; pretraining needs at least {MIN_REPORTS}")
    if steps < 1:
        raise MedSynError("steps must be at least 1")
    started = time.perf_counter()
    rng = random.Random(seed)
    shuffled = list(reports)
    rng.shuffle(shuffled)
    n_heldout = max(MIN_REPORTS // 2, round(len(shuffled) * config.heldout_fraction))
    heldout, train = shuffled[:n_heldout], shuffled[n_heldout:]
    tokenizer = train_wordpiece_tokenizer([f"{f} {i}" for f, i in train], config.vocab_size, config.max_positions)
    bert_config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads, intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_positions, pad_token_id=tokenizer.pad_token_id)

    with torch.random.fork_rng(devices=[]):  # seed init and dropout without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = BertForPreTraining(bert_config)
        initial = _evaluate(model, tokenizer, heldout, seed, config)
        history = _train(model, tokenizer, train, steps, rng, config)
    final = _evaluate(model, tokenizer, heldout, seed, config)

    out_dir = Path(out_dir)
    save_encoder_folder(_as_masked_lm(model), tokenizer, out_dir)
    encoder = TextEncoder.from_folder(out_dir)
    probe = encoder.encode_batch(list(PROBE_TEXTS))
    metrics = {
        "steps": steps, "seed": seed, "train_reports": len(train), "heldout_reports": len(heldout),
        "vocab_size": len(tokenizer), "encoder_parameters": sum(p.numel() for p in encoder.model.parameters()),
        "heldout_before": initial, "heldout": final,
        "probe": {"texts": list(PROBE_TEXTS), "relative_difference": _relative_difference(probe[0], probe[1])},
        "wall_time_s": round(time.perf_counter() - started, 1), "encoder_id": encoder.encoder_id,
        "config": asdict(config), "history": history,
    }
    (out_dir / LOG_FILE).write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    logger.info("held-out MLM loss %.3f (was %.3f), paired-section accuracy %.3f; saved %s",
                final["mlm_loss"], initial["mlm_loss"], final["paired_accuracy"], out_dir)
    return metrics


def _as_masked_lm(model):
    """The trained BertForPreTraining as a BertForMaskedLM: the pooler and pairing head are training-only, like
    CXR-BERT's extra heads, so the demo encoder loads exactly like the official one."""
    from transformers import BertForMaskedLM

    from ..models.weights import load_state_dict_strict

    config = copy.deepcopy(model.config)
    config.architectures = ["BertForMaskedLM"]
    masked_lm = BertForMaskedLM(config)
    wanted = masked_lm.state_dict()
    load_state_dict_strict(masked_lm, {k: v for k, v in model.state_dict().items() if k in wanted}, "pretraining")
    return masked_lm


def _train(model, tokenizer, train: list[Report], steps: int, rng: random.Random, config: PretrainConfig) -> list[dict]:
    """AdamW with linear warm-up and decay and gradient clipping at 1; returns the logged loss curve."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    warmup = max(1, round(steps * config.warmup_fraction))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (steps - step) / max(1, steps - warmup))))
    generator = torch.Generator().manual_seed(rng.randrange(2**31))
    model.train()
    history, window = [], []
    for step in range(1, steps + 1):
        pairs = [_pair(train, rng.randrange(len(train)), rng.random() < 0.5, rng) for _ in range(config.batch_size)]
        mlm_loss, pair_loss, _ = _losses(model, tokenizer, pairs, generator, config)
        optimizer.zero_grad()
        (mlm_loss + pair_loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        window.append((mlm_loss.item(), pair_loss.item()))
        if step % config.log_every == 0 or step == steps:
            mlm, pair = (sum(values) / len(window) for values in zip(*window))
            history.append({"step": step, "mlm_loss": round(mlm, 4), "pair_loss": round(pair, 4)})
            logger.info("step %d/%d: MLM loss %.3f, paired-section loss %.3f", step, steps, mlm, pair)
            window = []
    return history


@torch.no_grad()
def _evaluate(model, tokenizer, heldout: list[Report], seed: int, config: PretrainConfig) -> dict:
    """Held-out MLM loss and paired-section accuracy, with fixed masks and every other pair swapped."""
    model.eval()
    rng = random.Random(seed + 1)
    generator = torch.Generator().manual_seed(seed + 1)
    pairs = [_pair(heldout, k, k % 2 == 1, rng) for k in range(len(heldout))]
    mlm_sum, mlm_count, correct = 0.0, 0, 0
    for start in range(0, len(pairs), config.batch_size):
        chunk = pairs[start:start + config.batch_size]
        mlm_loss, _, (n_masked, n_correct) = _losses(model, tokenizer, chunk, generator, config)
        mlm_sum += mlm_loss.item() * n_masked
        mlm_count += n_masked
        correct += n_correct
    return {"mlm_loss": round(mlm_sum / max(1, mlm_count), 4), "paired_accuracy": round(correct / len(pairs), 4)}


def _pair(reports: list[Report], index: int, swap: bool, rng: random.Random) -> tuple[str, str, int]:
    """(Findings, Impression, label): label 1 when the Impression was swapped in from a differently worded report."""
    findings, impression = reports[index]
    if swap:
        for _ in range(32):  # phantom corpora repeat impressions; a swap that reads the same would be a wrong label
            other = reports[rng.randrange(len(reports))][1]
            if other != impression:
                return findings, other, 1
    return findings, impression, 0


def _losses(model, tokenizer, pairs, generator: torch.Generator, config: PretrainConfig):
    """MLM loss (mean over masked tokens), paired-section loss, and (#masked, #pairs classified right)."""
    findings, impressions, labels = zip(*pairs)
    batch = tokenizer(list(findings), list(impressions), padding="longest", truncation="longest_first",
                      max_length=config.max_positions, return_tensors="pt", return_special_tokens_mask=True)
    real = batch.pop("special_tokens_mask").eq(0) & batch["attention_mask"].bool()
    input_ids, mlm_labels = _mask_tokens(batch["input_ids"], real, tokenizer, generator, config.mask_probability)
    output = model(input_ids=input_ids, token_type_ids=batch["token_type_ids"], attention_mask=batch["attention_mask"])
    n_masked = int(mlm_labels.ne(-100).sum())
    mlm_loss = F.cross_entropy(output.prediction_logits.flatten(0, 1), mlm_labels.flatten(),
                               ignore_index=-100, reduction="sum") / max(1, n_masked)
    pair_labels = torch.tensor(labels)
    pair_loss = F.cross_entropy(output.seq_relationship_logits, pair_labels)
    n_correct = int(output.seq_relationship_logits.argmax(-1).eq(pair_labels).sum())
    return mlm_loss, pair_loss, (n_masked, n_correct)


def _mask_tokens(input_ids: torch.Tensor, real: torch.Tensor, tokenizer, generator: torch.Generator,
                 probability: float) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: pick ``probability`` of the real tokens; 80% → [MASK], 10% → random token, 10% unchanged."""
    chosen = (torch.rand(input_ids.shape, generator=generator) < probability) & real
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    roll = torch.rand(input_ids.shape, generator=generator)
    random_ids = torch.randint(len(SPECIAL_TOKENS), len(tokenizer), input_ids.shape, generator=generator)
    masked = torch.where(chosen & (roll < 0.8), torch.full_like(input_ids, tokenizer.mask_token_id), input_ids)
    masked = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_ids, masked)
    return masked, labels


def _relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / mean(‖a‖, ‖b‖): how far apart two reports' features are, relative to their size."""
    return round(float((a - b).norm() / (0.5 * (a.norm() + b.norm()))), 4)
