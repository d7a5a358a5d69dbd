"""MLPerf's BERT training loop, on the Trainer's callbacks, as MLPerf's reference and its ports
(e.g. Iluvatar's run_pretraining.py) run it: evaluate every `samples_between_eval` training
samples from `samples_start_eval` on, end at the first evaluation whose masked-LM accuracy
reaches `stop_threshold` or once `max_samples_termination` samples are trained, and log the
time to train.

Samples count optimizer steps times the global batch, as MLPerf counts them. Evaluations fall
after the first step at or past each threshold max(samples_start_eval, samples_between_eval)
+ i * samples_between_eval; the thresholds do not move on resume, so a resumed run evaluates
where the uninterrupted run would have.

With a stop_threshold, metrics.jsonl gets {"event": "run_start", ...} when training starts
and {"event": "run_stop", "status": "success" | "aborted", "mlm_accuracy", "time_to_train_s",
"step", "samples", "reason"} at the end: success when an evaluation reached the threshold,
the time taken then (its evaluation included, the final checkpoint not). A resumed run counts
its own time only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from bertforge.train.loop import Trainer, evaluate_on

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleSchedule:
    """Evaluations every `every` samples from `start` on, for steps of `per_step` samples."""

    every: int
    start: int
    per_step: int

    def _passed(self, samples: int) -> int:
        """How many thresholds lie at or below `samples`."""
        first = max(self.start, self.every)
        return 0 if samples < first else (samples - first) // self.every + 1

    def due(self, step: int) -> bool:
        """Whether step `step` is the first at or past a threshold."""
        return self._passed(step * self.per_step) > self._passed((step - 1) * self.per_step)


class RunStop:
    """Stops the run at the target accuracy and logs run_start / run_stop (see the module)."""

    def __init__(self, trainer: Trainer, threshold: float, per_step: int):
        self.trainer = trainer
        self.threshold = threshold
        self.per_step = per_step
        self.t0 = time.perf_counter()
        self.success: tuple[int, float, float] | None = None  # (step, accuracy, seconds)
        self.last_accuracy: float | None = None
        self.record: dict | None = None  # the run_stop record, once logged
        trainer.add_callback("on_train_start", self._start)

    def _start(self, t: Trainer) -> None:
        self.t0 = time.perf_counter()
        t.log({"event": "run_start", "step": t.step, "samples": t.step * self.per_step,
               "stop_threshold": self.threshold})

    def check(self, step: int, accuracy: float) -> None:
        """After an evaluation: stop if `accuracy` (the same on every rank) reaches the target."""
        self.last_accuracy = accuracy
        if self.success is None and accuracy >= self.threshold:
            self.success = (step, accuracy, time.perf_counter() - self.t0)
            self.trainer.request_stop(f"masked-LM accuracy {accuracy:.4f} reached stop_threshold {self.threshold}")

    def finish(self, t: Trainer) -> None:
        """Log the run_stop record (also kept in `record`, for the run's summary)."""
        if self.success is not None:
            step, accuracy, seconds = self.success
            status = "success"
        else:
            step, accuracy, seconds = t.step, self.last_accuracy, time.perf_counter() - self.t0
            status = "aborted"
        record = {"event": "run_stop", "status": status, "mlm_accuracy": accuracy, "time_to_train_s": seconds,
                  "step": step, "samples": step * self.per_step, "reason": t.stop_reason or "max_steps"}
        t.log(record)
        self.record = record
        log.info("run_stop: %s at step %d, masked-LM accuracy %s, %.1f s to train", status, step,
                 "n/a" if accuracy is None else f"{accuracy:.4f}", seconds)


def add_training_loop(trainer: Trainer, evaluate: Callable[[int], dict] | None, *, per_step: int,
                      eval_every: int | None = None, samples_between_eval: int | None = None,
                      samples_start_eval: int = 0, stop_threshold: float | None = None,
                      max_samples_termination: int | None = None) -> RunStop | None:
    """Hook evaluation (`evaluate(step)` -> a record with "mlm_accuracy"; None: no evaluation
    set), the stop rules and the run_start/run_stop records onto `trainer`. Returns the RunStop
    when a stop_threshold is set."""
    run_stop = RunStop(trainer, stop_threshold, per_step) if stop_threshold is not None else None
    if evaluate is not None:
        if samples_between_eval:
            due = SampleSchedule(samples_between_eval, samples_start_eval, per_step).due
        else:
            due = (lambda step: step % eval_every == 0) if eval_every else None

        def evaluate_and_check(step: int) -> dict:
            result = {**evaluate(step), "samples": step * per_step}
            if run_stop is not None:
                run_stop.check(step, result["mlm_accuracy"])
            return result

        evaluate_on(trainer, due, evaluate_and_check)
    if max_samples_termination:
        trainer.add_callback("on_step_end", lambda t: t.request_stop(
            f"max_samples_termination: {t.step * per_step} samples trained")
            if t.step * per_step >= max_samples_termination else None)
    if run_stop is not None:
        trainer.add_callback("on_train_end", run_stop.finish)
    return run_stop


__all__ = ["RunStop", "SampleSchedule", "add_training_loop"]
