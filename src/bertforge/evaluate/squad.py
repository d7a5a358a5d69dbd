"""The official SQuAD metrics: v1.1 (`evaluate-v1.1.py`: exact match and token F1) and v2.0
(`evaluate-v2.0.py`: the same per answerable/unanswerable split, with the no-answer threshold).

Answers are normalised (lower-cased, punctuation and the articles a/an/the removed, whitespace
collapsed); a prediction scores the best EM and F1 over the question's gold answers; both are
averaged over all questions of the data set and reported x100. A question without a prediction
scores 0, as in the official v1.1 script ("Unanswered question X will receive score 0"); here that
is one logged warning naming the count and the first ids (the official v2.0 script leaves such
questions out of its totals, or fails). Predictions for ids that are not in the data set are an
error (the official scripts ignore them, which hides id mix-ups).

SQuAD v2.0 (a file whose questions carry `is_impossible`): a question with no gold answer is
answered correctly only by "" (any text that normalises to nothing); F1 is then 1 or 0. With
na_probs (question id -> the model's no-answer score, e.g. Google's null_odds.json) a question
whose score exceeds na_prob_thresh counts as answered "" (the official default threshold 1.0
applies even to null odds, which are not probabilities), and best_exact / best_f1 report the
scores at the best threshold, found by the official search.
"""

from __future__ import annotations

import logging
import math
import re
import string
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from bertforge.errors import DataError
from bertforge.fileio import read_json

logger = logging.getLogger(__name__)

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_SHOWN_IDS = 5


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace (official order)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match_score(prediction: str, ground_truth: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def f1_score(prediction: str, ground_truth: str) -> float:
    """Harmonic mean of token precision and recall; 0 without a common token (two empty
    answers included, as officially)."""
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    num_same = sum((Counter(prediction_tokens) & Counter(ground_truth_tokens)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(ground_truth_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score_v2(prediction: str, ground_truth: str) -> float:
    """evaluate-v2.0.py's compute_f1: `f1_score`, except that when either answer normalises
    to nothing, F1 is 1 if both do and 0 otherwise."""
    if not normalize_answer(prediction) or not normalize_answer(ground_truth):
        return float(normalize_answer(prediction) == normalize_answer(ground_truth))
    return f1_score(prediction, ground_truth)


def metric_max_over_ground_truths(metric: Callable[[str, str], float], prediction: str,
                                  ground_truths: list[str]) -> float:
    return max(metric(prediction, gt) for gt in ground_truths)


class _Values(NamedTuple):
    """What a JSON object of question id -> value holds, for checking and messages."""

    noun: str
    expected: str
    valid: Callable[[Any], bool]


_PREDICTIONS = _Values("prediction", "a string", lambda v: isinstance(v, str))
_NA_PROBS = _Values("no-answer score", "a finite number",
                    lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))


def load_predictions(path: str | Path) -> dict[str, str]:
    """Read a predictions file: one JSON object mapping question id -> answer text."""
    return _load_by_id(path, "predictions file", _PREDICTIONS)


def load_na_probs(path: str | Path) -> dict[str, float]:
    """Read a no-answer score file (null_odds.json): one JSON object mapping question id -> number."""
    return _load_by_id(path, "no-answer score file", _NA_PROBS)


def _load_by_id(path: str | Path, what: str, values: _Values) -> Any:
    content = read_json(path, what)
    _check_by_id(content, str(path), values)
    return content


def _check_by_id(content: Any, source: str, values: _Values) -> None:
    if not isinstance(content, dict):
        raise DataError(f"{source}: {values.noun}s must be a JSON object mapping question id to "
                        f"{values.expected}, got {type(content).__name__}")
    bad = [qid for qid, value in content.items() if not values.valid(value)]
    if bad:
        raise DataError(f"{source}: the {values.noun} of {len(bad)} question(s) is not {values.expected} "
                        f"(first: {bad[0]!r} -> {content[bad[0]]!r})")


def gold_answers(dataset_or_path: str | Path | dict | list) -> dict[str, list[str]]:
    """Question id -> gold answer texts of a SQuAD file, its parsed JSON, or its 'data' list
    (an empty list for a SQuAD v2.0 question without answer)."""
    return _read_gold(dataset_or_path)[0]


def _read_gold(dataset_or_path: str | Path | dict | list
               ) -> tuple[dict[str, list[str]], str, bool]:
    """The gold answers, the name of where they came from (for messages), and whether the
    data set is SQuAD v2.0."""
    dataset, source, version = _dataset(dataset_or_path)
    try:
        qas = [qa for article in dataset for paragraph in article["paragraphs"]
               for qa in paragraph["qas"]]
        pairs = [(qa["id"], [answer["text"] for answer in qa["answers"]]) for qa in qas]
        v2 = any("is_impossible" in qa for qa in qas)
    except (KeyError, TypeError) as e:
        raise DataError(f"{source}: not a SQuAD data set (missing or wrong field: {e})") from None
    if version not in ("1.1", "v2.0"):
        logger.warning("%s: version is %r; scoring it as SQuAD %s (%s)", source, version,
                       "v2.0" if v2 else "v1.1",
                       "questions carry is_impossible" if v2 else "no question carries is_impossible")
    if v2:
        contradicting = [qa["id"] for qa in qas
                         if bool(qa.get("is_impossible", False)) == bool(qa["answers"])]
        if contradicting:
            raise DataError(f"{source}: {len(contradicting)} question(s) have answers that disagree with "
                            f"is_impossible (first: {contradicting[0]!r}); an unanswerable question has "
                            f"'answers': [], any other at least one answer")
    gold = dict(pairs)
    if len(gold) < len(pairs):
        repeated = next(qid for qid, n in Counter(q for q, _ in pairs).items() if n > 1)
        # The official script would count such a question twice; a metric keyed by id cannot.
        raise DataError(f"{source}: {len(pairs) - len(gold)} question id(s) repeat an earlier "
                        f"one (first: {repeated!r}); ids must be unique")
    _check_gold(gold, source, v2)
    return gold, source, v2


def _check_gold(gold: Any, source: str, v2: bool = False) -> None:
    if not isinstance(gold, Mapping):
        raise DataError(f"{source}: gold answers must map question id to a list of answer "
                        f"texts, got {type(gold).__name__}")
    if not gold:
        raise DataError(f"{source}: has no questions")
    bad = [qid for qid, texts in gold.items()
           if isinstance(texts, str) or not isinstance(texts, Sequence)
           or not all(isinstance(t, str) for t in texts)]
    if bad:
        raise DataError(f"{source}: the gold answers of {len(bad)} question(s) are not a list of "
                        f"strings (first: {bad[0]!r} -> {gold[bad[0]]!r})")
    empty = [qid for qid, texts in gold.items() if not texts]
    if empty and not v2:
        raise DataError(f"{source}: {len(empty)} question(s) have no gold answer "
                        f"(first: {empty[0]!r}); SQuAD v1.1 evaluation needs one")


def _dataset(dataset_or_path: str | Path | dict | list) -> tuple[Any, str, Any]:
    """The 'data' list of a SQuAD file, from a path, the parsed file, or the list itself; the
    name of where it came from; and the file's version ("1.1" for a bare list)."""
    version: Any = "1.1"
    if isinstance(dataset_or_path, (str, Path)):
        source = str(dataset_or_path)
        dataset_or_path = read_json(dataset_or_path, "SQuAD file")
    else:
        source = "SQuAD data set"
    if isinstance(dataset_or_path, dict):
        version = dataset_or_path.get("version")
        if "data" not in dataset_or_path:
            raise DataError(f"{source}: expected a JSON object with a 'data' list")
        dataset_or_path = dataset_or_path["data"]
    if not isinstance(dataset_or_path, list):
        raise DataError(f"{source}: expected a list of articles, got "
                        f"{type(dataset_or_path).__name__}")
    return dataset_or_path, source, version


def evaluate_answers(gold: Mapping[str, Sequence[str]], predictions: Mapping[str, str],
                     source: str = "gold answers") -> dict[str, float]:
    """Official SQuAD v1.1 EM and F1 (both in [0, 100]) of `predictions` (id -> text) against
    `gold` (id -> answer texts, at least one per question).

    Every gold question counts; those without a prediction score 0 (logged as a warning).
    A prediction for an id that is not in `gold` is an error. `source` names the gold answers
    in messages.
    """
    _check_gold(gold, source)
    _check_prediction_ids(gold, predictions, source)
    exact_match = f1 = 0.0
    for qid, ground_truths in gold.items():
        if qid in predictions:
            exact_match += metric_max_over_ground_truths(exact_match_score, predictions[qid],
                                                         list(ground_truths))
            f1 += metric_max_over_ground_truths(f1_score, predictions[qid], list(ground_truths))
    return {"exact_match": 100.0 * exact_match / len(gold), "f1": 100.0 * f1 / len(gold)}


def _check_prediction_ids(gold: Mapping[str, Sequence[str]], predictions: Mapping[str, str],
                          source: str) -> None:
    """Predictions must be strings for questions of `gold`; missing ones are logged (they score 0)."""
    _check_by_id(predictions, "predictions", _PREDICTIONS)
    extra = [qid for qid in predictions if qid not in gold]
    if extra:
        raise DataError(f"predictions name {len(extra)} question id(s) that are not in {source} "
                        f"(first: {', '.join(map(repr, extra[:_SHOWN_IDS]))})")
    missing = [qid for qid in gold if qid not in predictions]
    if missing:
        logger.warning("%d of %d questions have no prediction and score 0 (first: %s)",
                       len(missing), len(gold), ", ".join(missing[:_SHOWN_IDS]))


def evaluate_answers_v2(gold: Mapping[str, Sequence[str]], predictions: Mapping[str, str],
                        na_probs: Mapping[str, float] | None = None, na_prob_thresh: float = 1.0,
                        source: str = "gold answers") -> dict[str, float]:
    """Official SQuAD v2.0 scores of `predictions` (id -> text) against `gold` (id -> answer
    texts; none for an unanswerable question): exact, f1 and total over all questions, the
    same as HasAns_* and NoAns_* over the answerable and unanswerable ones (where there are
    any), and, with `na_probs` (id -> no-answer score, for every predicted question),
    best_exact, best_exact_thresh, best_f1, best_f1_thresh.

    A question whose no-answer score exceeds `na_prob_thresh` counts as answered "". Missing
    predictions score 0 (logged as a warning) and count in the totals.
    """
    _check_gold(gold, source, v2=True)
    _check_prediction_ids(gold, predictions, source)
    if na_probs is not None:
        _check_by_id(na_probs, "no-answer scores", _NA_PROBS)
        unscored = [qid for qid in predictions if qid not in na_probs]
        unknown = [qid for qid in na_probs if qid not in gold]
        if unscored or unknown:
            which = (f"lack {len(unscored)} predicted question(s) (first: {unscored[0]!r})" if unscored
                     else f"name {len(unknown)} question id(s) not in {source} (first: {unknown[0]!r})")
            raise DataError(f"no-answer scores {which}")
    has_answer = {qid: bool(texts) for qid, texts in gold.items()}
    exact_raw: dict[str, float] = {}
    f1_raw: dict[str, float] = {}
    for qid, texts in gold.items():
        if qid not in predictions:
            continue
        # Gold answers that normalise to nothing do not count; without any, only "" is right.
        answers = [t for t in texts if normalize_answer(t)] or [""]
        exact_raw[qid] = metric_max_over_ground_truths(exact_match_score, predictions[qid], answers)
        f1_raw[qid] = metric_max_over_ground_truths(f1_score_v2, predictions[qid], answers)
    probs = na_probs if na_probs is not None else dict.fromkeys(predictions, 0.0)
    scores = {}
    for name, raw in (("exact", exact_raw), ("f1", f1_raw)):
        scores[name] = {qid: float(not has_answer[qid]) if probs[qid] > na_prob_thresh else s
                        for qid, s in raw.items()}
    out: dict[str, float] = {}
    for prefix, qids in (("", list(gold)), ("HasAns_", [q for q in gold if has_answer[q]]),
                         ("NoAns_", [q for q in gold if not has_answer[q]])):
        if qids:
            for name in ("exact", "f1"):
                out[prefix + name] = 100.0 * sum(scores[name].get(q, 0.0) for q in qids) / len(qids)
            out[prefix + "total"] = len(qids)
    if na_probs is not None:
        for name, raw in (("exact", exact_raw), ("f1", f1_raw)):
            out[f"best_{name}"], out[f"best_{name}_thresh"] = _best_threshold(
                predictions, raw, na_probs, has_answer, len(gold))
    return out


def _best_threshold(predictions: Mapping[str, str], raw: Mapping[str, float],
                    na_probs: Mapping[str, float], has_answer: Mapping[str, bool], total: int
                    ) -> tuple[float, float]:
    """evaluate-v2.0.py's find_best_thresh: the best score x100 over thresholds, and the
    threshold. Below every no-answer score, every question is answered ""; raising the threshold
    past one question's score at a time (in score order, ties in na_probs' order) gives it its
    own answer back, and the first strictly best running score wins."""
    current = best = sum(1 for qid in raw if not has_answer[qid])
    best_thresh = 0.0
    for qid in sorted(na_probs, key=lambda q: na_probs[q]):
        if qid not in raw:
            continue
        if has_answer[qid]:
            current += raw[qid]
        elif predictions[qid]:
            # The official script tests the raw text: an answer of only spaces or punctuation
            # loses its no-answer point here, though it scores as "".
            current -= 1
        if current > best:
            best, best_thresh = current, na_probs[qid]
    return 100.0 * best / total, float(best_thresh)


def evaluate(dataset_or_path: str | Path | dict | list, predictions: dict[str, str],
             na_probs: Mapping[str, float] | None = None, na_prob_thresh: float = 1.0
             ) -> dict[str, float]:
    """The official scripts' entry point: `evaluate_answers` (SQuAD v1.1) or, for a v2.0 data
    set, `evaluate_answers_v2` against the gold answers of a SQuAD file, its parsed JSON, or its
    'data' list. `na_probs` and `na_prob_thresh` are for v2.0 data sets only."""
    gold, source, v2 = _read_gold(dataset_or_path)
    if v2:
        return evaluate_answers_v2(gold, predictions, na_probs, na_prob_thresh, source)
    if na_probs is not None:
        raise DataError(f"{source}: no-answer scores are for SQuAD v2.0 data sets (questions with "
                        f"is_impossible); this one has none")
    return evaluate_answers(gold, predictions, source)
