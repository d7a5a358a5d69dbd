"""The run skeleton every task shares, written once:

    check the config (and, for a run that does not train, the inference precision and engine
    on the device) -> validate every input (the model's config, vocabulary and casing, the
    task's data files, the checkpoint a resume continues from) and the model/data limits
    -> check the output directory -> Runtime (device, process group, precision)
    -> claim the output directory -> seed -> load the model
    -> [train: loader -> steps -> batch plan -> free space -> Trainer + the task's callbacks
        -> fit -> save | else: the model made ready to predict (engine.inference_model)]
    -> the task's evaluation / prediction -> results

Nothing is written before every input has been read, so a typo costs nothing; a run that fails
before it has made anything takes back what it wrote (and puts back the run
--overwrite_output_dir was replacing: see `output_dir`).

A task is a `Job` subclass that supplies its data, its loss and its evaluation (see the methods
below); adding a task means writing one. The CLI calls `run(job)`; so can Python code.
"""

from __future__ import annotations

import glob
import logging
import shutil
import tempfile
from dataclasses import fields, is_dataclass
from pathlib import Path

from bertforge.checkpoint import save_native
from bertforge.checkpoint.native import NATIVE_META, write_description
from bertforge.config import BertConfig
from bertforge.dllog import DLLogger, summary_records
from bertforge.engine import check_inference, inference_model
from bertforge.errors import CheckpointError, ConfigError, WriteError
from bertforge.fileio import check_free_space, read_json
from bertforge.loading import LoadedModel, load_model, plan_model
from bertforge.runconfig import RunConfig, TrainArgs, TrainRun, engine_of, streams_of
from bertforge.tasks.common import log_batch_plan
from bertforge.tasks.evaluation import BestWeights
from bertforge.tasks.output_dir import RUN_CONFIG, OutputDir, check_resumable, config_defaults, config_dict
from bertforge.train.batching import StepPlan
from bertforge.train.checkpoints import check_loader_state, list_checkpoints, tensor_bytes
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

    def validate(self) -> None:
        """Read the task's input files as the run will (parse them, check every row) before
        anything is written or the model loaded: a bad file fails here and costs nothing."""

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
    device = resolve_device(cfg.runtime.device, dist_info.local_rank)  # a device that is not there fails first
    job.check()
    train = _train_args(job)
    if train is not None:
        train.accumulation_for(dist_info.world_size)  # a batch that does not divide fails now
    else:
        check_inference(cfg.runtime.precision, engine_of(cfg.runtime), device, streams_of(cfg.runtime))
    _validate_inputs(job)
    out = OutputDir(cfg.output_dir, training=train is not None,
                    resume=train is not None and bool(train.resume), overwrite=cfg.overwrite_output_dir,
                    result_files=job.result_files, inputs=tuple(input_paths(cfg)))
    out.check()
    with Runtime(cfg.runtime, dist_info) as runtime:
        try:
            if runtime.is_main:
                out.claim(config_dict(cfg), config_defaults(type(cfg)))
            runtime.barrier()
            results = _run(job, runtime, out, progress)
            if runtime.is_main:
                out.commit()
            return results
        except BaseException:
            if runtime.is_main:
                _abandon(out)
            raise
        finally:
            out.release()


def _validate_inputs(job: Job) -> None:
    """Every check of the run's inputs that needs no device and no weights: the model's config,
    vocabulary and casing (and the model/data limits they set), the task's files, and the
    checkpoint --resume PATH names."""
    cfg = job.cfg
    options = job.model_options()
    config = plan_model(cfg.model, job.head, require_head=options.get("require_head", False),
                        default_vocab=options.get("default_vocab"),
                        default_lower_case=options.get("default_lower_case"),
                        need_tokenizer=options.get("need_tokenizer", True))
    job.check_model(config)
    job.validate()
    path = _resume_path(job)
    if path is not None:
        _check_resume_source(path, job)


def _resume_path(job: Job) -> Path | None:
    """The checkpoint --resume PATH names (None for --resume alone: the run's own latest)."""
    train = _train_args(job)
    resume = train.resume if train is not None else None
    return Path(resume) if isinstance(resume, str) and resume not in ("", "latest") else None


def _check_resume_source(path: Path, job: Job) -> None:
    """A checkpoint of another run continues this one only if that run had this run's settings
    (its run_config.json, as for the output directory) and trained this task's head."""
    if not path.is_dir():
        raise CheckpointError(f"--resume {path}: not a checkpoint directory")
    run_dir = path.parent.parent
    if path.parent.name == "checkpoints" and (run_dir / RUN_CONFIG).is_file():
        check_resumable(read_json(run_dir / RUN_CONFIG, "run config", ConfigError), config_dict(job.cfg),
                        run_dir / RUN_CONFIG, config_defaults(type(job.cfg)))
    if (path / NATIVE_META).is_file():
        meta = read_json(path / NATIVE_META, NATIVE_META, CheckpointError)
        head = meta.get("head") if isinstance(meta, dict) else None
        if head is not None and head != job.head:
            task = meta.get("task")
            raise CheckpointError(f"cannot resume from {path}: it is a checkpoint of a {head} model"
                                  f"{f' ({task})' if task and task != head else ''}; this run trains a "
                                  f"{job.head} model")


def input_paths(cfg: RunConfig) -> list[Path]:
    """The existing files and directories the run's model and data settings name (a value may
    be a comma-separated list or a glob): what --overwrite_output_dir must never delete."""
    found: list[Path] = []

    def visit(value) -> None:
        if is_dataclass(value):
            for f in fields(value):
                visit(getattr(value, f.name))
        elif isinstance(value, (list, tuple)):
            for v in value:
                visit(v)
        elif isinstance(value, str):
            for part in filter(None, (p.strip() for p in value.split(","))):
                matches = glob.glob(part) if glob.has_magic(part) else [part] if Path(part).exists() else []
                found.extend(Path(m) for m in matches)

    visit(cfg.model)
    visit(getattr(cfg, "data", None))
    return found


def _abandon(out: OutputDir) -> None:
    """The run failed: take back what it wrote, unless it made something (see OutputDir). A
    failure here must not hide the run's own error."""
    try:
        out.abandon()
    except OSError as e:
        log.warning("could not tidy %s after the failed run: %s", out.path, e)


def _train_args(job: Job) -> TrainArgs | None:
    """How the job trains; None when it does not."""
    if not job.training:
        return None
    if not isinstance(job.cfg, TrainRun):
        raise TypeError(f"{type(job).__name__} trains, but its config {type(job.cfg).__name__} is not a TrainRun")
    return job.cfg.train


def _run(job: Job, runtime: Runtime, out: OutputDir, progress: bool) -> dict:
    cfg = job.cfg
    train = _train_args(job)
    # A resumed run appends: its dllogger file holds the steps before the resume.
    dllog = (DLLogger(cfg.runtime.json_summary, append=bool(train and train.resume))
             if cfg.runtime.json_summary and runtime.is_main else None)
    records = RunRecords(out.path, runtime.is_main)
    seed_everything(train.seed if train is not None else 0)
    resuming = train is not None and bool(train.resume) and (
        _resume_path(job) is not None or bool(list_checkpoints(out.path)))
    loaded = load_model(cfg.model, job.head, unpad=cfg.runtime.unpad, resuming=resuming, **job.model_options())
    job.check_model(loaded.config)
    job.prepare_model(loaded)
    if train is None:
        loaded.model = inference_model(loaded.model, cfg.runtime.precision, engine_of(cfg.runtime), runtime.device)
    results: dict = {}
    if train is not None:
        accumulation = train.accumulation_for(runtime.world_size)
        plan = StepPlan(train.train_batch_size, accumulation, runtime.world_size)
        loader = job.train_loader(loaded, plan, runtime)
        if _resume_path(job) is not None:
            check_loader_state(_resume_path(job), loader.state_dict())
        steps = train.total_steps(loader.steps_per_epoch)
        log_batch_plan(train, runtime, accumulation, steps, loader.steps_per_epoch)
        if runtime.is_main and not train.skip_checkpoint:
            _check_room_for_training(out.path, loaded, train)
        trainer = Trainer(loaded.model, job.loss(), loader, train, runtime, out.path, steps, progress=progress)
        trainer.describe = lambda directory: write_description(
            directory, loaded.config, head=getattr(loaded.model, "head", job.head), vocab_file=loaded.vocab_file,
            do_lower_case=loaded.do_lower_case, labels=job.labels(loaded),
            extra={**job.checkpoint_meta(loaded, trainer), "step": trainer.step})
        if dllog is not None:
            log_losses(trainer, dllog)
        if runtime.is_main and out.replaced is not None:
            # The replaced run goes as soon as this one has a checkpoint, not at the end: both
            # need not fit on the disk for the whole run.
            trainer.add_callback("on_step_end", lambda t: out.commit() if out.made_something() else None)
        job.add_callbacks(trainer, loaded, runtime)
        records.attach(trainer, train.trackers, config_dict(cfg))
        result = trainer.fit()
        results["train"] = {"steps": result.steps, "seconds": result.seconds, "samples": result.samples,
                            "first_loss": result.first_loss, "last_loss": result.last_loss}
        if train.skip_checkpoint:
            log.info("--skip_checkpoint: the trained model is not written")
        elif runtime.is_main:
            save_model(out.path, job, loaded, trainer)
            log.info("model written to %s", out.path)
        runtime.barrier()
    results.update(job.after(loaded, runtime, out.path, results))
    records.final_eval(results.get("eval"), job.best.step if job.best else None)
    if dllog is not None:
        for record in summary_records(results):
            dllog.log((), record)
    return results


# AdamW and LAMB keep two moments per parameter: a resumable checkpoint is about three models.
_CHECKPOINT_MODELS = 3


def _check_room_for_training(out: Path, loaded: LoadedModel, train: TrainArgs) -> None:
    """Refuse before the first step when the disk cannot take the trained model (and, with
    --save_every, one checkpoint besides it)."""
    model_bytes = tensor_bytes(loaded.model.state_dict())
    needed = model_bytes * (1 + (_CHECKPOINT_MODELS if train.save_every else 0))
    check_free_space(out, needed, "the trained model" + (" and a checkpoint" if train.save_every else ""))


def save_model(out: Path, job: Job, loaded: LoadedModel, trainer: Trainer) -> None:
    """The trained model into the run directory; when that fails, the error also says where its
    weights are: the checkpoint of the last step, or a copy written elsewhere."""
    def write(directory: Path) -> None:
        save_native(directory, loaded.model, loaded.config, vocab_file=loaded.vocab_file,
                    do_lower_case=loaded.do_lower_case, labels=job.labels(loaded),
                    extra={**job.checkpoint_meta(loaded, trainer), **(job.best.meta() if job.best else {})})

    try:
        write(out)
    except WriteError as e:
        raise WriteError(f"{e}. {_keep_weights(out, trainer, write, best=job.best is not None)}") from None


def _keep_weights(out: Path, trainer: Trainer, write, best: bool) -> str:
    last = list_checkpoints(out)[-1:]
    if last and last[0].name == f"step_{trainer.step:08d}" and not best:  # --save_best's are another step's
        return f"The trained model is in the checkpoint {last[0]} (--init_checkpoint loads it)"
    rescue = Path(tempfile.mkdtemp(prefix="bertforge-model-"))
    try:
        write(rescue)
    except (WriteError, OSError):
        shutil.rmtree(rescue, ignore_errors=True)
        return ("The trained weights could not be written anywhere else either and are lost: free some "
                "space (--save_every keeps resumable checkpoints) and run again")
    return f"The trained model was written to {rescue} instead"


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
