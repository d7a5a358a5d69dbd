"""The SQuAD v2.0 metric against the official definition (evaluate-v2.0.py), written out again
here in the official script's own steps, on tricky cases: gold answers that normalise to nothing,
predictions of only punctuation, no-answer scores above the default threshold 1.0, ties in the
threshold search."""

from __future__ import annotations

import collections
import json
import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bertforge.cli import main
from bertforge.errors import DataError
from bertforge.evaluate import squad as metric

# ---- the official definition -----------------------------------------------------------------


def ref_normalize(s):
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.compile(r"\b(a|an|the)\b", re.UNICODE).sub(" ", s)
    return " ".join(s.split())


def ref_get_tokens(s):
    return ref_normalize(s).split() if s else []


def ref_compute_f1(a_gold, a_pred):
    gold_toks, pred_toks = ref_get_tokens(a_gold), ref_get_tokens(a_pred)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision, recall = num_same / len(pred_toks), num_same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def ref_evaluate_v2(dataset, preds, na_probs=None, na_prob_thresh=1.0):
    """evaluate-v2.0.py's main(), for predictions of every question."""
    qas = [qa for article in dataset for p in article["paragraphs"] for qa in p["qas"]]
    has_ans = {qa["id"]: bool(qa["answers"]) for qa in qas}
    exact_raw, f1_raw = {}, {}
    for qa in qas:
        golds = [a["text"] for a in qa["answers"] if ref_normalize(a["text"])] or [""]
        pred = preds[qa["id"]]
        exact_raw[qa["id"]] = max(int(ref_normalize(g) == ref_normalize(pred)) for g in golds)
        f1_raw[qa["id"]] = max(ref_compute_f1(g, pred) for g in golds)
    probs = na_probs if na_probs is not None else {k: 0.0 for k in preds}

    def thresholded(raw):
        return {q: float(not has_ans[q]) if probs[q] > na_prob_thresh else s for q, s in raw.items()}

    exact, f1 = thresholded(exact_raw), thresholded(f1_raw)
    out = {}
    for prefix, ids in (("", list(exact)), ("HasAns_", [k for k, v in has_ans.items() if v]),
                        ("NoAns_", [k for k, v in has_ans.items() if not v])):
        if ids:
            out[prefix + "exact"] = 100.0 * sum(exact[k] for k in ids) / len(ids)
            out[prefix + "f1"] = 100.0 * sum(f1[k] for k in ids) / len(ids)
            out[prefix + "total"] = len(ids)
    if na_probs is not None:
        for name, raw in (("exact", exact_raw), ("f1", f1_raw)):
            cur = best = sum(1 for k in has_ans if not has_ans[k])
            best_thresh = 0.0
            for qid in sorted(na_probs, key=lambda k: na_probs[k]):
                if has_ans[qid]:
                    diff = raw[qid]
                else:
                    diff = -1 if preds[qid] else 0
                cur += diff
                if cur > best:
                    best, best_thresh = cur, na_probs[qid]
            out[f"best_{name}"], out[f"best_{name}_thresh"] = 100.0 * best / len(raw), best_thresh
    return out


def dataset(gold):
    """A v2.0 'data' list: question id -> gold answer texts ([] for unanswerable)."""
    return [{"title": "t", "paragraphs": [{"context": "c", "qas": [
        {"id": qid, "question": "?", "is_impossible": not texts,
         "answers": [{"text": t, "answer_start": 0} for t in texts]} for qid, texts in gold.items()]}]}]


def assert_same(ours, theirs):
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, abs=1e-9), key


# ---- tricky cases ------------------------------------------------------------------------------

GOLD = {
    "right": ["Denver Broncos", "the Broncos"],
    "partial": ["Carolina Panthers"],
    "only_article": ["the", "Santa Clara"],  # "the" normalises to nothing and does not count
    "all_empty": ["!!", "The"],               # answerable, but only "" can match
    "null_right": [],
    "null_wrong": [],
    "null_punct": [],                          # answered ".": scores as "", but the search sees text
    "null_late": [],
}
PREDICTIONS = {"right": "Broncos", "partial": "Panthers of Carolina", "only_article": "the",
               "all_empty": "", "null_right": "", "null_wrong": "Levi's Stadium", "null_punct": ".",
               "null_late": "Super Bowl"}
NA_PROBS = {"right": -3.0, "partial": 0.5, "only_article": 2.0, "all_empty": 0.5, "null_right": 4.0,
            "null_wrong": 1.5, "null_punct": -1.0, "null_late": 0.5}


@pytest.mark.parametrize("na_probs,thresh", [(None, 1.0), (NA_PROBS, 1.0), (NA_PROBS, 0.0),
                                             (NA_PROBS, -5.0), (NA_PROBS, 10.0)])
def test_matches_the_official_definition(na_probs, thresh):
    ours = metric.evaluate(dataset(GOLD), PREDICTIONS, na_probs, thresh)
    assert_same(ours, ref_evaluate_v2(dataset(GOLD), PREDICTIONS, na_probs, thresh))


def test_known_values():
    """By hand, without no-answer scores: exact right, null_right, null_punct, all_empty (4 of 8;
    only_article's "the" matches no counted gold answer); F1 adds partial's
    2 * (2/3 * 1) / (2/3 + 1) = 0.8."""
    scores = metric.evaluate(dataset(GOLD), PREDICTIONS)
    assert scores == pytest.approx({"exact": 50.0, "f1": 100 * 4.8 / 8, "total": 8,
                                    "HasAns_exact": 50.0, "HasAns_f1": 100 * 2.8 / 4, "HasAns_total": 4,
                                    "NoAns_exact": 50.0, "NoAns_f1": 50.0, "NoAns_total": 4})
    # With scores, the default threshold 1.0 counts null_wrong (1.5), only_article (2.0) and
    # null_right (4.0) as answered "": null_wrong is gained.
    with_probs = metric.evaluate(dataset(GOLD), PREDICTIONS, NA_PROBS)
    assert with_probs["exact"] == 100 * 5 / 8
    # The search by hand, in score order from 4 (every unanswerable right): right +1 (5, at -3),
    # null_punct -1, partial +0.8, all_empty +1 (5.8, at 0.5), null_late -1, null_wrong -1, ...
    assert with_probs["best_f1"] == pytest.approx(100 * 5.8 / 8)
    assert with_probs["best_f1_thresh"] == 0.5
    assert (with_probs["best_exact"], with_probs["best_exact_thresh"]) == (100 * 5 / 8, -3.0)


def test_ties_in_the_search_follow_the_file_order():
    """The official search moves one question at a time: of tied scores, the first in na_probs'
    order may win alone (a threshold that cannot split them, reported as the official script
    does)."""
    gold = {"a": ["x"], "b": [], "c": ["y"]}
    predictions = {"a": "x", "b": "z", "c": "wrong"}
    for order in (["a", "b", "c"], ["b", "a", "c"]):
        na_probs = {k: 0.7 for k in order}
        ours = metric.evaluate(dataset(gold), predictions, na_probs)
        assert_same(ours, ref_evaluate_v2(dataset(gold), predictions, na_probs))
    assert metric.evaluate(dataset(gold), predictions, {"a": 0.7, "b": 0.7, "c": 0.7})["best_exact"] == 200 / 3


V2_TEXTS = st.sampled_from(["", " ", ".", "the", "a cat", "Cat!", "cat sat", "dog", "The Dog", "sat"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.lists(V2_TEXTS.filter(bool), max_size=3), V2_TEXTS,
                          st.sampled_from([-2.0, -0.5, 0.0, 0.5, 1.0, 1.5, 3.0])), min_size=1, max_size=12),
       st.sampled_from([1.0, 0.0, -1.0]))
def test_random_data_sets_match_the_official_definition(rows, thresh):
    gold = {f"q{i}": answers for i, (answers, _, _) in enumerate(rows)}
    predictions = {f"q{i}": text for i, (_, text, _) in enumerate(rows)}
    na_probs = {f"q{i}": p for i, (_, _, p) in enumerate(rows)}
    assert_same(metric.evaluate(dataset(gold), predictions, na_probs, thresh),
                ref_evaluate_v2(dataset(gold), predictions, na_probs, thresh))
    assert_same(metric.evaluate(dataset(gold), predictions), ref_evaluate_v2(dataset(gold), predictions))


# ---- files, missing and bad input ----------------------------------------------------------------


def test_v2_files_are_detected(tmp_path, squad_dev_file):
    path = tmp_path / "dev-v2.json"
    path.write_text(json.dumps({"version": "v2.0", "data": dataset(GOLD)}))
    assert "HasAns_f1" in metric.evaluate(path, PREDICTIONS)
    assert "HasAns_f1" not in metric.evaluate(squad_dev_file, {})
    with pytest.raises(DataError, match="no-answer scores are for SQuAD v2.0"):
        metric.evaluate(squad_dev_file, {}, {"x": 1.0})


def test_missing_predictions_score_zero_and_count(caplog):
    partial = {k: v for k, v in PREDICTIONS.items() if k not in ("right", "null_right")}
    scores = metric.evaluate(dataset(GOLD), partial, {k: NA_PROBS[k] for k in partial})
    assert "2 of 8 questions have no prediction" in caplog.text
    # null_punct, all_empty, and null_wrong (no-answer score 1.5 > 1.0)
    assert scores["total"] == 8 and scores["exact"] == 100 * 3 / 8
    # The search starts from the 3 predicted unanswerable questions (the missing null_right earns
    # nothing) and never beats that: null_punct -1, partial 0, all_empty +1, null_late -1, ...
    assert (scores["best_exact"], scores["best_exact_thresh"]) == (100 * 3 / 8, 0.0)


@pytest.mark.parametrize("gold,na_probs,message", [
    (GOLD, {**NA_PROBS, "ghost": 1.0}, "not in gold answers.*'ghost'"),
    (GOLD, {k: v for k, v in NA_PROBS.items() if k != "partial"}, "lack 1 predicted question.*'partial'"),
    (GOLD, {**NA_PROBS, "right": "high"}, r"not a finite number.*'right' -> 'high'"),
    (GOLD, {**NA_PROBS, "right": True}, "not a finite number"),
])
def test_bad_no_answer_scores_are_an_error(gold, na_probs, message):
    with pytest.raises(DataError, match=message):
        metric.evaluate_answers_v2(gold, PREDICTIONS, na_probs)


def test_answers_must_agree_with_is_impossible():
    data = dataset({"q": ["x"]})
    data[0]["paragraphs"][0]["qas"][0]["is_impossible"] = True
    with pytest.raises(DataError, match="1 question.*disagree with is_impossible.*'q'"):
        metric.evaluate(data, {})


def test_load_na_probs(tmp_path):
    good = tmp_path / "null_odds.json"
    good.write_text(json.dumps(NA_PROBS))
    assert metric.load_na_probs(good) == NA_PROBS
    bad = tmp_path / "bad.json"
    bad.write_text('["x"]')
    with pytest.raises(DataError, match=r"bad\.json.*JSON object mapping question id"):
        metric.load_na_probs(bad)


def test_evaluate_command_with_na_prob_file(tmp_path, capsys):
    data = tmp_path / "dev.json"
    data.write_text(json.dumps({"version": "v2.0", "data": dataset(GOLD)}))
    predictions, odds = tmp_path / "predictions.json", tmp_path / "null_odds.json"
    predictions.write_text(json.dumps(PREDICTIONS))
    odds.write_text(json.dumps(NA_PROBS))
    expected = ref_evaluate_v2(dataset(GOLD), PREDICTIONS, NA_PROBS, 0.0)
    for flags in (["--na_prob_file", str(odds), "--na_prob_thresh", "0.0"],
                  ["--na-prob-file", str(odds), "--na-prob-thresh=0"]):
        assert main(["evaluate", "squad", str(data), str(predictions), *flags]) == 0
        assert_same(json.loads(capsys.readouterr().out), expected)
        assert_same(json.loads((tmp_path / "predictions_eval.json").read_text()), expected)
    assert main(["evaluate", "squad", str(data), str(predictions)]) == 0
    assert "best_f1" not in json.loads(capsys.readouterr().out)
