"""Evaluation while fine-tuning (--eval_every) and keeping the best evaluation's weights as the
run's final model (--save_best), for any task that can score its dev data: the task gives an
`evaluate()` and the name of its main metric, `evaluate_during_training` hangs both on the
trainer through `train.loop.evaluate_every`."""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import Callable

from bertforge.checkpoint import load_checkpoint, load_into, save_native
from bertforge.checkpoint.native import NATIVE_META
from bertforge.errors import CheckpointError
from bertforge.fileio import read_json
from bertforge.loading import LoadedModel
from bertforge.tasks.config import EvalDuringTraining
from bertforge.train.loop import Trainer, evaluate_every
from bertforge.train.runtime import Runtime

log = logging.getLogger(__name__)


class BestWeights:
    """The weights of the best evaluation so far, kept as a checkpoint of their own in
    output_dir/best (on disk, so that a resumed run still knows them). After the last step every
    rank loads them into its model, which the run then saves as its final model, and best/ goes."""

    DIR = "best"

    def __init__(self, loaded: LoadedModel, out: Path, metric: str, runtime: Runtime,
                 labels: list[str] | None):
        self.loaded, self.metric, self.runtime, self.labels = loaded, metric, runtime, labels
        self.path = out / self.DIR
        self.step: int | None = None
        self.value = -math.inf
        if (self.path / NATIVE_META).is_file():  # a resumed run: the best before the restart
            meta = read_json(self.path / NATIVE_META, NATIVE_META, CheckpointError)
            self.step, self.value = int(meta["best_step"]), float(meta["best_value"])

    def consider(self, step: int, result: dict) -> None:
        """Rank 0, after an evaluation: keep the weights when `result` beats the best so far
        (ties keep the earlier step; NaN never wins)."""
        value = result.get(self.metric)
        if value is None or not value > self.value:
            return
        self.step, self.value = step, float(value)
        save_native(self.path, self.loaded.model, self.loaded.config, vocab_file=self.loaded.vocab_file,
                    do_lower_case=self.loaded.tokenizer.do_lower_case, labels=self.labels,
                    extra={**self.meta(), "eval": result})
        log.info("step %d: best %s so far (%.4f); weights kept in %s", step, self.metric, value, self.path)

    def restore(self, trainer: Trainer) -> None:
        """Every rank: the best weights into the model, then best/ removed (rank 0)."""
        self.runtime.barrier()  # rank 0 has written the last evaluation's weights
        if not (self.path / NATIVE_META).is_file():
            log.warning("--save_best: no evaluation gave a %s; the final model is the last step's", self.metric)
            return
        ckpt = load_checkpoint(self.path)
        self.step, self.value = int(ckpt.meta["best_step"]), float(ckpt.meta["best_value"])
        load_into(self.loaded.model, ckpt, require_head=True)
        log.info("--save_best: the final model is step %d's (%s %.4f), not step %d's", self.step, self.metric,
                 self.value, trainer.step)
        self.runtime.barrier()
        if self.runtime.is_main:
            shutil.rmtree(self.path)

    def meta(self) -> dict:
        """What bertforge.json records about where the final weights came from."""
        if self.step is None:
            return {}
        return {"best_step": self.step, "best_metric": self.metric, "best_value": self.value}


def evaluate_during_training(args: EvalDuringTraining, trainer: Trainer, loaded: LoadedModel, runtime: Runtime,
                             out: Path, labels: list[str] | None, evaluate: Callable[[], dict | None],
                             metric: str) -> BestWeights | None:
    """Hook `evaluate()` (called on every rank; returns the metrics on rank 0, on other ranks the
    same or None) onto the trainer as `args` say. With --save_best, returns the BestWeights that
    keep the best weights by `metric` in `out` (the run saves them, recording `labels`)."""
    if args.eval_every is None:
        return None
    best = BestWeights(loaded, out, metric, runtime, labels) if args.save_best else None

    def run(step: int) -> dict | None:
        result = evaluate()
        if best is not None and result is not None and runtime.is_main:
            best.consider(step, result)
        return result

    evaluate_every(trainer, args.eval_every, run)
    if best is not None:  # after the final evaluation, which evaluate_every hung on on_train_end first
        trainer.add_callback("on_train_end", best.restore)
    return best


__all__ = ["EvalDuringTraining", "BestWeights", "evaluate_during_training"]
