"""Run tracking with the tools people already use (`--report_to jsonl,tensorboard,wandb`).

metrics.jsonl is the Trainer's own record and always written; the trackers here receive every
record the Trainer logs (training, evaluation, events) through its on_record callback, so
evaluation records reach them as they reach metrics.jsonl. A record becomes scalars named
`<split>/<key>`: `train/loss`, `train/lr`, `eval/f1`, at the record's step. Event records
(resume, fp16 overflow skips, preemption) stay in metrics.jsonl only, except the run's final
evaluation (`RunRecords`), {"event": "eval", "step": ..., scores}, whose scores become
`final/<key>`: `final/accuracy`, `final/f1` (in W&B, the run's summary).

TensorBoard goes through `torch.utils.tensorboard` (event files in output_dir/tensorboard; a
resumed run purges the steps after its checkpoint, so curves do not fold back), Weights & Biases
through `wandb.init` (its own environment variables apply: WANDB_MODE=offline keeps the run on
disk, WANDB_PROJECT names the project). Each is an extra of its own: `[tensorboard]`, `[wandb]`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from bertforge.errors import ConfigError
from bertforge.optional import require
from bertforge.train.loop import MetricsLog

if TYPE_CHECKING:
    from bertforge.train.loop import Trainer

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"


class Tracker(Protocol):
    def log(self, record: dict) -> None: ...
    def close(self) -> None: ...


def scalars(record: dict) -> tuple[int, dict[str, float]] | None:
    """(step, {"<split>/<key>": value}) of a training or evaluation record, ("final/<key>") of
    the final evaluation's; None for another event."""
    if "step" not in record or record.get("event", "eval") != "eval":
        return None
    split = "final" if "event" in record else record.get("split", "train")
    values = {f"{split}/{k}": float(v) for k, v in record.items()
              if k not in ("step", "split", "event") and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return int(record["step"]), values


class TensorBoardTracker:
    """Scalars into output_dir/tensorboard, flushed per record so a crash loses nothing."""

    def __init__(self, output_dir: Path, run_config: dict):
        require("tensorboard", "tensorboard", "--report_to tensorboard")
        self.log_dir = Path(output_dir) / TENSORBOARD_DIR
        self.writer = None  # made at the first record, which tells whether the run resumed

    def log(self, record: dict) -> None:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            resumed = record.get("event") == "resume"
            self.writer = SummaryWriter(str(self.log_dir), purge_step=int(record["step"]) + 1 if resumed else None)
        found = scalars(record)
        if found is None:
            return
        step, values = found
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class WandbTracker:
    """A Weights & Biases run named after output_dir, with the run config, files under
    output_dir/wandb."""

    def __init__(self, output_dir: Path, run_config: dict):
        wandb = require("wandb", "wandb", "--report_to wandb")
        output_dir = Path(output_dir)
        try:
            self.run = wandb.init(name=output_dir.name, dir=str(output_dir), config=run_config,
                                  reinit="create_new")
        except Exception as e:  # wandb raises its own classes (no login, no network, bad mode)
            raise ConfigError(f"--report_to wandb: wandb.init failed: {e} (WANDB_MODE=offline runs "
                              "without an account or network)") from None

    def log(self, record: dict) -> None:
        found = scalars(record)
        if found is None:
            return
        step, values = found
        if record.get("event") == "eval":
            # The run's final scores: W&B's run summary, the table of runs. Not a history row:
            # with --save_best its step is an earlier one, and W&B drops rows that go back.
            self.run.summary.update(values)
        else:
            self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


TRACKER_CLASSES = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker}


def attach_trackers(trainer: Trainer, names: list[str], run_config: dict,
                    close_after_training: bool = True) -> list[Tracker]:
    """Start the trackers `names` asks for (besides jsonl, the Trainer's own) and hang them on
    the trainer's on_record / on_close events. Rank 0 only: records are rank 0's. They close as
    the trainer closes; with close_after_training False only where training did not finish (an
    error, a preemption): after a finished training the caller closes them, after the records
    it still has to log."""
    trackers: list[Tracker] = [TRACKER_CLASSES[n](trainer.output_dir, run_config) for n in names if n != "jsonl"]
    finished: list[bool] = []
    if not close_after_training:  # hung on last, after every evaluation at the end of training
        trainer.add_callback("on_train_end", lambda t: finished.append(True))
    for tracker in trackers:
        trainer.add_callback("on_record", lambda t, tracker=tracker: tracker.log(t.record))
        trainer.add_callback("on_close", lambda t, tracker=tracker: None if finished else tracker.close())
    if trackers:
        log.info("metrics also go to %s", ", ".join(n for n in names if n != "jsonl"))
    return trackers


class RunRecords:
    """What a run records besides its training: the trackers --report_to names, open from the
    start of training to the end of the run, and the run's final evaluation (the scores of the
    final model that a task computes after training, or in a run that does not train), one
    record {"event": "eval", "step": ..., scores} in metrics.jsonl and the trackers. Rank 0
    writes. Evaluations during training (--eval_every; pretraining's, whose last is after the
    last step) are eval records of their own, written as they happen.

    The final evaluation comes after training (the model is saved, then scored), so the trackers
    stay open after a finished training until `final_eval` closes them; a training that fails
    or is preempted closes them as it stops. (A run that fails after training leaves them to
    close as the process ends; every record is flushed as it is written.)
    """

    def __init__(self, output_dir: Path, is_main: bool):
        self.is_main = is_main
        self.metrics = MetricsLog(Path(output_dir) / "metrics.jsonl" if is_main else None)
        self.trackers: list[Tracker] = []
        self.last_step = 0  # the last training step, 0 when the run does not train

    def attach(self, trainer: Trainer, names: list[str], run_config: dict) -> None:
        """Follow `trainer` to its last step; start the trackers `names` asks for (rank 0)."""
        trainer.add_callback("on_train_end", lambda t: setattr(self, "last_step", t.step))
        if self.is_main:
            self.trackers = attach_trackers(trainer, names, run_config, close_after_training=False)

    def final_eval(self, scores: dict | None, weights_step: int | None = None) -> dict | None:
        """Log the run's final evaluation, if it made one (`scores`), then close the trackers;
        returns the record. Its step is the last training step, or `weights_step` where the
        final model holds an earlier step's weights (--save_best)."""
        record = None
        if scores and self.is_main:
            record = {"event": "eval", "step": self.last_step if weights_step is None else weights_step, **scores}
            self.metrics.write(record)
            for tracker in self.trackers:
                tracker.log(record)
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []
        return record
