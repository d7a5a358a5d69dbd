"""Evaluation while fine-tuning (--eval_every, --save_best) for SQuAD and GLUE, through the real
command line on a tiny BERT, and the TensorBoard curves of the same run."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from bertforge.cli import main
from conftest import shared


def tiny_config(path):
    path.write_text(json.dumps({
        "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 37, "max_position_embeddings": 128, "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1}))
    return path


def read_metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def train_records(run):
    return [r for r in read_metrics(run) if "loss" in r and "split" not in r]


def eval_records(run):
    return [r for r in read_metrics(run) if r.get("split") == "eval"]


@pytest.fixture(scope="module")
def squad_run(tmp_path_factory, vocab_file, squad_dev_file):
    """5 steps on SQuAD dev article 0, scored on article 38 every 2 steps, keeping the best
    weights, a resumable checkpoint after every step (the weights of each step, to compare
    with), TensorBoard on, predicting after training."""
    root = tmp_path_factory.mktemp("squad-eval")
    out = root / "run"
    code = main(["finetune", "squad", "--do_train", "--do_predict", "--train_file", str(squad_dev_file),
                 "--train_articles", "0:1", "--predict_file", str(squad_dev_file), "--predict_articles", "38:39",
                 "--max_seq_length", "128", "--bert_model", str(tiny_config(root / "tiny.json")),
                 "--vocab_file", str(vocab_file), "--do_lower_case", "true", "--max_steps", "5",
                 "--learning_rate", "1e-3", "--train_batch_size", "8", "--log_every", "1",
                 "--eval_every", "2", "--save_best", "--save_every", "1", "--keep_checkpoints", "10",
                 "--report_to", "jsonl,tensorboard", "--output_dir", str(out)])
    assert code == 0
    return out


@pytest.mark.slow
def test_squad_eval_records_at_the_right_steps(squad_run):
    evals = eval_records(squad_run)
    assert [r["step"] for r in evals] == [2, 4, 5]  # every 2 steps, and after the last
    for r in evals:
        assert r.keys() == {"step", "split", "exact_match", "f1"}
        assert 0 <= r["exact_match"] <= r["f1"] <= 100
    assert [r["step"] for r in train_records(squad_run)] == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_save_best_keeps_the_weights_of_the_best_evaluation(squad_run):
    evals = eval_records(squad_run)
    best = max(evals, key=lambda r: r["f1"])  # the first of equals, as save_best keeps the earlier
    assert best["step"] != 5, "the last evaluation was the best: this run cannot tell best from last"
    meta = json.loads((squad_run / "bertforge.json").read_text())
    assert (meta["best_step"], meta["best_metric"]) == (best["step"], "f1")
    assert meta["best_value"] == pytest.approx(best["f1"], abs=1e-12)
    final = load_file(str(squad_run / "model.safetensors"))
    at_best = load_file(str(squad_run / "checkpoints" / f"step_{best['step']:08d}" / "model.safetensors"))
    at_last = load_file(str(squad_run / "checkpoints" / "step_00000005" / "model.safetensors"))
    assert final.keys() == at_best.keys()
    assert all(torch.equal(final[k], at_best[k]) for k in final)
    assert not all(torch.equal(final[k], at_last[k]) for k in final)
    # the predictions made after training come from those weights: the same F1 as at that step
    scores = json.loads((squad_run / "eval_results.json").read_text())
    assert scores["f1"] == pytest.approx(best["f1"], abs=1e-9)
    assert not (squad_run / "best").exists()  # its weights are the run's own now


@pytest.mark.slow
def test_tensorboard_curves_equal_metrics_jsonl(squad_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((squad_run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(squad_run / "tensorboard"))
    acc.Reload()
    loss = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    expected = [(r["step"], r["loss"]) for r in train_records(squad_run)]
    assert [s for s, _ in loss] == [s for s, _ in expected]
    # TensorBoard stores float32
    assert [v for _, v in loss] == pytest.approx([v for _, v in expected], rel=1e-6)
    lr = [(e.step, e.value) for e in acc.Scalars("train/lr")]
    assert [v for _, v in lr] == pytest.approx([r["lr"] for r in train_records(squad_run)], rel=1e-6)
    f1 = [(e.step, e.value) for e in acc.Scalars("eval/f1")]
    assert f1 == [(r["step"], pytest.approx(r["f1"], rel=1e-6)) for r in eval_records(squad_run)]


@pytest.mark.slow
def test_glue_eval_every_and_save_best(tmp_path, vocab_file):
    out = tmp_path / "mrpc"
    code = main(["finetune", "glue", "--task", "mrpc", "--data_dir", str(shared("glue", "MRPC")), "--do_train",
                 "--bert_model", str(tiny_config(tmp_path / "tiny.json")), "--vocab_file", str(vocab_file),
                 "--do_lower_case", "true", "--max_seq_length", "64", "--max_steps", "3",
                 "--train_batch_size", "8", "--learning_rate", "1e-3", "--log_every", "1",
                 "--eval_every", "2", "--save_best", "--output_dir", str(out)])
    assert code == 0
    evals = eval_records(out)
    assert [r["step"] for r in evals] == [2, 3]
    assert all(r.keys() == {"step", "split", "accuracy", "f1"} for r in evals)
    best = max(evals, key=lambda r: r["accuracy"])
    meta = json.loads((out / "bertforge.json").read_text())
    assert (meta["best_step"], meta["best_metric"], meta["task"]) == (best["step"], "accuracy", "glue/mrpc")
    assert meta["labels"] == ["not_equivalent", "equivalent"]


def test_save_best_needs_eval_every_and_eval_needs_answers(tmp_path, capsys, vocab_file, squad_dev_file):
    common = ["--bert_model", "tiny", "--vocab_file", str(vocab_file), "--do_lower_case", "true",
              "--output_dir", str(tmp_path / "out")]
    assert main(["finetune", "squad", "--do_train", "--train_file", str(squad_dev_file), "--save_best",
                 *common]) == 2
    assert "--save_best needs --eval_every" in capsys.readouterr().err
    assert main(["finetune", "squad", "--do_train", "--train_file", str(squad_dev_file), "--eval_every", "2",
                 *common]) == 2
    assert "--eval_every scores --predict_file" in capsys.readouterr().err
    assert main(["finetune", "glue", "--do_train", "--data_dir", str(tmp_path), "--eval_every", "0",
                 *common]) == 2
    assert "--eval_every must be at least 1" in capsys.readouterr().err
