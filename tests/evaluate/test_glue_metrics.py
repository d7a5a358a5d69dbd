"""GLUE metrics against scikit-learn and scipy called directly in the test.

Random predictions come from hypothesis (which also finds the degenerate cases: one class,
constant predictions, a single example) and from explicit degenerate cases below.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from bertforge.data.glue import TASKS
from bertforge.errors import DataError
from bertforge.evaluate.glue import METRIC_KEYS, compute_metrics

CLASSIFICATION = [t.name for t in TASKS.values() if t.labels is not None]


def _reference(task: str, preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The official definitions, computed by the libraries with their own defaults."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if task == "cola":
            return {"mcc": matthews_corrcoef(labels, preds)}
        if task in ("mrpc", "qqp"):
            return {"accuracy": accuracy_score(labels, preds), "f1": f1_score(labels, preds)}
        if task == "stsb":
            if len(labels) < 2:  # scipy refuses fewer than two pairs: undefined
                return {"pearson": math.nan, "spearman": math.nan}
            return {"pearson": stats.pearsonr(labels, preds).statistic,
                    "spearman": stats.spearmanr(labels, preds).statistic}
        return {"accuracy": accuracy_score(labels, preds)}


def _check(task: str, preds, labels) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no noisy warnings from our side
        got = compute_metrics(task, preds, labels)
    expected = _reference(task, np.asarray(preds), np.asarray(labels))
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert isinstance(got[key], float)
        if math.isnan(value):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


@st.composite
def class_pairs(draw, num_classes: int):
    n = draw(st.integers(min_value=1, max_value=40))
    ids = st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n)
    return draw(ids), draw(ids)


@pytest.mark.parametrize("task", CLASSIFICATION)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_classification_metrics_equal_sklearn(task: str, data: st.DataObject) -> None:
    preds, labels = data.draw(class_pairs(len(TASKS[task].labels)))
    _check(task, np.array(preds), np.array(labels))


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_stsb_correlations_equal_scipy(data: st.DataObject) -> None:
    n = data.draw(st.integers(min_value=1, max_value=40))
    # Few distinct values, so ties and constant sides come up often.
    scores = st.lists(st.sampled_from([0.0, 0.5, 1.25, 2.0, 3.8, 5.0]), min_size=n, max_size=n)
    _check("stsb", np.array(data.draw(scores)), np.array(data.draw(scores)))


def test_stsb_random_scores_equal_scipy() -> None:
    rng = np.random.default_rng(1)
    for n in (2, 3, 10, 500):
        labels = rng.uniform(0, 5, size=n)
        _check("stsb", labels + rng.normal(scale=1.0, size=n), labels)


@pytest.mark.parametrize("task", CLASSIFICATION)
def test_degenerate_classification(task: str) -> None:
    for preds, labels in [([0] * 9, [0] * 9), ([1] * 9, [1] * 9), ([0] * 9, [0, 1] * 4 + [1]),
                          ([0, 1] * 4 + [1], [1] * 9), ([1] * 9, [0] * 9), ([0], [1])]:
        _check(task, np.array(preds), np.array(labels))


@pytest.mark.parametrize("preds, labels", [
    ([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]), ([1.0, 2.0, 3.0], [4.0, 4.0, 4.0]),
    ([0.0, 0.0], [5.0, 5.0]), ([3.0], [2.0]), ([1.0, 2.0], [2.0, 1.0]),
])
def test_degenerate_stsb(preds: list[float], labels: list[float]) -> None:
    _check("stsb", np.array(preds), np.array(labels))


def test_degenerate_values_are_documented_ones() -> None:
    assert compute_metrics("cola", [1, 1, 1], [0, 1, 0]) == {"mcc": 0.0}
    assert compute_metrics("mrpc", [0, 0], [0, 0]) == {"accuracy": 1.0, "f1": 0.0}
    constant = compute_metrics("stsb", [2.0, 2.0, 2.0], [1.0, 2.0, 3.0])
    assert math.isnan(constant["pearson"]) and math.isnan(constant["spearman"])
    diverged = compute_metrics("stsb", [1.0, math.nan, 3.0], [1.0, 2.0, 3.0])
    assert math.isnan(diverged["pearson"])


def test_logits_equal_their_argmax() -> None:
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(50, 3))
    labels = rng.integers(0, 3, size=50)
    got = compute_metrics("mnli", logits, labels)
    assert got == {"accuracy": accuracy_score(labels, logits.argmax(axis=1))}
    scores = rng.uniform(0, 5, size=(20, 1))
    gold = rng.uniform(0, 5, size=20)
    assert compute_metrics("stsb", scores, gold)["pearson"] == pytest.approx(
        stats.pearsonr(gold, scores[:, 0]).statistic)


def test_keys_are_plain_metric_keys() -> None:
    expected = {"cola": {"mcc"}, "sst2": {"accuracy"}, "mrpc": {"accuracy", "f1"},
                "stsb": {"pearson", "spearman"}, "qqp": {"accuracy", "f1"},
                "mnli": {"accuracy"}, "qnli": {"accuracy"}, "rte": {"accuracy"},
                "wnli": {"accuracy"}}
    for name, keys in expected.items():
        preds = [0.5, 1.0, 2.0] if name == "stsb" else [0, 1, 1]
        labels = [1.0, 0.0, 2.5] if name == "stsb" else [1, 1, 0]
        assert set(compute_metrics(name, preds, labels)) == keys
        assert keys <= set(METRIC_KEYS)


def test_bad_inputs() -> None:
    with pytest.raises(DataError, match="3 predictions but labels of shape"):
        compute_metrics("rte", [0, 1, 0], [0, 1])
    with pytest.raises(DataError, match="logits have 2 columns"):
        compute_metrics("mnli", np.zeros((4, 2)), [0, 1, 2, 0])
    with pytest.raises(DataError, match="class ids"):
        compute_metrics("mnli", [0, 3], [0, 1])
    with pytest.raises(DataError, match="class ids"):
        compute_metrics("sst2", [0, 1], [0, 2])
    with pytest.raises(DataError, match="integer class ids"):
        compute_metrics("sst2", [0.3, 0.9], [0, 1])
    with pytest.raises(DataError, match="no predictions"):
        compute_metrics("sst2", np.array([], dtype=np.int64), np.array([], dtype=np.int64))
