"""``medsyn import-official`` on official-format checkpoints built from the fixture: the imported model folder
samples exactly the fixture's DDIM traces, and broken inputs fail with one line and write nothing."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from medsyn.cli import main
from medsyn.codec import lowres_to_sr_condition
from medsyn.diffusion.ddim import ddim_sample
from medsyn.diffusion.guidance import LowResDenoiser, SRDenoiser
from medsyn.models.card import load_card
from medsyn.models.loaded import load_model


def _official_text_folder(folder: Path, hidden: int) -> Path:
    """A CXR-BERT-shaped download: config + vocab + MedSyn's fine-tuned LM as a pickled-tensor .bin."""
    from transformers import BertConfig, BertForMaskedLM

    folder.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "no", "pleural", "effusion", "."]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=512)
    config.save_pretrained(str(folder))
    (folder / "pretrained_lm").mkdir()
    torch.save(BertForMaskedLM(config).state_dict(), folder / "pretrained_lm" / "pytorch_model.bin")
    return folder


@pytest.fixture(scope="module")
def official_files(fixture_dir, tmp_path_factory):
    """Accelerate-style checkpoint folders: index 0 = online (perturbed here), index 1 = EMA (the fixture weights)."""
    root = tmp_path_factory.mktemp("official")
    lowres = load_file(str(fixture_dir / "lowres_state_dict_wrapped.safetensors"))
    for step in (2, 10):  # the importer must pick the largest step numerically
        ckpt = root / "results_low" / f"{step}_ckpt"
        ckpt.mkdir(parents=True)
        ema = lowres if step == 10 else {k: torch.zeros_like(v) for k, v in lowres.items()}
        torch.save({f"module.{k}": v for k, v in ema.items()}, ckpt / "pytorch_model_1.bin")
        torch.save({k: v + 0.5 for k, v in ema.items()}, ckpt / "pytorch_model.bin")
    sr = load_file(str(fixture_dir / "sr_state_dict.safetensors"))
    sr_ckpt = root / "results_sr" / "3_ckpt"
    sr_ckpt.mkdir(parents=True)
    save_file({f"denoise_fn.{k}": v for k, v in sr.items()}, str(sr_ckpt / "model_1.safetensors"))
    save_file({f"denoise_fn.{k}": v + 1 for k, v in sr.items()}, str(sr_ckpt / "model.safetensors"))
    text = _official_text_folder(root / "cxr-bert", hidden=lowres["denoise_fn.null_cond_emb"].shape[-1])
    return root, text


def _import(root: Path, text: Path, out: Path, *extra: str) -> int:
    return main(["import-official", "--lowres", str(root / "results_low"), "--sr", str(root / "results_sr"),
                 "--text-encoder", str(text), "--out", str(out), "--resnet-groups", "4", *extra])


def test_imported_model_reproduces_fixture_traces(official_files, fixture_dir, tmp_path):
    root, text = official_files
    out = tmp_path / "medsyn-official"
    assert _import(root, text, out) == 0
    card = load_card(out)
    assert card.lowres.network["dim_mults"] == [1, 2, 3, 4] and card.grid.lowres_shape_zyx == [64, 64, 64]
    assert any("10_ckpt" in note for note in card.training["import_notes"])
    loaded = load_model(str(out), device="cpu")
    trace = load_file(str(fixture_dir / "ddim_trace.safetensors"))
    for run, scale in (("eval_cs1", 1.0), ("eval_cs3", 3.0)):
        sample = ddim_sample(LowResDenoiser(loaded.lowres, trace["cond"], scale), trace["noise"], steps=4)
        assert torch.allclose((sample + 1) / 2, trace[f"{run}.sample"], atol=1e-3), run
    sample = ddim_sample(SRDenoiser(loaded.sr, trace["sr_x_lr"]), trace["sr_noise"], steps=4)
    assert torch.allclose((sample + 1) / 2, trace["sr_eval.sample"], atol=1e-3)
    sr_io = load_file(str(fixture_dir / "sr_io.safetensors"))
    assert torch.equal(lowres_to_sr_condition(sr_io["lowres01"] * 2 - 1, 4), sr_io["x_lr"])


def test_train_order_and_online_weights_are_selectable(official_files, fixture_dir, tmp_path):
    root, text = official_files
    out = tmp_path / "online"
    assert _import(root, text, out, "--weights", "online", "--up-order", "train") == 0
    loaded = load_model(str(out), device="cpu")
    assert loaded.lowres.up_order == "train"
    ema = load_file(str(fixture_dir / "lowres_state_dict.safetensors"))
    assert torch.allclose(loaded.lowres.state_dict()["init_conv.bias"], ema["init_conv.bias"] + 0.5)


def test_broken_checkpoint_names_keys_and_writes_nothing(official_files, tmp_path, capsys):
    root, text = official_files
    broken = tmp_path / "broken"
    broken.mkdir()
    sd = torch.load(root / "results_low" / "10_ckpt" / "pytorch_model_1.bin", weights_only=True)
    sd.pop("module.denoise_fn.final_conv.1.weight")
    torch.save(sd, broken / "pytorch_model_1.bin")
    out = tmp_path / "model"
    code = main(["import-official", "--lowres", str(broken), "--text-encoder", str(text), "--out", str(out),
                 "--resnet-groups", "4"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "final_conv.1.weight" in err and "\n" not in err
    assert not out.exists()
