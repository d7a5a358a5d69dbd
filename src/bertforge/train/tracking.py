"""Run tracking with the tools people already use (`--report_to jsonl,tensorboard,wandb`).

metrics.jsonl is the Trainer's own record and always written; the trackers here receive every
record the Trainer logs (training, evaluation, events) through its on_record callback and close
on on_close, so evaluation records reach them as they reach metrics.jsonl. A record becomes
scalars named `<split>/<key>`: `train/loss`, `train/lr`, `eval/f1`, at the record's step.
Event records (resume, fp16 overflow skips, preemption) stay in metrics.jsonl only.

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

if TYPE_CHECKING:
    from bertforge.train.loop import Trainer

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"


class Tracker(Protocol):
    def log(self, record: dict) -> None: ...
    def close(self) -> None: ...


def scalars(record: dict) -> tuple[int, dict[str, float]] | None:
    """(step, {"<split>/<key>": value}) of a training or evaluation record; None for an event."""
    if "event" in record or "step" not in record:
        return None
    split = record.get("split", "train")
    values = {f"{split}/{k}": float(v) for k, v in record.items()
              if k not in ("step", "split") and isinstance(v, (int, float)) and not isinstance(v, bool)}
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
        if found is not None:
            step, values = found
            self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


TRACKER_CLASSES = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker}


def attach_trackers(trainer: Trainer, names: list[str], run_config: dict) -> list[Tracker]:
    """Start the trackers `names` asks for (besides jsonl, the Trainer's own) and hang them on
    the trainer's on_record / on_close events. Rank 0 only: records are rank 0's."""
    trackers: list[Tracker] = [TRACKER_CLASSES[n](trainer.output_dir, run_config) for n in names if n != "jsonl"]
    for tracker in trackers:
        trainer.add_callback("on_record", lambda t, tracker=tracker: tracker.log(t.record))
        trainer.add_callback("on_close", lambda t, tracker=tracker: tracker.close())
    if trackers:
        log.info("metrics also go to %s", ", ".join(n for n in names if n != "jsonl"))
    return trackers
