"""Builders and fixtures for the reference-command-line tests (test modules import the fixtures).

The reference files are made here independently of bertforge's readers: NVIDIA's checkpoint
layout (`{'model', 'optimizer', 'epoch'}` with DLE's `dense_act` names and run_pretraining.py's
parameter grouping) is written with transformers' BertForPreTraining and a torch optimizer."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import hf_config, shared, tiny_config

from bertforge.cli import find_command, parse_command, take_launcher_flags
from bertforge.config import BertConfig

VOCAB_SIZE = 30522  # the shared bert-base-uncased vocabulary


def tiny_bert(**overrides) -> BertConfig:
    """A tiny BERT over the shared vocabulary, long enough for 128-token sequences."""
    return tiny_config(vocab_size=VOCAB_SIZE, max_position_embeddings=128, **overrides)


def write_config(path: Path, config: BertConfig | None = None) -> Path:
    (config or tiny_bert()).to_json(path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Prepared pretraining data (80 Wikipedia articles, 64 tokens) for one test module."""
    return prepare_data(tmp_path_factory.mktemp("wiki") / "seq64")


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    """A tiny BERT's bert_config.json."""
    return write_config(tmp_path_factory.mktemp("cfg") / "bert_config.json")


def parse(argv: list[str]):
    """The run config a command line gives, through the CLI's own parsing (no run)."""
    rest, _, _ = take_launcher_flags(list(argv))
    command, rest = find_command(rest)
    cfg, _, _ = parse_command(command, rest)
    return cfg


def read_dllog(path: Path) -> list[dict]:
    """dllogger lines: every line `DLLL ` + one JSON object."""
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines and all(line.startswith("DLLL {") for line in lines), lines[:3]
    return [json.loads(line[len("DLLL "):]) for line in lines]


def logged(records: list[dict], key: str) -> list:
    return [r["data"][key] for r in records if r.get("type") == "LOG" and key in r.get("data", {})]


def metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def prepare_data(out: Path, articles: int = 80) -> Path:
    """Prepared pretraining data: the first Wikipedia articles, 64 tokens, 10 predictions."""
    from bertforge.cli import main

    lines = shared("text", "wiki_summaries_en.jsonl").read_text(encoding="utf-8").splitlines()[:articles]
    corpus = out.parent / f"{out.name}_corpus.jsonl"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["prepare", "pretraining", "--input_file", str(corpus), "--output_dir", str(out),
                 "--vocab_file", str(shared("vocab", "bert-base-uncased", "vocab.txt")), "--max_seq_length", "64",
                 "--max_predictions_per_seq", "10", "--held_out_fraction", "0.1", "--num_workers", "0"]) == 0
    return out


def squad_slice(path: Path, articles: int = 1, questions: int = 24) -> Path:
    """The first questions of the first SQuAD v1.1 dev articles, as a SQuAD file."""
    data = json.loads(shared("squad", "v1.1", "dev-v1.1.json").read_text(encoding="utf-8"))
    kept, left = [], questions
    for article in data["data"][:articles]:
        paragraphs = []
        for p in article["paragraphs"]:
            if left <= 0:
                break
            paragraphs.append({"context": p["context"], "qas": p["qas"][:left]})
            left -= len(paragraphs[-1]["qas"])
        kept.append({"title": article["title"], "paragraphs": paragraphs})
    path.write_text(json.dumps({"version": "1.1", "data": kept}), encoding="utf-8")
    return path


# ---- NVIDIA DLE files ----------------------------------------------------------------------

_NO_DECAY = ("bias", "gamma", "beta", "LayerNorm")  # run_pretraining.py's rule


def dle_names(state: dict) -> dict:
    """transformers' names in DLE's dialect: its fused Linear+activation layers are `dense_act`."""
    out = {}
    for key, value in state.items():
        key = re.sub(r"(intermediate|pooler|transform)\.dense\.", r"\1.dense_act.", key)
        out[key] = value
    return out


def nvidia_pretraining_checkpoint(path: Path, config: BertConfig, lamb_steps: int | None = None, seed: int = 0):
    """A run_pretraining.py `ckpt_<step>.pt`: DLE-named weights, and the optimizer state of the
    parameters grouped as run_pretraining.py groups them, with moments from two Adam steps on
    random gradients. Returns (the transformers model, {DLE name: (exp_avg, exp_avg_sq)})."""
    import transformers

    torch.manual_seed(seed)
    model = transformers.BertForPreTraining(hf_config(config))
    named = [(n, p) for n, p in model.named_parameters()]  # the tied decoder appears once
    groups = [{"params": [p for n, p in named if not any(nd in n for nd in _NO_DECAY)], "weight_decay": 0.01},
              {"params": [p for n, p in named if any(nd in n for nd in _NO_DECAY)], "weight_decay": 0.0}]
    optimizer = torch.optim.Adam(groups, lr=1e-3)
    for _ in range(2):
        for _, p in named:
            p.grad = torch.randn_like(p)
        optimizer.step()
    state = optimizer.state_dict()
    if lamb_steps is not None:
        for group in state["param_groups"]:
            group["step"] = lamb_steps
    moments = {n: (optimizer.state[p]["exp_avg"].clone(), optimizer.state[p]["exp_avg_sq"].clone())
               for n, p in named}
    torch.save({"model": dle_names(model.state_dict()), "optimizer": state, "epoch": 0}, path)
    return model, {k2: v for k2, v in zip(dle_names(dict(moments)).keys(), moments.values())}
