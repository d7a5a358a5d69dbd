"""GLUE predictions as label ids, and leaderboard submission files."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from bertforge.data.glue.tasks import GlueTask, get_task
from bertforge.errors import ConfigError, DataError
from bertforge.fileio import atomic_write_text


def prediction_ids(task: str | GlueTask, predictions: Sequence | np.ndarray) -> np.ndarray:
    """Predictions as (N,) int64 class ids or, for STS-B, (N,) float64 scores.

    Accepts class ids (N,), logits (N, C) (argmax is taken), and for STS-B scores (N,) or (N, 1).
    """
    t = get_task(task)
    arr = np.asarray(predictions)
    if t.labels is None:
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.number):
            raise DataError(f"GLUE {t.glue_name}: expected (N,) or (N, 1) numeric scores, got "
                            f"an array of shape {arr.shape} and dtype {arr.dtype}")
        return arr.astype(np.float64)
    if arr.ndim == 2:
        if arr.shape[1] != len(t.labels):
            raise DataError(f"GLUE {t.glue_name}: logits have {arr.shape[1]} columns; expected "
                            f"{len(t.labels)} (one per label {list(t.labels)})")
        arr = arr.argmax(axis=1)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"GLUE {t.glue_name}: expected (N,) integer class ids or (N, C) logits, "
                        f"got an array of shape {arr.shape} and dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= len(t.labels)):
        raise DataError(f"GLUE {t.glue_name}: class ids must lie in [0, {len(t.labels)}); "
                        f"found {arr.min()}..{arr.max()}")
    return arr.astype(np.int64)


def write_submission(path_or_dir: str | Path, task: str | GlueTask,
                     predictions: Sequence | np.ndarray, split: str = "test",
                     indices: Sequence[str | int] | None = None) -> Path:
    """Write a GLUE leaderboard file `index<TAB>prediction`, atomically; return its path.

    `path_or_dir` ending in ".tsv" is the file; anything else is a folder (created) that gets
    GLUE's file name (MRPC.tsv, MNLI-m.tsv, ...). Predictions are as `prediction_ids` accepts;
    class ids are written as label names, STS-B scores clipped to [0, 5]. `indices` defaults to
    0..N-1, the `index` column of every GLUE test file; pass the examples' guids to copy them.
    """
    t = get_task(task)
    s = t.split(split)
    if s.submission_file is None:
        test_names = ", ".join(x.name for x in t.splits_of("test"))
        raise ConfigError(f"GLUE submissions are made for test splits ({test_names}), "
                          f"not {split!r}")
    values = prediction_ids(t, predictions)
    if indices is None:
        indices = range(len(values))
    elif len(indices) != len(values):
        raise DataError(f"GLUE {t.glue_name}: {len(indices)} indices for {len(values)} "
                        f"predictions")
    if t.labels is None:
        names = [repr(float(v)) for v in np.clip(values, 0.0, 5.0)]
    else:
        names = [t.labels[v] for v in values]
    target = Path(path_or_dir)
    if target.suffix != ".tsv":
        target = target / s.submission_file
    lines = ["index\tprediction\n"] + [f"{i}\t{name}\n" for i, name in zip(indices, names)]
    atomic_write_text(target, "".join(lines))
    return target
