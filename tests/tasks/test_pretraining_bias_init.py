"""`bertforge pretrain --mlm_bias_init unigram`: a model from random weights starts with the
masked-LM output bias at the log frequencies of the training targets (benchmarks/ACCURACY.md
says why: from a zero bias, short runs learn word frequency into the word embeddings).

The expected bias is counted here from the prepared instances and the vocabulary file, not
with the code under test."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import prepare_wiki_slice
from safetensors.numpy import load_file

from bertforge.cli import main
from bertforge.data.pretraining import PretrainingDataset

VOCAB_SIZE = 30522


@pytest.fixture(scope="module")
def run_root(tmp_path_factory, vocab_file) -> Path:
    root = tmp_path_factory.mktemp("bias_init")
    prepare_wiki_slice(root, 120, vocab_file)
    (root / "tiny.json").write_text(json.dumps({
        "vocab_size": VOCAB_SIZE, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 37, "max_position_embeddings": 64}))
    return root


def expected_log_probs(data_dir: Path, vocab_file: Path) -> tuple[np.ndarray, np.ndarray]:
    """log((count + 1) / (total + V)) and the counts, over the train split's tokens other than
    [CLS], [SEP] and [PAD]."""
    vocab = {line.rstrip("\n"): i for i, line in enumerate(vocab_file.read_text(encoding="utf-8").splitlines())}
    skip = {vocab["[CLS]"], vocab["[SEP]"], vocab["[PAD]"]}
    ds = PretrainingDataset(data_dir, "train")
    counts = Counter(int(t) for i in range(ds.num_samples) for t in ds.instance(i)[0] if int(t) not in skip)
    total = sum(counts.values())
    return (np.array([math.log((counts.get(i, 0) + 1) / (total + VOCAB_SIZE)) for i in range(VOCAB_SIZE)]),
            np.array([counts.get(i, 0) for i in range(VOCAB_SIZE)]))


def argv(root: Path, vocab_file: Path, out: str, *extra: str) -> list[str]:
    return ["pretrain", "--input_dir", str(root / "prepared"), "--bert_model", str(root / "tiny.json"),
            "--vocab_file", str(vocab_file), "--do_lower_case", "true", "--max_steps", "1",
            "--train_batch_size", "16", "--learning_rate", "1e-4", "--warmup_proportion", "0",
            "--log_every", "1", "--device", "cpu", "--output_dir", str(root / out), *extra]


def first_mlm_loss(run: Path) -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return next(r["mlm_loss"] for r in rows if "seq_per_s" in r)


def test_targets_are_the_counted_tokens(run_root):
    """Every masked-LM label the data yields is a token the counts saw."""
    ds = PretrainingDataset(run_root / "prepared", "train")
    counts = ds.target_counts()
    assert counts.shape == (VOCAB_SIZE,)
    batch = ds.collate(np.arange(ds.num_samples), epoch=0)
    labels = batch["masked_lm_ids"].numpy()[batch["masked_lm_weights"].numpy() > 0]
    assert len(labels) > 100 and (counts[labels] > 0).all()


def test_unigram_bias_and_first_loss(run_root, vocab_file):
    expected, counts = expected_log_probs(run_root / "prepared", vocab_file)
    assert main(argv(run_root, vocab_file, "unigram", "--mlm_bias_init", "unigram")) == 0
    assert main(argv(run_root, vocab_file, "zero")) == 0
    bias = load_file(str(run_root / "unigram" / "model.safetensors"))["mlm.bias"]
    # one update at lr 1e-4 (the bias has no weight decay, so no trust ratio) moves it by ~1e-4
    assert np.abs(bias - expected).max() < 1e-3
    # The first loss: near the unigram's cross-entropy on the data (about 6-7 nats on this text)
    # with the bias, near ln V = 10.3 without.
    cross_entropy = -(counts * expected).sum() / counts.sum()
    unigram, zero = first_mlm_loss(run_root / "unigram"), first_mlm_loss(run_root / "zero")
    print(f"first MLM loss: unigram bias {unigram:.3f}, zero bias {zero:.3f}; unigram cross-entropy {cross_entropy:.3f}")
    assert abs(unigram - cross_entropy) < 1.0
    assert abs(zero - math.log(VOCAB_SIZE)) < 0.3


def test_refused_where_it_cannot_hold(run_root, vocab_file, capsys):
    assert main(argv(run_root, vocab_file, "trained")) == 0
    assert main(argv(run_root, vocab_file, "again", "--mlm_bias_init", "unigram",
                     "--init_checkpoint", str(run_root / "trained"))) == 2
    err = capsys.readouterr().err
    assert "has a trained masked-LM head" in err
    assert not (run_root / "again" / "model.safetensors").exists()
    assert main(argv(run_root, vocab_file, "bad", "--mlm_bias_init", "bigram")) == 2
    assert "bigram" in capsys.readouterr().err
