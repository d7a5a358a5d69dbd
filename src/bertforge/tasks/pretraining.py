"""BERT pretraining (`bertforge pretrain`): masked LM + next sentence prediction with LAMB,
two phases (seq 128, then seq 512 from phase 1's weights), held-out MLM/NSP accuracy, atomic
checkpoints and exact resume."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertforge.data.pretraining import PretrainingDataset
from bertforge.errors import ConfigError
from bertforge.runconfig import ModelArgs, RuntimeArgs, TrainArgs
from bertforge.tasks.common import LoadedModel, model_inputs, write_json
from bertforge.tasks.runner import Job, check_seq_length, run
from bertforge.train.batching import StepPlan, trim_padding
from bertforge.train.loop import Trainer, evaluate_every, to_device
from bertforge.train.runtime import DistInfo, Runtime

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class PretrainData:
    """Shards written by `bertforge prepare pretraining`."""

    input_dir: str | None = None
    """The prepared data directory (its train split trains, its held_out split evaluates)."""
    eval_every: int | None = None
    """Evaluate MLM/NSP accuracy on the held-out split every N steps (and at the end)."""
    eval_batch_size: int = 64
    """Sequences per device per evaluation batch."""
    max_eval_samples: int | None = None
    """Evaluate on at most this many held-out samples (all by default)."""

    def __post_init__(self) -> None:
        for name in ("eval_every", "eval_batch_size", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name} must be at least 1, got {value}")


def _pretrain_defaults() -> TrainArgs:
    # NVIDIA's phase-1 hyperparameters (global batch 65,536 through accumulation).
    return TrainArgs(learning_rate=6e-3, warmup_proportion=0.2843, max_steps=7038, train_batch_size=64,
                     weight_decay=0.01, max_grad_norm=1.0, log_every=10, optimizer="lamb", schedule="poly",
                     schedule_power=0.5)


@dataclass(kw_only=True)
class PretrainRun:
    """Pretrain BERT with masked LM + NSP and LAMB."""

    output_dir: str = "runs/pretrain"
    """The run directory: model, metrics.jsonl, checkpoints, train_summary.json."""
    overwrite_output_dir: bool = False
    """Replace the run already in output_dir (only files bertforge wrote)."""
    phase2: bool = False
    """Phase 2: start from --init_checkpoint's weights (phase 1's output_dir) with a fresh
    optimizer and schedule, on seq-512 data. NVIDIA's spelling, --phase2 --resume_from_checkpoint
    --phase1_end_step N in a directory holding its ckpt_N.pt, starts from that file's weights and
    LAMB moments with the step count reset, as run_pretraining.py does."""
    phase1_end_step: int | None = None
    """NVIDIA's run_pretraining.py: the last step of phase 1, which tells its phase-1 checkpoints
    (ckpt_<step <= N>.pt) from phase-2 ones (ckpt_<N + phase-2 step>.pt) in output_dir."""
    resume_step: int | None = None
    """NVIDIA's run_pretraining.py: resume from output_dir/ckpt_<resume_step>.pt rather than the latest."""
    do_train: bool = True
    """Pretraining trains (the reference scripts' --do_train); false is refused."""
    do_eval: bool = True
    """Evaluate MLM/NSP accuracy on the held-out split (at the end and every --eval_every steps)."""
    max_seq_length: int | None = None
    """As the reference scripts pass it: checked against the prepared data, which fixes it."""
    max_predictions_per_seq: int | None = None
    """As the reference scripts pass it: checked against the prepared data, which fixes it."""
    data: PretrainData = field(default_factory=PretrainData)
    model: ModelArgs = field(default_factory=ModelArgs)
    train: TrainArgs = field(default_factory=_pretrain_defaults)
    runtime: RuntimeArgs = field(default_factory=RuntimeArgs)


class PretrainLoss:
    """Google's losses: MLM cross-entropy averaged over the real masked positions (weights),
    plus NSP cross-entropy averaged over sequences."""

    def denominators(self, batch: dict[str, Tensor]) -> dict[str, float]:
        return {"mlm": float(batch["masked_lm_weights"].sum()), "nsp": batch["input_ids"].shape[0]}

    def loss_sums(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        out = model(**model_inputs(batch, "masked_lm_positions"))
        mlm = F.cross_entropy(out.mlm_logits.float().flatten(0, 1), batch["masked_lm_ids"].flatten(),
                              reduction="none")
        return {"mlm": (mlm * batch["masked_lm_weights"].flatten()).sum(),
                "nsp": F.cross_entropy(out.nsp_logits.float(), batch["next_sentence_labels"], reduction="sum")}


class PretrainStepLoader:
    """The data set's global batches, this rank's rows cut into micro-batches."""

    def __init__(self, dataset: PretrainingDataset, plan: StepPlan, rank: int):
        self.dataset = dataset
        self.plan = plan
        self.rank = rank
        self.steps_per_epoch = dataset.num_samples // plan.global_batch
        if self.steps_per_epoch == 0:
            raise ConfigError(f"{dataset.num_samples} training instances are fewer than one global batch "
                              f"of {plan.global_batch}; use a smaller batch or more data")

    def __iter__(self):
        B = self.plan.per_device
        for rows in self.dataset.batches(self.plan.global_batch, self.rank, self.plan.world_size):
            yield [trim_padding({k: v[m * B:(m + 1) * B] for k, v in rows.items()})
                   for m in range(self.plan.accumulation)]

    def state_dict(self) -> dict:
        return self.dataset.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.dataset.load_state_dict(state)


@torch.no_grad()
def evaluate_heldout(model: nn.Module, dataset: PretrainingDataset, runtime: Runtime, batch_size: int,
                     max_samples: int | None = None) -> dict[str, float]:
    """MLM and NSP accuracy and loss over the held-out split (sums reduced over ranks)."""
    model.eval()
    # mlm loss, mlm correct, masked, nsp loss, nsp correct, sequences: summed on the device
    sums = torch.zeros(6, dtype=torch.float64, device=runtime.device)
    seen = 0
    t0 = time.perf_counter()
    for batch in dataset.eval_batches(batch_size * runtime.world_size, runtime.dist.rank, runtime.world_size):
        if max_samples is not None and seen >= max_samples:
            break
        seen += batch["input_ids"].shape[0] * runtime.world_size
        batch = to_device(trim_padding(batch), runtime.device)
        with runtime.autocast():
            out = model(**model_inputs(batch, "masked_lm_positions"))
        w = batch["masked_lm_weights"].flatten().double()
        labels = batch["masked_lm_ids"].flatten()
        logits = out.mlm_logits.float().flatten(0, 1)
        mlm_loss = F.cross_entropy(logits, labels, reduction="none").double()
        nsp = out.nsp_logits.float()
        nsp_labels = batch["next_sentence_labels"]
        sums += torch.stack([(mlm_loss * w).sum(), ((logits.argmax(-1) == labels).double() * w).sum(), w.sum(),
                             F.cross_entropy(nsp, nsp_labels, reduction="sum").double(),
                             (nsp.argmax(-1) == nsp_labels).double().sum(),
                             torch.full((), float(nsp_labels.shape[0]), dtype=torch.float64, device=w.device)])
    sums = runtime.all_reduce_sum(sums).cpu()
    masked, seqs = max(sums[2].item(), 1.0), max(sums[5].item(), 1.0)
    return {"mlm_accuracy": sums[1].item() / masked, "nsp_accuracy": sums[4].item() / seqs,
            "mlm_loss": sums[0].item() / masked, "nsp_loss": sums[3].item() / seqs,
            "loss": sums[0].item() / masked + sums[3].item() / seqs,
            "eval_sequences": int(sums[5].item()), "eval_seconds": time.perf_counter() - t0}


class PretrainJob(Job):
    head = "pretraining"

    def __init__(self, cfg: PretrainRun):
        super().__init__(cfg)
        self.train_set: PretrainingDataset | None = None
        self.nvidia: NvidiaResume | None = None

    @property
    def training(self) -> bool:
        return True

    def check(self) -> None:
        cfg = self.cfg
        if not cfg.do_train:
            raise ConfigError("--do_train=false: pretraining trains (evaluate a checkpoint with --do_eval on a "
                              "run of --max_steps 1, or fine-tune it)")
        if cfg.data.input_dir is None:
            raise ConfigError("--input_dir is required: a directory written by `bertforge prepare pretraining`")
        self.nvidia = nvidia_resume_point(cfg)
        if cfg.phase2 and not cfg.model.init_checkpoint and self.nvidia is None:
            raise ConfigError("--phase2 starts from phase 1's weights: pass --init_checkpoint PHASE1_OUTPUT_DIR "
                              "(bertforge keeps each phase in its own --output_dir; add --resume to continue an "
                              "interrupted phase 2)")
        if cfg.train.max_steps is None:
            raise ConfigError("pretraining runs for --max_steps optimizer steps; give --max_steps")
        self.train_set = PretrainingDataset(cfg.data.input_dir, "train")
        for name in ("max_seq_length", "max_predictions_per_seq"):
            given, prepared = getattr(cfg, name), getattr(self.train_set, name)
            if given is not None and given != prepared:
                raise ConfigError(f"--{name} {given}, but {cfg.data.input_dir} was prepared with {name}="
                                  f"{prepared}; pass {prepared} (or leave the flag out: the data decides)")

    def model_options(self) -> dict:
        # The data was tokenized with a vocabulary and casing; a checkpoint's own, if it has
        # one, must agree (load_model warns when casing does not).
        return {"default_vocab": self.train_set.vocab_file, "default_lower_case": self.train_set.do_lower_case}

    def check_model(self, config) -> None:
        check_seq_length(self.train_set.max_seq_length, config)

    def train_loader(self, loaded: LoadedModel, plan: StepPlan, runtime: Runtime) -> PretrainStepLoader:
        log.info("pretraining%s: %d instances of length <= %d; %s", " phase 2" if self.cfg.phase2 else "",
                 self.train_set.num_samples, self.train_set.max_seq_length, self.cfg.data.input_dir)
        return PretrainStepLoader(self.train_set, plan, runtime.dist.rank)

    def loss(self) -> PretrainLoss:
        return PretrainLoss()

    def add_callbacks(self, trainer: Trainer, loaded: LoadedModel, runtime: Runtime) -> None:
        if self.nvidia is not None:
            import_nvidia_checkpoint(self.nvidia, self.cfg, trainer, loaded, runtime)
        d = self.cfg.data
        if not self.cfg.do_eval:
            return
        heldout = PretrainingDataset(d.input_dir, "held_out")
        if heldout.num_samples == 0:
            log.warning("%s has no held-out instances: no MLM/NSP accuracy will be reported", d.input_dir)
            return

        def evaluate(step: int) -> dict:
            result = evaluate_heldout(loaded.model, heldout, runtime, d.eval_batch_size, d.max_eval_samples)
            return {**result, "lr": trainer.lr}

        evaluate_every(trainer, d.eval_every, evaluate)

    def checkpoint_meta(self, loaded: LoadedModel, trainer: Trainer) -> dict:
        return {"task": "pretraining", "phase": 2 if self.cfg.phase2 else 1, "steps": trainer.step}

    def after(self, loaded: LoadedModel, runtime: Runtime, out: Path, results: dict) -> dict:
        summary = results["train"]
        if runtime.is_main:
            write_json(out / "train_summary.json", summary)
            log.info("pretraining done: %s", json.dumps(summary))
        return {}


@dataclass
class NvidiaResume:
    """Where a run continues from NVIDIA run_pretraining.py's checkpoint (see PretrainRun.phase2)."""

    path: Path
    step: int  # the step this run continues after
    phase2_start: bool  # phase 2 starting from phase 1: moments carried, step counts reset


def nvidia_resume_point(cfg: PretrainRun) -> NvidiaResume | None:
    """The ckpt_<step>.pt of NVIDIA's run_pretraining.py to continue from, when the run resumes
    in a directory that holds them and no bertforge checkpoint of its own yet."""
    from bertforge.checkpoint.nvidia import find_pretraining_checkpoints
    from bertforge.train.checkpoints import list_checkpoints

    out = Path(cfg.output_dir)
    found = find_pretraining_checkpoints(out)
    if not cfg.train.resume or not found or list_checkpoints(out):
        if cfg.phase2 and cfg.phase1_end_step is not None and cfg.train.resume and not found and \
                not cfg.model.init_checkpoint:
            raise ConfigError(f"--phase2 --resume_from_checkpoint --phase1_end_step: {out} holds no "
                              "run_pretraining.py checkpoint (ckpt_<step>.pt) to start phase 2 from. bertforge keeps "
                              "each phase in its own directory: bertforge pretrain --phase2 --init_checkpoint "
                              "PHASE1_OUTPUT_DIR --output_dir PHASE2_DIR")
        return None
    if cfg.resume_step is not None and cfg.resume_step >= 0:
        if cfg.resume_step not in found:
            raise ConfigError(f"--resume_step {cfg.resume_step}: no {out}/ckpt_{cfg.resume_step}.pt (there are "
                              f"{', '.join(p.name for _, p in sorted(found.items()))})")
        step = cfg.resume_step
    else:
        step = max(found)
    if not cfg.phase2:
        return NvidiaResume(found[step], step, False)
    if cfg.phase1_end_step is None:
        raise ConfigError(f"--phase2 in {out}, which holds run_pretraining.py checkpoints: give --phase1_end_step "
                          "(the last step of phase 1) so that phase-1 and phase-2 checkpoints can be told apart")
    if step <= cfg.phase1_end_step:
        return NvidiaResume(found[step], 0, True)
    return NvidiaResume(found[step], step - cfg.phase1_end_step, False)


def import_nvidia_checkpoint(point: NvidiaResume, cfg: PretrainRun, trainer: Trainer, loaded: LoadedModel,
                             runtime: Runtime) -> None:
    """Load an NVIDIA checkpoint's weights and LAMB moments into the trainer and write them as
    this run's first checkpoint, from which the trainer then resumes (as from any of its own)."""
    from bertforge.checkpoint import load_into
    from bertforge.checkpoint.nvidia import read_pretraining_checkpoint

    if cfg.train.optimizer != "lamb":
        raise ConfigError(f"{point.path} holds LAMB moments; resume it with --optimizer lamb")
    state = read_pretraining_checkpoint(point.path, loaded.config)
    load_into(loaded.model, state.checkpoint)
    optimizer = trainer.state.optimizer
    names = {id(p): n for n, p in loaded.model.named_parameters()}
    saved = optimizer.state_dict()
    ordered = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    missing = sorted(set(ordered) - set(state.exp_avg))
    if missing:
        raise ConfigError(f"{point.path}: no LAMB moments for {', '.join(missing[:4])}; it does not belong to this model")
    saved["state"] = {i: {"exp_avg": state.exp_avg[n].to(runtime.device), "exp_avg_sq": state.exp_avg_sq[n].to(runtime.device)}
                      for i, n in enumerate(ordered)}
    lamb_steps = 0 if point.phase2_start else (state.optimizer_steps if state.optimizer_steps is not None else point.step)
    for group in saved["param_groups"]:
        group["step"] = lamb_steps
    optimizer.load_state_dict(saved)
    if state.grad_scaler and trainer.state.scaler.is_enabled() and not point.phase2_start:
        trainer.state.scaler.load_state_dict(state.grad_scaler)
    trainer.step = point.step
    trainer.state.schedule.last_epoch = point.step
    saved_at = trainer.save()
    log.warning("%s: NVIDIA run_pretraining.py checkpoint at step %d: %s; written as %s. The data order "
                "restarts from the beginning (run_pretraining.py's file position is not carried over)",
                point.path, state.step,
                "phase 2 starts from its weights and LAMB moments, step counts reset" if point.phase2_start
                else f"resuming at step {point.step} with its weights, LAMB moments and step count", saved_at)


def pretrain(cfg: PretrainRun, dist_info: DistInfo = DistInfo(), progress: bool = True) -> dict:
    """Returns {"train": {"steps", "seconds", "samples", "first_loss", "last_loss"}}."""
    return run(PretrainJob(cfg), dist_info, progress)
