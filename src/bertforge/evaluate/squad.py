"""The official SQuAD v1.1 metric (`evaluate-v1.1.py`): exact match and token F1.

Answers are normalised (lower-cased, punctuation and the articles a/an/the removed, whitespace
collapsed); a prediction scores the best EM and F1 over the question's gold answers; both are
averaged over all questions of the data set and reported x100. A question without a prediction
scores 0, as in the official script ("Unanswered question X will receive score 0"); here that is
one logged warning naming the count and the first ids. Predictions for ids that are not in the
data set are an error (the official script ignores them, which hides id mix-ups).
"""

from __future__ import annotations

import logging
import re
import string
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

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


def metric_max_over_ground_truths(metric: Callable[[str, str], float], prediction: str,
                                  ground_truths: list[str]) -> float:
    return max(metric(prediction, gt) for gt in ground_truths)


def load_predictions(path: str | Path) -> dict[str, str]:
    """Read a predictions file: one JSON object mapping question id -> answer text."""
    predictions = read_json(path, "predictions file")
    _check_predictions(predictions, str(path))
    return predictions


def _check_predictions(predictions: Any, source: str) -> None:
    if not isinstance(predictions, dict):
        raise DataError(f"{source}: predictions must be a JSON object mapping question id to "
                        f"answer text, got {type(predictions).__name__}")
    bad = [qid for qid, text in predictions.items() if not isinstance(text, str)]
    if bad:
        raise DataError(f"{source}: the prediction of {len(bad)} question(s) is not a string "
                        f"(first: {bad[0]!r} -> {predictions[bad[0]]!r})")


def gold_answers(dataset_or_path: str | Path | dict | list) -> dict[str, list[str]]:
    """Question id -> gold answer texts of a SQuAD file, its parsed JSON, or its 'data' list."""
    return _read_gold(dataset_or_path)[0]


def _read_gold(dataset_or_path: str | Path | dict | list) -> tuple[dict[str, list[str]], str]:
    """The gold answers, and the name of where they came from (for messages)."""
    dataset, source = _dataset(dataset_or_path)
    try:
        pairs = [(qa["id"], [answer["text"] for answer in qa["answers"]])
                 for article in dataset for paragraph in article["paragraphs"]
                 for qa in paragraph["qas"]]
    except (KeyError, TypeError) as e:
        raise DataError(f"{source}: not a SQuAD data set (missing or wrong field: {e})") from None
    gold = dict(pairs)
    if len(gold) < len(pairs):
        repeated = next(qid for qid, n in Counter(q for q, _ in pairs).items() if n > 1)
        # The official script would count such a question twice; a metric keyed by id cannot.
        raise DataError(f"{source}: {len(pairs) - len(gold)} question id(s) repeat an earlier "
                        f"one (first: {repeated!r}); ids must be unique")
    _check_gold(gold, source)
    return gold, source


def _check_gold(gold: Any, source: str) -> None:
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
    if empty:
        raise DataError(f"{source}: {len(empty)} question(s) have no gold answer "
                        f"(first: {empty[0]!r}); SQuAD v1.1 evaluation needs one")


def _dataset(dataset_or_path: str | Path | dict | list) -> tuple[Any, str]:
    """The 'data' list of a SQuAD file, from a path, the parsed file, or the list itself."""
    if isinstance(dataset_or_path, (str, Path)):
        source = str(dataset_or_path)
        dataset_or_path = read_json(dataset_or_path, "SQuAD file")
    else:
        source = "SQuAD data set"
    if isinstance(dataset_or_path, dict):
        version = dataset_or_path.get("version")
        if version != "1.1":
            logger.warning("%s: version is %r; this is the SQuAD v1.1 metric", source, version)
        if "data" not in dataset_or_path:
            raise DataError(f"{source}: expected a JSON object with a 'data' list")
        dataset_or_path = dataset_or_path["data"]
    if not isinstance(dataset_or_path, list):
        raise DataError(f"{source}: expected a list of articles, got "
                        f"{type(dataset_or_path).__name__}")
    return dataset_or_path, source


def evaluate_answers(gold: Mapping[str, Sequence[str]], predictions: Mapping[str, str],
                     source: str = "gold answers") -> dict[str, float]:
    """Official SQuAD v1.1 EM and F1 (both in [0, 100]) of `predictions` (id -> text) against
    `gold` (id -> answer texts, at least one per question).

    Every gold question counts; those without a prediction score 0 (logged as a warning).
    A prediction for an id that is not in `gold` is an error. `source` names the gold answers
    in messages.
    """
    _check_gold(gold, source)
    _check_predictions(predictions, "predictions")
    extra = [qid for qid in predictions if qid not in gold]
    if extra:
        raise DataError(f"predictions name {len(extra)} question id(s) that are not in {source} "
                        f"(first: {', '.join(map(repr, extra[:_SHOWN_IDS]))})")
    missing = [qid for qid in gold if qid not in predictions]
    if missing:
        logger.warning("%d of %d questions have no prediction and score 0 (first: %s)",
                       len(missing), len(gold), ", ".join(missing[:_SHOWN_IDS]))
    exact_match = f1 = 0.0
    for qid, ground_truths in gold.items():
        if qid in predictions:
            exact_match += metric_max_over_ground_truths(exact_match_score, predictions[qid],
                                                         list(ground_truths))
            f1 += metric_max_over_ground_truths(f1_score, predictions[qid], list(ground_truths))
    return {"exact_match": 100.0 * exact_match / len(gold), "f1": 100.0 * f1 / len(gold)}


def evaluate(dataset_or_path: str | Path | dict | list, predictions: dict[str, str]
             ) -> dict[str, float]:
    """The official script's entry point: `evaluate_answers` against the gold answers of a
    SQuAD file, its parsed JSON, or its 'data' list."""
    gold, source = _read_gold(dataset_or_path)
    return evaluate_answers(gold, predictions, source)
