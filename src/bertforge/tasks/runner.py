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

from bertforge.checkpoint import save_native
from bertforge.checkpoint.native import write_description
from bertforge.config import BertConfig
from bertforge.dllog import DLLogger, summary_records
from bertforge.loading import LoadedModel, load_model
from bertforge.runconfig import RunConfig, TrainArgs, TrainRun
from bertforge.tasks.common import log_batch_plan
from bertforge.tasks.evaluation import BestWeights
from bertforge.tasks.output_dir import OutputDir, config_dict
from bertforge.train.batching import StepPlan
from bertforge.train.loop import LossFn, StepLoader, Trainer
from bertforge.train.runtime import DistInfo, Runtime, resolve_device, seed_everything
from bertforge.train.tracking import RunRecords

log = logging.getLogger(__name__)


class Job:
    """One run of a task, as its run config says (a `RunConfig`; a `TrainRun` when it trains)."""

    head: str  # the model head the task trains or uses
    result_files: tuple[str, ...] = ()  # what a prediction/evaluation run writes into output_dir
    progress: bool = True  # progress bars (run() sets it)
    best: BestWeights | None = None  # with --save_best, where the final weights come from

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg

    @property
    def training(self) -> bool:
        return self.cfg.training

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


def run(job: Job, dist_info: DistInfo = DistInfo(), progress: bool = True) -> dict:
    """Run `job` as the module docstring says; returns its results."""
    cfg = job.cfg
    job.progress = progress
    resolve_device(cfg.runtime.device, dist_info.local_rank)  # a device that is not there fails first
    job.check()
    train = _train_args(job)
    if train is not None:
        train.accumulation_for(dist_info.world_size)  # a batch that does not divide fails now
    out = OutputDir(cfg.output_dir, training=train is not None,
                    resume=train is not None and bool(train.resume), overwrite=cfg.overwrite_output_dir,
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


def _train_args(job: Job) -> TrainArgs | None:
    """How the job trains; None when it does not."""
    if not job.training:
        return None
    if not isinstance(job.cfg, TrainRun):
        raise TypeError(f"{type(job).__name__} trains, but its config {type(job.cfg).__name__} is not a TrainRun")
    return job.cfg.train


def _run(job: Job, runtime: Runtime, out: Path, progress: bool) -> dict:
    cfg = job.cfg
    train = _train_args(job)
    # A resumed run appends: its dllogger file holds the steps before the resume.
    dllog = (DLLogger(cfg.runtime.json_summary, append=bool(train and train.resume))
             if cfg.runtime.json_summary and runtime.is_main else None)
    records = RunRecords(out, runtime.is_main)
    seed_everything(train.seed if train is not None else 0)
    loaded = load_model(cfg.model, job.head, unpad=cfg.runtime.unpad, **job.model_options())
    job.check_model(loaded.config)
    job.prepare_model(loaded)
    results: dict = {}
    if train is not None:
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
        records.attach(trainer, train.trackers, config_dict(cfg))
        result = trainer.fit()
        results["train"] = {"steps": result.steps, "seconds": result.seconds, "samples": result.samples,
                            "first_loss": result.first_loss, "last_loss": result.last_loss}
        if train.skip_checkpoint:
            log.info("--skip_checkpoint: the trained model is not written")
        elif runtime.is_main:
            save_native(out, loaded.model, loaded.config, vocab_file=loaded.vocab_file,
                        do_lower_case=loaded.tokenizer.do_lower_case, labels=job.labels(loaded),
                        extra={**job.checkpoint_meta(loaded, trainer),
                               **(job.best.meta() if job.best else {})})
            log.info("model written to %s", out)
        runtime.barrier()
    results.update(job.after(loaded, runtime, out, results))
    records.final_eval(results.get("eval"), job.best.step if job.best else None)
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


__all__ = ["Job", "run"]
