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
    optimizer and schedule, on seq-512 data."""
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

    @property
    def training(self) -> bool:
        return True

    def check(self) -> None:
        cfg = self.cfg
        if cfg.data.input_dir is None:
            raise ConfigError("--input_dir is required: a directory written by `bertforge prepare pretraining`")
        if cfg.phase2 and not cfg.model.init_checkpoint:
            raise ConfigError("--phase2 starts from phase 1's weights: pass --init_checkpoint PHASE1_OUTPUT_DIR")
        if cfg.train.max_steps is None:
            raise ConfigError("pretraining runs for --max_steps optimizer steps; give --max_steps")
        self.train_set = PretrainingDataset(cfg.data.input_dir, "train")

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
        d = self.cfg.data
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


def pretrain(cfg: PretrainRun, dist_info: DistInfo = DistInfo(), progress: bool = True) -> dict:
    """Returns {"train": {"steps", "seconds", "samples", "first_loss", "last_loss"}}."""
    return run(PretrainJob(cfg), dist_info, progress)
