"""The SQuAD v1.1 metric against the official definition (evaluate-v1.1.py), written out again
here in a different style: str.translate for punctuation, explicit token counting for F1."""

from __future__ import annotations

import json
import logging
import re
import string
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bertforge.errors import DataError
from bertforge.evaluate import squad as metric

# ---- the official definition -----------------------------------------------------------------

_DROP_PUNCTUATION = str.maketrans("", "", string.punctuation)


def ref_tokens(text):
    """Official normalize_answer, as a token list: lower, strip punctuation, drop articles."""
    text = text.lower().translate(_DROP_PUNCTUATION)
    text = re.sub(r"\b(?:a|an|the)\b", " ", text)
    return text.split()


def ref_exact(prediction, gold):
    return float(ref_tokens(prediction) == ref_tokens(gold))


def ref_f1(prediction, gold):
    pred, truth = ref_tokens(prediction), ref_tokens(gold)
    remaining = {}
    for token in truth:
        remaining[token] = remaining.get(token, 0) + 1
    common = 0
    for token in pred:
        if remaining.get(token, 0) > 0:
            remaining[token] -= 1
            common += 1
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(truth)
    return 2 * precision * recall / (precision + recall)


def ref_evaluate(dataset, predictions):
    em = f1 = total = 0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    continue  # "Unanswered question ... will receive score 0"
                golds = [a["text"] for a in qa["answers"]]
                em += max(ref_exact(predictions[qa["id"]], g) for g in golds)
                f1 += max(ref_f1(predictions[qa["id"]], g) for g in golds)
    return {"exact_match": 100 * em / total, "f1": 100 * f1 / total}


# ---- tricky cases ------------------------------------------------------------------------------

GOLD = {
    "punct": ["Denver Broncos!", "the Denver Broncos"],
    "articles": ["The Beatles", "an apple a day"],
    "accents": ["Crème Brûlée", "creme brulee"],
    "cjk": ["東京タワー", "東京 タワー"],
    "dash": ["1895—1943", "1895 – 1943"],
    "multi": ["Saint Bernadette Soubirous", "a copper statue of Christ", "Bernadette"],
    "spaces": ["New   York\tCity"],
    "repeat": ["the the cat cat"],
    "inword": ["anthem theater"],
    "empty_pred": ["something"],
    "only_article": ["The"],
    "unicode_punct": ["«Hello», world…"],
    "missing1": ["never predicted"],
    "missing2": ["also never predicted"],
}

PREDICTIONS = {
    "punct": "denver broncos",
    "articles": "Beatles, The",
    "accents": "Creme Brûlée",
    "cjk": "東京",
    "dash": "1895-1943",
    "multi": "Bernadette Soubirous",
    "spaces": "  new york   city ",
    "repeat": "cat the cat the cat",
    "inword": "anthem",
    "empty_pred": "",
    "only_article": "a",
    "unicode_punct": "Hello world",
}


def dataset(gold=GOLD):
    qas = [{"id": qid, "question": "?", "answers": [{"text": t, "answer_start": 0} for t in texts]}
           for qid, texts in gold.items()]
    return [{"title": "t", "paragraphs": [{"context": "c", "qas": qas}]}]


@pytest.mark.parametrize("qid", list(PREDICTIONS))
def test_single_question_scores(qid):
    prediction, golds = PREDICTIONS[qid], GOLD[qid]
    assert metric.metric_max_over_ground_truths(metric.exact_match_score, prediction, golds) \
        == max(ref_exact(prediction, g) for g in golds)
    assert metric.metric_max_over_ground_truths(metric.f1_score, prediction, golds) \
        == pytest.approx(max(ref_f1(prediction, g) for g in golds), abs=1e-12)


def test_known_values():
    assert metric.normalize_answer("  The  Quick, brown fox!  ") == "quick brown fox"
    assert metric.f1_score("the cat sat", "a cat sat down") == pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))
    assert metric.f1_score("", "") == 0.0  # as officially: no common token
    assert metric.exact_match_score("", "The")  # both normalise to ""


def test_evaluate_matches_the_official_definition(caplog):
    with caplog.at_level(logging.WARNING):
        scores = metric.evaluate(dataset(), PREDICTIONS)
    expected = ref_evaluate(dataset(), PREDICTIONS)
    assert scores["exact_match"] == pytest.approx(expected["exact_match"], abs=1e-9)
    assert scores["f1"] == pytest.approx(expected["f1"], abs=1e-9)
    assert 0 < scores["exact_match"] < scores["f1"] < 100
    warning = caplog.text
    assert "2 of 14 questions have no prediction" in warning
    assert "missing1" in warning and "missing2" in warning


def test_evaluate_answers_takes_gold_answers_directly(caplog):
    with caplog.at_level(logging.WARNING):
        scores = metric.evaluate_answers(GOLD, PREDICTIONS)
    expected = ref_evaluate(dataset(), PREDICTIONS)
    assert scores["exact_match"] == pytest.approx(expected["exact_match"], abs=1e-9)
    assert scores["f1"] == pytest.approx(expected["f1"], abs=1e-9)
    assert "2 of 14 questions have no prediction" in caplog.text
    assert metric.gold_answers(dataset()) == GOLD
    # Any sequence of answer texts will do, and the gold answers may be a read-only mapping.
    as_tuples = MappingProxyType({qid: tuple(texts) for qid, texts in GOLD.items()})
    assert metric.evaluate_answers(as_tuples, PREDICTIONS) == scores


@pytest.mark.parametrize("gold, message", [
    ({}, "gold answers: has no questions"),
    ({"x": []}, r"1 question\(s\) have no gold answer \(first: 'x'\)"),
    ({"x": "Denver"}, r"not a list of strings \(first: 'x' -> 'Denver'\)"),
    ({"x": ["a", 3]}, r"not a list of strings \(first: 'x' -> \['a', 3\]\)"),
    ([("x", ["a"])], "must map question id to a list of answer texts, got list"),
])
def test_evaluate_answers_rejects_bad_gold_answers(gold, message):
    with pytest.raises(DataError, match=message):
        metric.evaluate_answers(gold, {})


def test_repeated_question_ids_in_a_file_are_an_error(tmp_path):
    """The official script counts a repeated question twice; scores keyed by id cannot, so the
    file is refused rather than scored differently."""
    data = dataset()
    data[0]["paragraphs"].append(data[0]["paragraphs"][0])
    path = tmp_path / "gold.json"
    path.write_text(json.dumps({"version": "1.1", "data": data}))
    with pytest.raises(DataError, match=r"gold\.json: 14 question id\(s\) repeat .*'punct'"):
        metric.evaluate(path, PREDICTIONS)


def test_evaluate_accepts_path_dict_and_list(tmp_path):
    path = tmp_path / "gold.json"
    path.write_text(json.dumps({"version": "1.1", "data": dataset()}))
    results = [metric.evaluate(path, PREDICTIONS), metric.evaluate(str(path), PREDICTIONS),
               metric.evaluate({"version": "1.1", "data": dataset()}, PREDICTIONS),
               metric.evaluate(dataset(), PREDICTIONS)]
    assert all(r == results[0] for r in results)


def test_real_dev_file_with_gold_predictions(squad_dev_file):
    raw = json.loads(squad_dev_file.read_text())
    last = {q["id"]: q["answers"][-1]["text"]
            for a in raw["data"] for p in a["paragraphs"] for q in p["qas"]}
    scores = metric.evaluate(squad_dev_file, last)
    # A gold answer that normalises to nothing (one does) has F1 0 even against itself.
    assert scores["exact_match"] == 100.0
    assert scores["f1"] == pytest.approx(ref_evaluate(raw["data"], last)["f1"], abs=1e-9)
    assert 99.9 < scores["f1"] < 100.0
    partial = {qid: text.split()[0] for qid, text in list(last.items())[::7]}
    scores = metric.evaluate(squad_dev_file, partial)
    expected = ref_evaluate(raw["data"], partial)
    assert scores["f1"] == pytest.approx(expected["f1"], abs=1e-9)
    assert scores["exact_match"] == pytest.approx(expected["exact_match"], abs=1e-9)


TRICKY = st.lists(st.sampled_from(
    [*"aAnNtThHeE xyz \t\n.,;:!?'\"-—–()[]{}«»…éÉüß東京タワー0123456789_$%", "the", "An", " a "]),
    max_size=20).map("".join)


@settings(max_examples=300, deadline=None)
@given(prediction=TRICKY, gold=TRICKY)
def test_random_strings_match_the_official_definition(prediction, gold):
    assert metric.exact_match_score(prediction, gold) == bool(ref_exact(prediction, gold))
    assert metric.f1_score(prediction, gold) == pytest.approx(ref_f1(prediction, gold), abs=1e-12)


# ---- bad input ---------------------------------------------------------------------------------


def test_extra_prediction_ids_are_an_error():
    with pytest.raises(DataError, match=r"2 question id\(s\) that are not in.*'ghost1', 'ghost2'"):
        metric.evaluate(dataset(), {**PREDICTIONS, "ghost1": "x", "ghost2": "y"})


def test_non_string_prediction_is_an_error():
    with pytest.raises(DataError, match="'punct'"):
        metric.evaluate(dataset(), {**PREDICTIONS, "punct": ["denver"]})


def test_load_predictions(tmp_path):
    good = tmp_path / "p.json"
    good.write_text(json.dumps(PREDICTIONS, ensure_ascii=False), encoding="utf-8")
    assert metric.load_predictions(good) == PREDICTIONS

    broken = tmp_path / "broken.json"
    broken.write_text('{"a": "x",\n "b": }')
    with pytest.raises(DataError, match=r"broken\.json.*line 2, column 7"):
        metric.load_predictions(broken)

    as_list = tmp_path / "list.json"
    as_list.write_text('["a", "b"]')
    with pytest.raises(DataError, match="JSON object mapping question id"):
        metric.load_predictions(as_list)

    numbers = tmp_path / "numbers.json"
    numbers.write_text('{"a": "x", "b": 3}')
    with pytest.raises(DataError, match=r"numbers\.json.*'b' -> 3"):
        metric.load_predictions(numbers)

    with pytest.raises(DataError, match="not found"):
        metric.load_predictions(tmp_path / "absent.json")


def test_bad_gold_data_is_an_error():
    with pytest.raises(DataError, match="not a SQuAD data set"):
        metric.evaluate([{"paragraphs": [{"qas": [{"id": "x"}]}]}], {})
    with pytest.raises(DataError, match="no gold answer"):
        metric.evaluate(dataset({"x": []}), {})
    with pytest.raises(DataError, match="no questions"):
        metric.evaluate([], {})
