"""NVIDIA DeepLearningExamples `.pt` checkpoints, built here the way DLE's scripts save them
(from a transformers model, renamed to DLE's modeling.py names, vocabulary padded to a multiple
of 8), loaded with bertforge and compared with the transformers model they came from."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
import transformers

from bertforge.checkpoint import detect_format, load_checkpoint, load_into
from bertforge.errors import CheckpointError
from bertforge.model import build_model
from conftest import assert_same_qa_logits, hf_config, random_batch, tiny_config

VOCAB = 99  # bert_config.json's size; DLE pads the embeddings to 104 rows
PADDED = 104


def randomized(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(3)
    with torch.no_grad():  # every tensor distinctive, LayerNorms included
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def dle_state(hf_state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """transformers names -> DLE's: LinearActivation layers are `dense_act`, the MLM decoder has
    no bias of its own, and word embeddings / MLM bias are padded to PADDED rows."""
    g = torch.Generator().manual_seed(4)
    out = {}
    for key, value in hf_state.items():
        if key in ("cls.predictions.decoder.bias", "bert.embeddings.position_ids"):
            continue
        for layer in ("intermediate.dense.", "pooler.dense.", "transform.dense."):
            key = key.replace(layer, layer.replace("dense.", "dense_act."))
        out[prefix + key] = value.clone()
    for key in ("bert.embeddings.word_embeddings.weight", "cls.predictions.bias"):
        if prefix + key in out:
            value = out[prefix + key]
            extra = torch.randn((PADDED - VOCAB, *value.shape[1:]), generator=g)
            out[prefix + key] = torch.cat([value, extra])
    decoder = prefix + "cls.predictions.decoder.weight"
    if decoder in out:  # tied, as in DLE
        out[decoder] = out[prefix + "bert.embeddings.word_embeddings.weight"]
    return out


def write_dle(tmp_path: Path, payload, name: str = "ckpt_8601.pt", legacy: bool = False) -> Path:
    """`legacy`: the pre-1.6 (non-zip) format of torch.save that 2019-era DLE files have."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    torch.save(payload, tmp_path / name, _use_new_zipfile_serialization=not legacy)
    (tmp_path / "bert_config.json").write_text(json.dumps(tiny_config(vocab_size=VOCAB).to_dict()))
    return tmp_path / name


def pretraining_payload(model_state: dict, **extra) -> dict:
    """What run_pretraining.py saves besides the model (final step: data_loader None)."""
    master = [torch.nn.Parameter(v.float().clone()) for v in list(model_state.values())[:3]]
    return {"model": model_state,
            "optimizer": {"state": {0: {"exp_avg": torch.zeros(3), "step": 5}},
                          "param_groups": [{"lr": 6e-3, "betas": (0.9, 0.999), "params": [0]}]},
            "master params": master, "files": [3, "/data/part_3.hdf5", "/data/part_1.hdf5"],
            "epoch": 1, "data_loader": None, **extra}


def compare_pretraining(path: Path, theirs) -> None:
    ckpt = load_checkpoint(path)
    assert ckpt.format == "nvidia"
    assert ckpt.config.vocab_size == PADDED  # adopted from the checkpoint, bert_config says 99
    model = build_model(ckpt.config, "pretraining").eval()
    load_into(model, ckpt, require_head=True)
    batch = random_batch(tiny_config(vocab_size=VOCAB), seq=16)
    with torch.no_grad():
        out, ref = model(**batch), theirs(**batch)
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(out.mlm_logits[..., :VOCAB][mask], ref.prediction_logits[mask],
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(out.nsp_logits, ref.seq_relationship_logits, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def hf_pretraining():
    return randomized(transformers.BertForPreTraining(hf_config(tiny_config(vocab_size=VOCAB))))


@pytest.mark.parametrize("prefix", ["", "module."], ids=["plain", "ddp"])
def test_pretraining_checkpoint_matches_transformers(tmp_path, hf_pretraining, prefix):
    state = dle_state(hf_pretraining.state_dict(), prefix)
    assert any(".dense_act." in k for k in state)
    assert state[f"{prefix}cls.predictions.bias"].shape == (PADDED,)
    path = write_dle(tmp_path, pretraining_payload(state))
    compare_pretraining(path, hf_pretraining)
    # the padded rows are kept as they are, not zeroed or cut
    ckpt = load_checkpoint(path)
    torch.testing.assert_close(ckpt.state["mlm.bias"][VOCAB:], state[f"{prefix}cls.predictions.bias"][VOCAB:],
                               rtol=0, atol=0)


def test_bare_state_dict_and_directory(tmp_path, hf_pretraining):
    path = write_dle(tmp_path / "dir", dle_state(hf_pretraining.state_dict()), name="bert_base.pt")
    assert detect_format(path.parent) == "nvidia"
    compare_pretraining(path.parent, hf_pretraining)


class PretrainingDataset:
    """Stands for DLE's own dataset class, pickled inside a mid-training DataLoader."""

    def __init__(self, files):
        self.files = files


class RunsCodeWhenUnpickled:
    """What a malicious checkpoint could hold: unpickling it creates a directory."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_data_loader_entry_is_not_unpickled(tmp_path, hf_pretraining, legacy):
    """weights_only refuses a mid-training checkpoint's DataLoader; the fallback reads the model
    and runs none of the file's code."""
    marker = tmp_path / "code_ran"
    loader = torch.utils.data.DataLoader(PretrainingDataset(["/data/part_0.hdf5"]), batch_size=2)
    payload = pretraining_payload(dle_state(hf_pretraining.state_dict()), data_loader=loader,
                                  extra=RunsCodeWhenUnpickled(marker))
    path = write_dle(tmp_path / "ckpt", payload, legacy=legacy)
    with pytest.raises(pickle.UnpicklingError):  # the strict reader alone cannot read this file
        torch.load(path, weights_only=True)
    compare_pretraining(path, hf_pretraining)
    assert not marker.exists()


def test_squad_checkpoint_matches_transformers(tmp_path):
    theirs = randomized(transformers.BertForQuestionAnswering(hf_config(tiny_config(vocab_size=VOCAB))))
    path = write_dle(tmp_path, {"model": dle_state(theirs.state_dict())}, name="pytorch_model.pt")
    ckpt = load_checkpoint(path)
    assert ckpt.heads == {"qa"} and ckpt.config.vocab_size == PADDED
    model = build_model(ckpt.config, "qa").eval()
    load_into(model, ckpt, require_head=True)
    batch = random_batch(tiny_config(vocab_size=VOCAB), seq=16, seed=1)
    assert_same_qa_logits(model, theirs, batch)


def test_unpadded_vocab_mismatch_is_reported(tmp_path, hf_pretraining):
    state = dle_state(hf_pretraining.state_dict())
    state["bert.embeddings.word_embeddings.weight"] = torch.randn(120, 32)  # not DLE's padding of 99
    state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"]
    ckpt = load_checkpoint(write_dle(tmp_path, {"model": state}))
    assert ckpt.config.vocab_size == VOCAB
    with pytest.raises(CheckpointError,
                       match=r"wrong shape .*word_embeddings\.weight: checkpoint \(120, 32\)"):
        load_into(build_model(ckpt.config, "pretraining"), ckpt)


def test_not_a_checkpoint(tmp_path):
    path = write_dle(tmp_path, {"epoch": 3, "files": ["a"]})
    with pytest.raises(CheckpointError, match=r"expected a state dict or \{'model': state_dict, \.\.\.\}"):
        load_checkpoint(path)
    good = write_dle(tmp_path, {"model": {"w": torch.zeros(2)}}, name="good.pt")
    good.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="cannot read PyTorch checkpoint"):
        load_checkpoint(good)


@pytest.mark.parametrize("names,config_vocab", [("dle", PADDED), ("dle", VOCAB), ("hf", VOCAB)],
                         ids=["dle-names-padded-config", "dle-names-google-config", "hf-names"])
def test_run_squad_output_directory(tmp_path, names, config_vocab):
    """DLE's run_squad.py saves `{"model": state_dict}` as pytorch_model.bin, and beside it the
    bert_config.json of its own BertConfig: vocab_size already padded, plus a key of its own."""
    theirs = randomized(transformers.BertForQuestionAnswering(hf_config(tiny_config(vocab_size=VOCAB))))
    state = dle_state(theirs.state_dict()) if names == "dle" else dict(theirs.state_dict())
    out = tmp_path / "squad_output"
    out.mkdir()
    torch.save({"model": state}, out / "pytorch_model.bin")
    cfg = tiny_config(vocab_size=config_vocab)
    (out / "bert_config.json").write_text(json.dumps({
        "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
        "hidden_size": cfg.hidden_size, "initializer_range": 0.02,
        "intermediate_size": cfg.intermediate_size, "max_position_embeddings": cfg.max_position_embeddings,
        "num_attention_heads": cfg.num_attention_heads, "num_hidden_layers": cfg.num_hidden_layers,
        "type_vocab_size": cfg.type_vocab_size, "vocab_size": config_vocab,
        "output_all_encoded_layers": False}))
    batch = random_batch(tiny_config(vocab_size=VOCAB), seq=16, seed=2)
    for path in (out, out / "pytorch_model.bin"):
        ckpt = load_checkpoint(path)
        assert ckpt.heads == {"qa"}
        assert ckpt.config.vocab_size == (PADDED if names == "dle" else VOCAB)
        model = build_model(ckpt.config, "qa").eval()
        load_into(model, ckpt, require_head=True)
        assert_same_qa_logits(model, theirs, batch)
