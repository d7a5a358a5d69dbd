"""SQuAD v2.0 data: unanswerable questions read, trained on the null span at [CLS], and decoded
with Google's null answer; compared with Google's run_squad.py as written out in
`google_squad.py`, and round-tripped through the official v2.0 metric."""

from __future__ import annotations

import json

import numpy as np
import pytest
from google_squad import google_features, google_predictions
from google_tokenization import GoogleTokenizer

from bertforge.data import squad
from bertforge.errors import DataError
from bertforge.evaluate.squad import evaluate
from bertforge.tokenization import WordPieceTokenizer

SMALL = dict(max_seq_length=96, doc_stride=32, max_query_length=16)  # many windows per context


@pytest.fixture(scope="module")
def v2_examples(squad_v2_dev_file):
    examples, problems = squad.read_squad_examples(squad_v2_dev_file, is_training=True,
                                                   version_2_with_negative=True)
    assert problems == []
    return examples


@pytest.fixture(scope="module")
def tokenizers(vocab_file):
    return WordPieceTokenizer(vocab_file, do_lower_case=True), GoogleTokenizer(vocab_file, do_lower_case=True)


def write_squad(tmp_path, qas, context="The cat sat on the mat."):
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"version": "v2.0", "data": [
        {"title": "T", "paragraphs": [{"context": context, "qas": qas}]}]}))
    return path


# ---- reading ---------------------------------------------------------------------------------


def test_unanswerable_questions_are_training_examples_only_for_v2(tmp_path):
    path = write_squad(tmp_path, [
        {"id": "cat", "question": "Who sat?", "answers": [{"text": "cat", "answer_start": 4}],
         "is_impossible": False},
        {"id": "dog", "question": "Where is the dog?", "answers": [], "is_impossible": True,
         "plausible_answers": [{"text": "mat", "answer_start": 19}]}])
    examples, problems = squad.read_squad_examples(path, is_training=True, version_2_with_negative=True)
    assert problems == []
    cat, dog = examples
    assert (cat.is_impossible, cat.start_position, cat.end_position) == (False, 1, 1)
    assert (dog.is_impossible, dog.start_position, dog.end_position, dog.answers) == (True, None, None, [])

    examples, problems = squad.read_squad_examples(path, is_training=True)
    assert [e.qas_id for e in examples] == ["cat"]
    assert [p.qas_id for p in problems] == ["dog"] and "version_2_with_negative" in problems[0].message

    examples, problems = squad.read_squad_examples(path, is_training=False)
    assert problems == [] and [e.is_impossible for e in examples] == [False, True]


def test_is_impossible_must_be_a_boolean(tmp_path):
    path = write_squad(tmp_path, [{"id": "q", "question": "?", "answers": [], "is_impossible": "yes"}])
    with pytest.raises(DataError, match=r"qas\[0\]\.is_impossible must be true or false, got 'yes'"):
        squad.read_squad_examples(path, is_training=False)


# ---- features --------------------------------------------------------------------------------


def test_training_features_match_google_with_null_spans(v2_examples, tokenizers):
    sample = v2_examples[::50]
    assert sum(e.is_impossible for e in sample) > 10
    ours_tok, google_tok = tokenizers
    features = squad.convert_examples_to_features(sample, ours_tok, is_training=True, progress=False, **SMALL)
    expected = google_features(sample, google_tok, **SMALL)
    assert features.start_positions.tolist() == [f["start"] for f in expected]
    assert features.end_positions.tolist() == [f["end"] for f in expected]
    impossible = np.array([sample[i].is_impossible for i in features.example_index])
    assert (features.start_positions[impossible] == 0).all() and (features.end_positions[impossible] == 0).all()
    assert (features.start_positions[~impossible] > 0).any()


# ---- decoding --------------------------------------------------------------------------------


def noisy_logits(features, seed, null_shift):
    """Noise with a bump at the gold tokens and [CLS] logits around `null_shift`, so that the null
    answer lands anywhere in the n-best lists and sometimes outside them."""
    rng = np.random.default_rng(seed)
    shape = features.input_ids.shape
    start = (2 * rng.standard_normal(shape)).astype(np.float32)
    end = (2 * rng.standard_normal(shape)).astype(np.float32)
    rows = np.arange(shape[0])
    start[rows, features.start_positions] += 3
    end[rows, features.end_positions] += 3
    start[:, 0] += null_shift
    padding = features.attention_mask == 0
    start[padding] = end[padding] = -1e30  # Google ranks padding too: lowest, it never competes
    return start, end


@pytest.mark.parametrize("threshold", [0.0, -1.5, 2.0])
@pytest.mark.parametrize("null_shift", [0.0, 3.0])
def test_postprocess_v2_matches_google(v2_examples, tokenizers, threshold, null_shift):
    sample = v2_examples[::50]
    ours_tok, google_tok = tokenizers
    features = squad.convert_examples_to_features(sample, ours_tok, is_training=True, progress=False, **SMALL)
    start, end = noisy_logits(features, seed=int(null_shift), null_shift=null_shift)
    predictions, nbest, null_odds = squad.postprocess_v2(sample, features, start, end,
                                                          null_score_diff_threshold=threshold, progress=False)
    expected, expected_nbest, expected_odds = google_predictions(
        sample, google_features(sample, google_tok, **SMALL), start.astype(np.float64).tolist(),
        end.astype(np.float64).tolist(), True, version_2_with_negative=True,
        null_score_diff_threshold=threshold)
    assert predictions == expected
    assert null_odds == expected_odds
    assert list(nbest) == list(expected_nbest)
    for qid, entries in nbest.items():
        assert [(e["text"], e["start_logit"], e["end_logit"]) for e in entries] == [
            (e["text"], e["start_logit"], e["end_logit"]) for e in expected_nbest[qid]]
        assert [e["probability"] for e in entries] == pytest.approx(
            [e["probability"] for e in expected_nbest[qid]], abs=1e-12)
    # The cases that matter all occur: "" predicted and not, the null answer inside the n best
    # and added after them.
    assert 0 < sum(p == "" for p in predictions.values()) < len(sample)
    null_places = [next(i for i, e in enumerate(entries) if e["text"] == "") for entries in nbest.values()]
    assert any(i < 20 and i < len(entries) - 1 for i, entries in zip(null_places, nbest.values()))
    assert any(i == 20 for i in null_places)


def test_null_score_is_the_smallest_over_windows_and_the_threshold_is_strict(tmp_path, tokenizers):
    context = " ".join(f"word{i}" for i in range(150))
    path = write_squad(tmp_path, [{"id": "q", "question": "Which word?", "answers": [], "is_impossible": True}],
                       context)
    examples, _ = squad.read_squad_examples(path, is_training=False, version_2_with_negative=True)
    features = squad.convert_examples_to_features(examples, tokenizers[0], progress=False, **SMALL)
    assert len(features) >= 3
    start = np.zeros(features.input_ids.shape)
    end = np.zeros_like(start)
    start[:, 0] = [5.0, 1.0, *[1.0] * (len(features) - 2)]  # windows 1.. tie: window 1 is the min
    end[:, 0] = 0.5
    start[0, features.doc_offset[0] + 2] = 2.0  # the best non-null span, in window 0: score 2
    predictions, nbest, odds = squad.postprocess_v2(examples, features, start, end, progress=False)
    assert odds == {"q": pytest.approx(1.5 - 2.0)}
    assert predictions["q"] != "" and nbest["q"][0]["text"] == predictions["q"]
    null_entry = next(e for e in nbest["q"] if e["text"] == "")
    assert (null_entry["start_logit"], null_entry["end_logit"], null_entry["start"], null_entry["end"]) == (
        1.0, 0.5, 0, 0)
    at, _, _ = squad.postprocess_v2(examples, features, start, end, null_score_diff_threshold=-0.5,
                                    progress=False)
    below, _, _ = squad.postprocess_v2(examples, features, start, end, null_score_diff_threshold=-0.51,
                                       progress=False)
    assert at["q"] == predictions["q"] and below["q"] == ""


def test_example_without_window_or_candidate_predicts_empty(tmp_path, tokenizers):
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"version": "v2.0", "data": [{"title": "T", "paragraphs": [
        {"context": "\x07", "qas": [{"id": "void", "question": "?", "answers": [], "is_impossible": True}]},
        {"context": "The cat sat.", "qas": [{"id": "cat", "question": "Who?", "answers": [],
                                             "is_impossible": True}]}]}]}))
    examples, _ = squad.read_squad_examples(path, is_training=False)
    features = squad.convert_examples_to_features(examples, tokenizers[0], max_seq_length=32,
                                                  max_query_length=8, progress=False)
    assert features.example_index.tolist() == [1]
    start = np.full(features.input_ids.shape, -np.inf)
    start[:, 0] = 0.25
    end = np.where(np.arange(start.shape[1]) == 0, 0.5, -np.inf)[None, :].repeat(len(features), 0)
    predictions, nbest, odds = squad.postprocess_v2(examples, features, start, end, progress=False)
    assert predictions == {"void": "", "cat": ""}
    assert odds == {"void": 0.0, "cat": 0.75}  # no non-null candidate: score_null - 0
    assert [e["text"] for e in nbest["cat"]] == [""] and nbest["cat"][0]["start_logit"] == 0.25
    start[:, 0] = -np.inf
    with pytest.raises(ValueError, match="finite logits at position 0"):
        squad.postprocess_v2(examples, features, start, end, progress=False)


def test_v1_decoding_is_unchanged_by_the_null_answer_machinery(v2_examples, tokenizers):
    """postprocess (v1.1) never offers the null answer: its best answer is v2's best non-null."""
    sample = v2_examples[::50]
    features = squad.convert_examples_to_features(sample, tokenizers[0], progress=False, **SMALL)
    start, end = noisy_logits(features, seed=5, null_shift=10.0)
    v1, v1_nbest = squad.postprocess(sample, features, start, end, progress=False)
    _, v2_nbest, _ = squad.postprocess_v2(sample, features, start, end, progress=False)
    for qid, entries in v2_nbest.items():
        assert v1[qid] == next((e["text"] for e in entries if e["text"]), "")
        assert "" not in [e["text"] for e in v1_nbest[qid]] or v1[qid] == ""


def test_write_predictions_writes_null_odds(tmp_path):
    paths = squad.write_predictions(tmp_path, {"q": ""}, {"q": []}, {"q": 1.25})
    assert [p.name for p in paths] == ["predictions.json", "nbest_predictions.json", "null_odds.json"]
    assert json.loads((tmp_path / "null_odds.json").read_text()) == {"q": 1.25}
    assert len(squad.write_predictions(tmp_path / "v1", {"q": "a"}, {"q": []})) == 2
    assert not (tmp_path / "v1" / "null_odds.json").exists()


# ---- oracle round trip -------------------------------------------------------------------------


def test_oracle_round_trip_on_v2_dev(v2_examples, squad_v2_dev_file, squad_dev_file, tokenizers):
    """Perfect logits (10 at the gold start/end, which is [CLS] in every window of an unanswerable
    question and in windows without the answer) through decoding and the official v2.0 metric:
    every unanswerable question is answered "", answerable ones score as the v1.1 oracle."""
    features = squad.convert_examples_to_features(v2_examples, tokenizers[0], is_training=True, progress=False)
    start = np.zeros(features.input_ids.shape, dtype=np.float32)
    end = np.zeros_like(start)
    rows = np.arange(len(features))
    start[rows, features.start_positions] = 10.0
    end[rows, features.end_positions] = 10.0
    predictions, _, null_odds = squad.postprocess_v2(v2_examples, features, start, end, progress=False)
    impossible = {e.qas_id for e in v2_examples if e.is_impossible}
    assert len(impossible) == 2067 and len(predictions) == 10570 + 2067
    assert all(predictions[q] == "" and null_odds[q] == 20.0 for q in impossible)
    # Answerable: the null score is 0 (a window holding the answer), and the answer is v1.1's
    # (which a few questions without a valid gold span, e.g. one longer than 30 tokens, miss).
    v1_predictions, _ = squad.postprocess(v2_examples, features, start, end, progress=False)
    answerable = [q for q in predictions if q not in impossible]
    assert all(predictions[q] == v1_predictions[q] and null_odds[q] <= 0.0 for q in answerable)
    assert sum(null_odds[q] == -20.0 for q in answerable) > 10500
    scores = evaluate(squad_v2_dev_file, predictions, null_odds)
    v1 = evaluate(squad_dev_file, {q: p for q, p in predictions.items() if q not in impossible})
    print(f"\noracle v2 dev: {scores}")
    assert (scores["NoAns_exact"], scores["NoAns_f1"], scores["NoAns_total"]) == (100.0, 100.0, 2067)
    assert scores["HasAns_total"] == 10570 and scores["total"] == 12637
    assert scores["HasAns_exact"] == pytest.approx(v1["exact_match"], abs=1e-9)
    assert scores["HasAns_f1"] == pytest.approx(v1["f1"], abs=1e-9)
    assert scores["HasAns_f1"] >= 99.0
    assert scores["f1"] == pytest.approx((10570 * scores["HasAns_f1"] + 2067 * 100.0) / 12637)
    # Null odds separate the two kinds perfectly: the best threshold (after the last answerable
    # question that scores, below every unanswerable one's 20) changes nothing.
    assert scores["best_f1"] == pytest.approx(scores["f1"]) and -20.0 <= scores["best_f1_thresh"] <= 0.0
    assert scores["best_exact"] == pytest.approx(scores["exact"])
