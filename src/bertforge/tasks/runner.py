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
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bertforge.checkpoint import load_checkpoint, load_into, save_native
from bertforge.config import BertConfig
from bertforge.errors import ConfigError
from bertforge.runconfig import TrainArgs
from bertforge.tasks.common import LoadedModel, load_model, log_batch_plan
from bertforge.tasks.output_dir import OutputDir, config_dict
from bertforge.train.batching import StepPlan
from bertforge.train.loop import LossFn, StepLoader, Trainer, evaluate_every
from bertforge.train.runtime import DistInfo, Runtime, resolve_device, seed_everything
from bertforge.train.tracking import attach_trackers

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class EvalDuringTraining:
    """Evaluation on the dev data while fine-tuning."""

    eval_every: int | None = None
    """Evaluate on the dev data every N optimizer steps and after the last one (eval records in
    metrics.jsonl and the trackers)."""
    save_best: bool = False
    """Make the weights of the best evaluation (the task's main metric: SQuAD F1, GLUE's first
    metric) the run's final model; bertforge.json records their step."""

    def __post_init__(self) -> None:
        if self.eval_every is not None and self.eval_every < 1:
            raise ConfigError(f"--eval_every must be at least 1, got {self.eval_every}")
        if self.save_best and self.eval_every is None:
            raise ConfigError("--save_best needs --eval_every: the best of which evaluations?")


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
        if (self.path / "bertforge.json").is_file():  # a resumed run: the best before the restart
            meta = load_checkpoint(self.path).meta
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
        if not (self.path / "bertforge.json").is_file():
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


def evaluate_during_training(job: Job, trainer: Trainer, loaded: LoadedModel, runtime: Runtime,
                             evaluate: Callable[[], dict | None], metric: str) -> None:
    """Hook `evaluate()` (called on every rank; returns the metrics on rank 0, on other ranks the
    same or None) onto the trainer as job.cfg.evaluation says, keeping the best weights by `metric`
    with --save_best."""
    args: EvalDuringTraining = job.cfg.evaluation
    if args.eval_every is None:
        return
    best = None
    if args.save_best:
        best = job.best = BestWeights(loaded, Path(job.cfg.output_dir), metric, runtime, job.labels(loaded))

    def run(step: int) -> dict | None:
        result = evaluate()
        if best is not None and result is not None and runtime.is_main:
            best.consider(step, result)
        return result

    evaluate_every(trainer, args.eval_every, run)
    if best is not None:  # after the final evaluation, which evaluate_every hung on on_train_end first
        trainer.add_callback("on_train_end", best.restore)


class Job:
    """One run of a task. `cfg` is the task's run config, with at least `output_dir`,
    `overwrite_output_dir`, `model` (ModelArgs) and `runtime` (RuntimeArgs); training runs also
    have `train` (TrainArgs)."""

    head: str  # the model head the task trains or uses
    result_files: tuple[str, ...] = ()  # what a prediction/evaluation run writes into output_dir
    progress: bool = True  # progress bars (run() sets it)
    best: BestWeights | None = None  # with --save_best, where the final weights come from

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
        job.add_callbacks(trainer, loaded, runtime)
        if runtime.is_main:
            attach_trackers(trainer, train.trackers, config_dict(cfg))
        result = trainer.fit()
        results["train"] = {"steps": result.steps, "seconds": result.seconds, "samples": result.samples,
                            "first_loss": result.first_loss, "last_loss": result.last_loss}
        if runtime.is_main:
            save_native(out, loaded.model, loaded.config, vocab_file=loaded.vocab_file,
                        do_lower_case=loaded.tokenizer.do_lower_case, labels=job.labels(loaded),
                        extra={**job.checkpoint_meta(loaded, trainer),
                               **(job.best.meta() if job.best else {})})
            log.info("model written to %s", out)
        runtime.barrier()
    results.update(job.after(loaded, runtime, out, results))
    return results


__all__ = ["Job", "run", "check_seq_length", "EvalDuringTraining", "BestWeights", "evaluate_during_training"]
