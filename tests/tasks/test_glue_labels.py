"""A classification checkpoint whose labels are named in another order than the GLUE task's
(in any case: ENTAILMENT) is put in the task's order; names that are not the task's are
refused; unnamed labels are taken in GLUE's order, with a warning, for two classes only: MNLI's
three need --label_order."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from bertforge.cli import main
from conftest import FIXTURES, hf_config, shared, tiny_config

GLUE_ORDER = ["contradiction", "entailment", "neutral"]  # GLUE's MNLI files, Google's processor
HF_ORDER = ["entailment", "neutral", "contradiction"]  # e.g. Hugging Face MNLI models


def hf_classifier(path: Path, labels: list[str], vocab_file: Path, rows: list[int] | None = None,
                  seed: int = 0, weight_std: float = 1.0) -> Path:
    """A tiny BertForSequenceClassification saved by transformers, with id2label = labels; its
    classifier rows reordered by `rows` (rows[i] = which seed-model row becomes row i)."""
    torch.manual_seed(seed)
    config = hf_config(tiny_config(vocab_size=30522, max_position_embeddings=128), num_labels=len(labels),
                       id2label=dict(enumerate(labels)), label2id={x: i for i, x in enumerate(labels)})
    model = transformers.BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.normal_(0, weight_std)
        model.classifier.bias.normal_(0, 1.0)
        if rows is not None:
            model.classifier.weight.copy_(model.classifier.weight[rows].clone())
            model.classifier.bias.copy_(model.classifier.bias[rows].clone())
    model.save_pretrained(path)
    shutil.copyfile(vocab_file, path / "vocab.txt")
    return path


def predict(checkpoint: Path, out: Path, *extra: str, task: str = "MNLI") -> list[str]:
    """The first test file's submission lines: `predict glue` on the task's fixture files."""
    code = main(["predict", "glue", "--task", task, "--data_dir", str(FIXTURES / "glue" / task),
                 "--init_checkpoint", str(checkpoint), "--do_lower_case", "true", "--max_seq_length", "64",
                 "--device", "cpu", "--output_dir", str(out), *extra])
    assert code == 0
    return (out / ("MNLI-m.tsv" if task == "MNLI" else f"{task}.tsv")).read_text().splitlines()


def predict_mnli(checkpoint: Path, out: Path, *extra: str) -> list[str]:
    return predict(checkpoint, out, *extra)


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


def test_unnamed_binary_labels_keep_their_order_with_a_warning(tmp_path, vocab_file, caplog):
    """Two classes, no names: GLUE's order, as every binary GLUE model on the Hub is trained."""
    ckpt = hf_classifier(tmp_path / "unnamed", ["LABEL_0", "LABEL_1"], vocab_file)
    named = hf_classifier(tmp_path / "named", ["entailment", "not_entailment"], vocab_file)
    assert predict(ckpt, tmp_path / "a", task="RTE") == predict(named, tmp_path / "b", task="RTE")
    assert "assuming they are rte's labels in GLUE's order" in caplog.text


def test_unnamed_mnli_labels_need_label_order(tmp_path, vocab_file, capsys):
    """Three unnamed classes are refused; --label_order says which output is which, in any case."""
    named = hf_classifier(tmp_path / "named", GLUE_ORDER, vocab_file)
    to_hf = [GLUE_ORDER.index(label) for label in HF_ORDER]
    unnamed = hf_classifier(tmp_path / "unnamed", ["LABEL_0", "LABEL_1", "LABEL_2"], vocab_file, rows=to_hf)
    capsys.readouterr()  # transformers' progress bars
    code = main(["predict", "glue", "--task", "mnli", "--data_dir", str(FIXTURES / "glue" / "MNLI"),
                 "--init_checkpoint", str(unnamed), "--do_lower_case", "true", "--device", "cpu",
                 "--output_dir", str(tmp_path / "refused")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "does not name its 3 labels (LABEL_0, LABEL_1, LABEL_2)" in err and "--label_order" in err
    assert not (tmp_path / "refused" / "MNLI-m.tsv").exists()
    want = predict_mnli(named, tmp_path / "a")
    assert predict_mnli(unnamed, tmp_path / "b", "--label_order", "Entailment,NEUTRAL,contradiction") == want


@pytest.mark.parametrize("order, message", [
    ("entailment,neutral", "must name each of GLUE mnli's 3 labels (contradiction, entailment, neutral) once"),
    ("entailment,neutral,neutral", "must name each of GLUE mnli's 3 labels"),
    ("entailment,neutral,contra", "'contra' is not a GLUE mnli label"),
])
def test_a_bad_label_order_is_refused_before_any_work(tmp_path, order, message, capsys):
    code = main(["predict", "glue", "--task", "mnli", "--data_dir", str(FIXTURES / "glue" / "MNLI"),
                 "--init_checkpoint", str(tmp_path / "absent"), "--label_order", order, "--device", "cpu",
                 "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def mnli_dev(root: Path, pairs: list[tuple[str, str]], gold: list[str]) -> Path:
    """An MNLI folder with the pairs' first half as dev_matched, the rest as dev_mismatched."""
    folder = root / "MNLI"
    folder.mkdir(parents=True)
    half = len(pairs) // 2
    for name, rows in (("dev_matched", range(half)), ("dev_mismatched", range(half, len(pairs)))):
        lines = ["index\tsentence1\tsentence2\tgold_label"] + [f"{i}\t{pairs[i][0]}\t{pairs[i][1]}\t{gold[i]}"
                                                               for i in rows]
        (folder / f"{name}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_upper_case_names_in_another_order_are_scored_through_their_names(tmp_path, vocab_file):
    """id2label {0: CONTRADICTION, 1: NEUTRAL, 2: ENTAILMENT}: the dev accuracy is that of
    transformers' argmax read through those names; the same head unnamed, with --label_order."""
    names = ["CONTRADICTION", "NEUTRAL", "ENTAILMENT"]
    ckpt = hf_classifier(tmp_path / "upper", names, vocab_file, seed=3, weight_std=20.0)
    rows = [line.split("\t") for line in
            shared("glue", "MRPC", "dev.tsv").read_text(encoding="utf-8-sig").splitlines()[1:25]]
    pairs = [(row[3], row[4]) for row in rows]
    tokenizer = transformers.BertTokenizer(str(vocab_file), do_lower_case=True)
    model = transformers.BertForSequenceClassification.from_pretrained(ckpt).eval()
    batch = tokenizer([a for a, _ in pairs], [b for _, b in pairs], padding=True, return_tensors="pt")
    assert batch["input_ids"].shape[1] <= 128  # nothing cut: no truncation rule to agree on
    with torch.no_grad():
        predicted = [names[i].lower() for i in model(**batch).logits.argmax(-1).tolist()]
    # Gold: the model's answer for two pairs in three, another label for the third.
    gold = [p if i % 3 else GLUE_ORDER[(GLUE_ORDER.index(p) + 1) % 3] for i, p in enumerate(predicted)]
    half = len(pairs) // 2
    expected = {"accuracy_matched": np.mean([p == g for p, g in zip(predicted[:half], gold[:half])]),
                "accuracy_mismatched": np.mean([p == g for p, g in zip(predicted[half:], gold[half:])])}
    # The test tells orders apart: read in GLUE's order, the same outputs would score otherwise.
    as_if_glue_order = [GLUE_ORDER[names.index(p.upper())] for p in predicted]
    right = np.mean([p == g for p, g in zip(predicted, gold)])
    assert np.mean([p == g for p, g in zip(as_if_glue_order, gold)]) != right
    data_dir = mnli_dev(tmp_path / "glue", pairs, gold)

    def evaluate(checkpoint: Path, out: str, *extra: str) -> dict:
        assert main(["evaluate", "glue", "--task", "mnli", "--data_dir", str(data_dir), "--init_checkpoint",
                     str(checkpoint), "--do_lower_case", "true", "--device", "cpu", "--output_dir",
                     str(tmp_path / out), *extra]) == 0
        return json.loads((tmp_path / out / "eval_results.json").read_text())

    scores = evaluate(ckpt, "named")
    assert {k: scores[k] for k in expected} == pytest.approx(expected, abs=1e-12)
    assert scores["accuracy"] == scores["accuracy_matched"]
    config = json.loads((ckpt / "config.json").read_text())
    config["id2label"] = {str(i): f"LABEL_{i}" for i in range(3)}
    config["label2id"] = {f"LABEL_{i}": i for i in range(3)}
    (ckpt / "config.json").write_text(json.dumps(config))
    scores = evaluate(ckpt, "ordered", "--label_order", ",".join(names))
    assert {k: scores[k] for k in expected} == pytest.approx(expected, abs=1e-12)
