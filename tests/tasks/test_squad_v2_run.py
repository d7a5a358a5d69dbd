"""SQuAD v2.0 through the command line on a tiny BERT: training on answerable and unanswerable
questions, evaluation while training, prediction with null odds, and the threshold."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

from bertforge.cli import main


def tiny_config(path):
    path.write_text(json.dumps({
        "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 37, "max_position_embeddings": 128}))
    return path


def read(path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def v2_run(tmp_path_factory, vocab_file, squad_v2_dev_file):
    root = tmp_path_factory.mktemp("squad-v2")
    out = root / "run"
    code = main(["finetune", "squad", "--do_train", "--do_predict", "--version_2_with_negative",
                 "--train_file", str(squad_v2_dev_file), "--train_articles", "0:1",
                 "--predict_file", str(squad_v2_dev_file), "--predict_articles", "38:39",
                 "--max_seq_length", "128", "--bert_model", str(tiny_config(root / "tiny.json")),
                 "--vocab_file", str(vocab_file), "--do_lower_case", "true", "--max_steps", "4",
                 "--learning_rate", "1e-3", "--train_batch_size", "8", "--log_every", "1",
                 "--eval_every", "2", "--json_summary", str(root / "dllogger.json"), "--output_dir", str(out)])
    assert code == 0
    return out


def test_training_and_prediction_run_end_to_end(v2_run, squad_v2_dev_file):
    records = [json.loads(line) for line in (v2_run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r and "split" not in r]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    evals = [r for r in records if r.get("split") == "eval"]
    assert [r["step"] for r in evals] == [2, 4] and all("HasAns_f1" in r and "NoAns_f1" in r for r in evals)

    raw = read(squad_v2_dev_file)["data"][38]["paragraphs"]
    ids = [qa["id"] for p in raw for qa in p["qas"]]
    predictions, nbest, odds = (read(v2_run / name) for name in
                                ("predictions.json", "nbest_predictions.json", "null_odds.json"))
    assert list(predictions) == list(nbest) == list(odds) == ids
    assert all("" in [e["text"] for e in entries] for entries in nbest.values())
    # Threshold 0: "" exactly where the null score beats the best non-null one.
    for qid, text in predictions.items():
        best = next((e["text"] for e in nbest[qid] if e["text"]), "")
        assert text == ("" if odds[qid] > 0.0 else best)
    scores = read(v2_run / "eval_results.json")
    assert scores["total"] == len(ids) and scores["NoAns_total"] == len(raw)
    assert scores["HasAns_total"] + scores["NoAns_total"] == scores["total"]
    assert {"best_f1", "best_f1_thresh", "best_exact", "best_exact_thresh"} <= scores.keys()
    assert 0 <= scores["exact"] <= scores["f1"] <= scores["best_f1"] <= 100
    # NVIDIA's summary line reads the v2.0 "exact" as exact_match.
    lines = [json.loads(line[len("DLLL "):]) for line in (v2_run.parent / "dllogger.json").read_text().splitlines()]
    summary = {k: v for r in lines if r.get("step") == [] for k, v in r.get("data", {}).items()}
    assert (summary["exact_match"], summary["F1"]) == (scores["exact"], scores["f1"])


def test_predict_with_a_threshold(v2_run, squad_v2_dev_file, tmp_path):
    odds = read(v2_run / "null_odds.json")
    threshold = float(np.median(list(odds.values())))
    out = tmp_path / "predict"
    assert main(["predict", "squad", "--init_checkpoint", str(v2_run), "--predict_file", str(squad_v2_dev_file),
                 "--predict_articles", "38:39", "--max_seq_length", "128", "--version_2_with_negative=True",
                 f"--null_score_diff_threshold={threshold}", "--output_dir", str(out)]) == 0
    assert read(out / "null_odds.json") == pytest.approx(odds, abs=1e-4)
    predictions, nbest = read(out / "predictions.json"), read(out / "nbest_predictions.json")
    empty = {q for q, text in predictions.items() if text == ""}
    without_candidate = {q for q, entries in nbest.items() if not any(e["text"] for e in entries)}
    above = {q for q, x in read(out / "null_odds.json").items() if x > threshold}
    assert empty - without_candidate == above - without_candidate
    assert 0 < len(empty) < len(predictions)


def test_v1_prediction_of_a_v2_file_warns(v2_run, squad_v2_dev_file, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    out = tmp_path / "v1"
    assert main(["predict", "squad", "--init_checkpoint", str(v2_run), "--predict_file", str(squad_v2_dev_file),
                 "--predict_articles", "38:39", "--max_seq_length", "128", "--output_dir", str(out)]) == 0
    assert "unanswerable questions (is_impossible)" in caplog.text and "--version_2_with_negative" in caplog.text
    assert not (out / "null_odds.json").exists() and not (out / "eval_results.json").exists()


def test_v1_training_skips_unanswerable_questions(tmp_path, vocab_file, squad_v2_dev_file):
    out = tmp_path / "run"
    assert main(["finetune", "squad", "--do_train", "--train_file", str(squad_v2_dev_file), "--train_articles", "0:1",
                 "--max_seq_length", "128", "--bert_model", str(tiny_config(tmp_path / "tiny.json")),
                 "--vocab_file", str(vocab_file), "--do_lower_case", "true", "--max_steps", "1",
                 "--train_batch_size", "4",
                 "--output_dir", str(out)]) == 0
    problems = read(out / "train_problems.json")
    assert problems and all(p["id"].startswith("neg-") and "version_2_with_negative" in p["problem"]
                            for p in problems)


def test_eval_every_on_a_v2_file_without_the_flag_names_it(tmp_path, vocab_file, squad_v2_dev_file, capsys):
    code = main(["finetune", "squad", "--do_train", "--train_file", str(squad_v2_dev_file), "--train_articles", "0:1",
                 "--predict_file", str(squad_v2_dev_file), "--predict_articles", "38:39", "--eval_every", "2",
                 "--max_seq_length", "128", "--bert_model", str(tiny_config(tmp_path / "tiny.json")),
                 "--vocab_file", str(vocab_file), "--do_lower_case", "true", "--max_steps", "2",
                 "--train_batch_size", "4", "--output_dir", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert "questions without answers" in err and "add --version_2_with_negative" in err


def test_the_python_api_decodes_a_v2_checkpoint_as_v2(v2_run, squad_v2_dev_file):
    """A checkpoint fine-tuned with --version_2_with_negative answers "" through bertforge.load
    (and so the server and `predict squad --question`) as predict squad does: by its null odds."""
    import bertforge

    raw = read(squad_v2_dev_file)["data"][38]["paragraphs"]
    pairs = [(qa["id"], qa["question"], p["context"]) for p in raw for qa in p["qas"]]
    nbest, odds = read(v2_run / "nbest_predictions.json"), read(v2_run / "null_odds.json")
    qa = bertforge.load(str(v2_run))
    questions, contexts = [q for _, q, _ in pairs], [c for _, _, c in pairs]
    threshold = float(np.median(list(odds.values())))  # some "" and some spans, whatever the model
    answers = qa.answer(questions, contexts, max_seq_length=128, null_score_diff_threshold=threshold)
    expected = [("" if odds[qid] > threshold else next(e["text"] for e in nbest[qid] if e["text"]))
                for qid, _, _ in pairs]
    assert [a.text for a in answers] == expected
    assert "" in expected and any(expected)
    for a, (qid, _, context) in zip(answers, pairs):
        if a.text:
            assert " ".join(context[a.start:a.end].split()) == a.text
        else:
            null = next(e for e in nbest[qid] if e["text"] == "")
            assert (a.start, a.end) == (0, 0) and a.score == pytest.approx(null["probability"])
    # v1.1 decoding on request: the best non-null span, never "".
    v1 = qa.answer(questions, contexts, max_seq_length=128, allow_no_answer=False)
    assert all(a.text for a in v1)
