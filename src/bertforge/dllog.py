"""NVIDIA's dllogger JSON lines, for dashboards built on DeepLearningExamples' outputs.

Each line is `DLLL ` followed by one JSON object, as dllogger's JSONStreamBackend writes it:
    DLLL {"timestamp": "1700000000.5", "datetime": "2023-11-14 22:13:20.500000",
          "elapsedtime": "12.3", "type": "LOG", "step": [0, 10], "data": {"average_loss": 7.1}}
with `step` a list (a (epoch, step) pair, or [] for the run's summary) or the string "PARAMETER",
and METADATA lines giving a metric's unit. The keys are those of NVIDIA's scripts:
run_pretraining.py (`average_loss`, `step_loss`, `learning_rate`; at the end `e2e_train_time`,
`training_sequences_per_second`, `final_loss`), run_squad.py and run_glue.py (`e2e_train_time`,
`training_sequences_per_second`, `final_loss`, `e2e_inference_time`,
`inference_sequences_per_second`, SQuAD's `exact_match` and `F1`). GLUE's scores keep their
own names (`accuracy`, `F1`, `mcc`, `pearson`, `spearman`): run_glue.py's dllogger lines
call accuracy `exact_match`, which reads as a SQuAD score. NVIDIA's dllogger is not on PyPI, so
the dozen lines of its format are written here.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

from bertforge.fileio import json_safe

UNITS = {"e2e_train_time": "s", "training_sequences_per_second": "sequences/s", "final_loss": None,
         "e2e_inference_time": "s", "inference_sequences_per_second": "sequences/s", "exact_match": None,
         "F1": None, "accuracy": None, "mcc": None, "pearson": None, "spearman": None,
         "average_loss": None, "step_loss": None, "learning_rate": None}


class DLLogger:
    """Appends dllogger lines to `path`: a new file, or one emptied on opening as dllogger's
    does, unless `append` (a resumed run, whose steps before the resume are in the file)."""

    def __init__(self, path: str | Path, append: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not append:
            self.path.write_text("", encoding="utf-8")
        self._start = time.time()
        for metric, unit in UNITS.items():
            self._write({"type": "METADATA", "metric": metric, "metadata": {"unit": unit}})

    def log(self, step: tuple | str, data: dict) -> None:
        """One LOG line: `step` is (epoch, step), () for a summary, or "PARAMETER"."""
        self._write({"type": "LOG", "step": list(step) if isinstance(step, tuple) else step,
                     "data": json_safe(data)})

    def _write(self, record: dict) -> None:
        now = time.time()
        line = {"timestamp": str(now), "datetime": str(datetime.fromtimestamp(now)),
                "elapsedtime": str(now - self._start), **record}
        with self.path.open("a", encoding="utf-8") as f:
            f.write("DLLL " + json.dumps(line) + "\n")


def summary_records(results: dict) -> list[dict]:
    """NVIDIA's end-of-run summary lines from a bertforge run's results: training time,
    throughput and final loss; prediction time and throughput; the scores: SQuAD's as
    exact_match and F1, GLUE's under their own names (f1 as F1, as NVIDIA's scripts write it)."""
    records = []
    train = results.get("train")
    if train and train.get("seconds"):
        records.append({"e2e_train_time": train["seconds"],
                        "training_sequences_per_second": train["samples"] / train["seconds"],
                        "final_loss": train.get("last_loss")})
    predict = results.get("predict") or {}
    if predict.get("seconds"):
        records.append({"e2e_inference_time": predict["seconds"],
                        "inference_sequences_per_second": predict["sequences_per_second"]})
    scores = results.get("eval") or {}
    # SQuAD v2.0's official metric names exact match "exact".
    em = next((scores[k] for k in ("exact_match", "exact") if k in scores), None)
    if em is not None:
        f1 = scores.get("f1")
        records.append({"exact_match": em, **({"F1": f1} if f1 is not None else {})})
    elif scores:
        records.append({"F1" if k == "f1" else k: v for k, v in scores.items()})
    return records
