"""GLUE's official metrics, computed with scikit-learn and scipy.

CoLA: Matthews correlation ("mcc"). SST-2, QNLI, RTE, WNLI, MNLI: "accuracy". MRPC, QQP:
"accuracy" and "f1" of the positive class 1. STS-B: Pearson and Spearman correlation
("pearson", "spearman"). MNLI is scored once per dev split (matched, mismatched), each under the
plain key "accuracy", so every result is a flat dict with the keys in `METRIC_KEYS`.

Degenerate inputs never raise or warn:
- MCC is 0.0 when either side holds one class only, as scikit-learn defines it; its warning
  about a single label is silenced.
- F1 is 0.0 when nothing is positive in labels and predictions, scikit-learn's value
  (`zero_division=0.0` states it instead of warning).
- Pearson and Spearman are NaN when undefined (a constant side, fewer than two pairs, a
  non-finite value), the value scipy returns for a constant input, without its
  ConstantInputWarning. NaN rather than 0.0 because a correlation of nothing is not "no
  correlation": a run whose model predicts one score must not look like a weak but valid run.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Sequence

import numpy as np

from bertforge.data.glue import GlueTask, get_task, prediction_ids
from bertforge.errors import DataError
from bertforge.optional import require

METRIC_KEYS = ("accuracy", "f1", "mcc", "pearson", "spearman")


def _sklearn():
    # scikit-learn and scipy are the `[glue]` extra: imported when a GLUE metric is computed.
    return require("sklearn.metrics", "glue", "GLUE's metrics", package="scikit-learn")


def _stats():
    return require("scipy.stats", "glue", "GLUE's correlation metrics (STS-B)", package="scipy")


def require_metrics() -> None:
    """A ConfigError naming the `[glue]` extra, before any work, when the metrics cannot run."""
    _sklearn()
    _stats()


def _accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    return float(_sklearn().accuracy_score(labels, preds))


def _f1(labels: np.ndarray, preds: np.ndarray) -> float:
    return float(_sklearn().f1_score(labels, preds, pos_label=1, average="binary", zero_division=0.0))


def _mcc(labels: np.ndarray, preds: np.ndarray) -> float:
    with warnings.catch_warnings():
        # One class on both sides: sklearn returns 0.0 and warns that its confusion matrix
        # has a single label; 0.0 is the value we document, the warning is noise.
        warnings.filterwarnings("ignore", message="A single label was found",
                                category=UserWarning)
        return float(_sklearn().matthews_corrcoef(labels, preds))


def _correlation_defined(labels: np.ndarray, preds: np.ndarray) -> bool:
    return (len(labels) >= 2 and bool(np.isfinite(labels).all() and np.isfinite(preds).all())
            and np.ptp(labels) > 0 and np.ptp(preds) > 0)


def _pearson(labels: np.ndarray, preds: np.ndarray) -> float:
    if not _correlation_defined(labels, preds):
        return math.nan
    return float(_stats().pearsonr(labels, preds).statistic)


def _spearman(labels: np.ndarray, preds: np.ndarray) -> float:
    if not _correlation_defined(labels, preds):
        return math.nan
    return float(_stats().spearmanr(labels, preds).statistic)


_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": _accuracy, "f1": _f1, "mcc": _mcc, "pearson": _pearson, "spearman": _spearman,
}


def compute_metrics(task: str | GlueTask, predictions: Sequence | np.ndarray,
                    labels: Sequence | np.ndarray) -> dict[str, float]:
    """The task's metrics, keyed as in `GlueTask.metrics`.

    predictions: (N,) class ids or (N, C) logits for classification, (N,) or (N, 1) scores for
    STS-B. labels: (N,) class ids (`GlueFeatures.labels`) or STS-B scores.
    """
    t = get_task(task)
    preds = prediction_ids(t, predictions)
    gold = _gold_labels(t, labels, len(preds))
    return {key: _METRICS[key](gold, preds) for key in t.metrics}


def _gold_labels(task: GlueTask, labels: Sequence | np.ndarray, n: int) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or len(arr) != n:
        raise DataError(f"GLUE {task.glue_name}: {n} predictions but labels of shape "
                        f"{arr.shape}; expected ({n},)")
    if n == 0:
        raise DataError(f"GLUE {task.glue_name}: no predictions to score")
    if task.labels is None:
        if not np.issubdtype(arr.dtype, np.number):
            raise DataError(f"GLUE {task.glue_name}: expected numeric scores as labels, got "
                            f"dtype {arr.dtype}")
        return arr.astype(np.float64)
    if not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() >= len(task.labels):
        raise DataError(f"GLUE {task.glue_name}: expected integer class ids in "
                        f"[0, {len(task.labels)}) as labels")
    return arr.astype(np.int64)
