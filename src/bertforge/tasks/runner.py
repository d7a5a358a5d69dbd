"""The run skeleton every task shares, written once:

    check the config and the output directory -> Runtime (device, process group, precision)
    -> claim the output directory -> seed -> load the model -> check model/data limits
    -> [train: loader -> steps -> batch plan -> Trainer + the task's callbacks -> fit -> save]
    -> the task's evaluation / prediction -> results

A task is a `Job` subclass that supplies its data, its loss and its evaluation (see the methods
below); adding a task means writing one. The CLI calls `run(job)`; so can Python code.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from bertforge.checkpoint import save_native
from bertforge.checkpoint.native import write_description
from bertforge.config import BertConfig
from bertforge.dllog import DLLogger, summary_records
from bertforge.errors import ConfigError
from bertforge.runconfig import TrainArgs
from bertforge.tasks.common import LoadedModel, load_model, log_batch_plan
from bertforge.tasks.output_dir import OutputDir, config_dict
from bertforge.train.batching import StepPlan
from bertforge.train.loop import LossFn, StepLoader, Trainer
from bertforge.train.runtime import DistInfo, Runtime, resolve_device, seed_everything

log = logging.getLogger(__name__)


class Job:
    """One run of a task. `cfg` is the task's run config, with at least `output_dir`,
    `overwrite_output_dir`, `model` (ModelArgs) and `runtime` (RuntimeArgs); training runs also
    have `train` (TrainArgs)."""

    head: str  # the model head the task trains or uses
    result_files: tuple[str, ...] = ()  # what a prediction/evaluation run writes into output_dir
    progress: bool = True  # progress bars (run() sets it)

    def __init__(self, cfg: Any):
        self.cfg = cfg

    @property
    def training(self) -> bool:
        return bool(getattr(self.cfg, "do_train", False))

    @property
    def train_args(self) -> TrainArgs:
        return self.cfg.train

    # ---- what a task supplies --------------------------------------------------------------

    def check(self) -> None:
        """Config checks that need no device and no model (raise ConfigError)."""

    def model_options(self) -> dict:
        """Extra keyword arguments for `load_model` (num_labels, require_head, defaults)."""
        return {}

    def check_model(self, config: BertConfig) -> None:
        """Model/data limits, checked before any work (max_seq_length, type_vocab_size, ...)."""

    def prepare_model(self, loaded: LoadedModel) -> None:
        """Adapt or check the loaded model before any data work (e.g. its head's label order)."""

    def train_loader(self, loaded: LoadedModel, plan: StepPlan, runtime: Runtime) -> StepLoader:
        raise NotImplementedError(f"{type(self).__name__} does not train")

    def loss(self) -> LossFn:
        raise NotImplementedError(f"{type(self).__name__} does not train")

    def add_callbacks(self, trainer: Trainer, loaded: LoadedModel, runtime: Runtime) -> None:
        """Hook evaluation during training onto the trainer's events."""

    def checkpoint_meta(self, loaded: LoadedModel, trainer: Trainer) -> dict:
        """What bertforge.json records about the trained model besides head and casing."""
        return {}

    def labels(self, loaded: LoadedModel) -> list[str] | None:
        return None

    def after(self, loaded: LoadedModel, runtime: Runtime, out: Path, results: dict) -> dict:
        """Evaluation and prediction after training (or instead of it); returns more results."""
        return {}


def check_seq_length(max_seq_length: int, config: BertConfig, pair: bool = True) -> None:
    """The data's sequence length and segment count against what the model can embed."""
    if max_seq_length > config.max_position_embeddings:
        raise ConfigError(f"--max_seq_length {max_seq_length} exceeds the model's max_position_embeddings "
                          f"({config.max_position_embeddings})")
    if pair and config.type_vocab_size < 2:
        raise ConfigError(f"this task feeds sentence pairs (token types 0 and 1) but the model's "
                          f"type_vocab_size is {config.type_vocab_size}")


def run(job: Job, dist_info: DistInfo = DistInfo(), progress: bool = True) -> dict:
    """Run `job` as the module docstring says; returns its results."""
    cfg = job.cfg
    job.progress = progress
    resolve_device(cfg.runtime.device, dist_info.local_rank)  # a device that is not there fails first
    job.check()
    if job.training:
        cfg.train.accumulation_for(dist_info.world_size)  # a batch that does not divide fails now
    out = OutputDir(cfg.output_dir, training=job.training,
                    resume=job.training and bool(cfg.train.resume), overwrite=cfg.overwrite_output_dir,
                    result_files=job.result_files, inputs=(cfg.model.init_checkpoint,))
    out.check()
    with Runtime(cfg.runtime, dist_info) as runtime:
        try:
            if runtime.is_main:
                out.claim(config_dict(cfg))
            runtime.barrier()
            return _run(job, runtime, Path(cfg.output_dir), progress)
        finally:
            out.release()


def _run(job: Job, runtime: Runtime, out: Path, progress: bool) -> dict:
    cfg = job.cfg
    dllog = DLLogger(cfg.runtime.json_summary) if cfg.runtime.json_summary and runtime.is_main else None
    seed_everything(cfg.train.seed if job.training else 0)
    loaded = load_model(cfg.model, job.head, unpad=cfg.runtime.unpad, **job.model_options())
    job.check_model(loaded.config)
    job.prepare_model(loaded)
    results: dict = {}
    if job.training:
        train = cfg.train
        accumulation = train.accumulation_for(runtime.world_size)
        plan = StepPlan(train.train_batch_size, accumulation, runtime.world_size)
        loader = job.train_loader(loaded, plan, runtime)
        steps = train.total_steps(loader.steps_per_epoch)
        log_batch_plan(train, runtime, accumulation, steps, loader.steps_per_epoch)
        trainer = Trainer(loaded.model, job.loss(), loader, train, runtime, out, steps, progress=progress)
        trainer.describe = lambda directory: write_description(
            directory, loaded.config, head=getattr(loaded.model, "head", job.head), vocab_file=loaded.vocab_file,
            do_lower_case=loaded.tokenizer.do_lower_case, labels=job.labels(loaded),
            extra={**job.checkpoint_meta(loaded, trainer), "step": trainer.step})
        if dllog is not None:
            log_losses(trainer, dllog)
        job.add_callbacks(trainer, loaded, runtime)
        result = trainer.fit()
        results["train"] = {"steps": result.steps, "seconds": result.seconds, "samples": result.samples,
                            "first_loss": result.first_loss, "last_loss": result.last_loss}
        if train.skip_checkpoint:
            log.info("--skip_checkpoint: the trained model is not written")
        elif runtime.is_main:
            save_native(out, loaded.model, loaded.config, vocab_file=loaded.vocab_file,
                        do_lower_case=loaded.tokenizer.do_lower_case, labels=job.labels(loaded),
                        extra=job.checkpoint_meta(loaded, trainer))
            log.info("model written to %s", out)
        runtime.barrier()
    results.update(job.after(loaded, runtime, out, results))
    if dllog is not None:
        for record in summary_records(results):
            dllog.log((), record)
    return results


def log_losses(trainer: Trainer, dllog: DLLogger) -> None:
    """NVIDIA run_pretraining.py's per-log lines: average_loss over the steps since the last
    line (step_loss too when that is one step) and the learning rate, at (epoch, step)."""
    last = {"step": trainer.step}

    def write(t: Trainer) -> None:
        record = t.last_record
        data = {"average_loss": record["loss"], "learning_rate": record["lr"]}
        if record["step"] - last["step"] == 1:
            data["step_loss"] = record["loss"]
        last["step"] = record["step"]
        dllog.log((int(record["epoch"]), record["step"]), data)

    trainer.add_callback("on_log", write)


__all__ = ["Job", "run", "check_seq_length"]
