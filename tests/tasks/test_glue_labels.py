"""A classification checkpoint whose labels are named in another order than the GLUE task's
is put in the task's order; names that are not the task's are refused; unnamed labels are
taken as they are, with a warning."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
import transformers

from bertforge.cli import main
from conftest import FIXTURES, hf_config, tiny_config

GLUE_ORDER = ["contradiction", "entailment", "neutral"]  # GLUE's MNLI files, Google's processor
HF_ORDER = ["entailment", "neutral", "contradiction"]  # e.g. Hugging Face MNLI models


def hf_classifier(path: Path, labels: list[str], vocab_file: Path, rows: list[int] | None = None,
                  seed: int = 0) -> Path:
    """A tiny BertForSequenceClassification saved by transformers, with id2label = labels; its
    classifier rows reordered by `rows` (rows[i] = which seed-model row becomes row i)."""
    torch.manual_seed(seed)
    config = hf_config(tiny_config(vocab_size=30522, max_position_embeddings=128), num_labels=3,
                       id2label=dict(enumerate(labels)), label2id={x: i for i, x in enumerate(labels)})
    model = transformers.BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.normal_(0, 1.0)
        model.classifier.bias.normal_(0, 1.0)
        if rows is not None:
            model.classifier.weight.copy_(model.classifier.weight[rows].clone())
            model.classifier.bias.copy_(model.classifier.bias[rows].clone())
    model.save_pretrained(path)
    shutil.copyfile(vocab_file, path / "vocab.txt")
    return path


def predict_mnli(checkpoint: Path, out: Path) -> list[str]:
    code = main(["predict", "glue", "--task", "mnli", "--data_dir", str(FIXTURES / "glue" / "MNLI"),
                 "--init_checkpoint", str(checkpoint), "--do_lower_case", "true", "--max_seq_length", "64",
                 "--device", "cpu", "--output_dir", str(out)])
    assert code == 0
    return (out / "MNLI-m.tsv").read_text().splitlines()


def test_named_labels_in_another_order_are_reordered(tmp_path, vocab_file, caplog):
    caplog.set_level(logging.INFO)
    # The same network twice: once listing its outputs in GLUE's order, once in Hugging Face's.
    glue_ckpt = hf_classifier(tmp_path / "glue_order", GLUE_ORDER, vocab_file)
    to_hf = [GLUE_ORDER.index(label) for label in HF_ORDER]
    hf_ckpt = hf_classifier(tmp_path / "hf_order", HF_ORDER, vocab_file, rows=to_hf)
    want = predict_mnli(glue_ckpt, tmp_path / "a")
    got = predict_mnli(hf_ckpt, tmp_path / "b")
    assert got == want
    # The permutation between the orders has no fixed point, so without reordering every
    # predicted label name would differ.
    assert all(GLUE_ORDER[i] != HF_ORDER[i] for i in range(3))
    assert "classifier reordered to GLUE's" in caplog.text


def test_other_label_names_are_refused(tmp_path, vocab_file, capsys):
    ckpt = hf_classifier(tmp_path / "sentiment", ["negative", "positive", "neutral"], vocab_file)
    code = main(["predict", "glue", "--task", "mnli", "--data_dir", str(FIXTURES / "glue" / "MNLI"),
                 "--init_checkpoint", str(ckpt), "--do_lower_case", "true", "--max_seq_length", "64",
                 "--device", "cpu", "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "was trained with labels ['negative', 'positive', 'neutral']" in err and "it is not a mnli model" in err
    assert not (tmp_path / "out" / "MNLI-m.tsv").exists()


def test_unnamed_labels_keep_their_order_with_a_warning(tmp_path, vocab_file, caplog):
    ckpt = hf_classifier(tmp_path / "unnamed", ["LABEL_0", "LABEL_1", "LABEL_2"], vocab_file)
    named = hf_classifier(tmp_path / "named", GLUE_ORDER, vocab_file)
    assert predict_mnli(ckpt, tmp_path / "a") == predict_mnli(named, tmp_path / "b")
    assert "assuming they are mnli's labels in GLUE's order" in caplog.text
