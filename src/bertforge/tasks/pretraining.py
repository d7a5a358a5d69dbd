"""BERT pretraining (`bertforge pretrain`): masked LM + next sentence prediction with LAMB,
two phases (seq 128, then seq 512 from phase 1's weights), held-out MLM/NSP accuracy, atomic
checkpoints and exact resume."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertforge.checkpoint import save_native
from bertforge.data.pretraining import PretrainingDataset
from bertforge.errors import ConfigError
from bertforge.runconfig import ModelArgs, RuntimeArgs, TrainArgs
from bertforge.tasks.common import load_model, log_batch_plan, write_json
from bertforge.train.batching import StepPlan, trim_padding
from bertforge.train.loop import Trainer
from bertforge.train.runtime import DistInfo, Runtime, seed_everything

log = logging.getLogger(__name__)


@dataclass
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


def _pretrain_defaults() -> TrainArgs:
    # NVIDIA's phase-1 hyperparameters (global batch 65,536 through accumulation).
    return TrainArgs(learning_rate=6e-3, warmup_proportion=0.2843, max_steps=7038,
                     train_batch_size=64, weight_decay=0.01, max_grad_norm=1.0, log_every=10)


@dataclass
class PretrainRun:
    """Pretrain BERT with masked LM + NSP and LAMB."""

    output_dir: str = "runs/pretrain"
    phase2: bool = False
    """Phase 2: start from --init_checkpoint's weights (phase 1's output_dir) with a fresh
    optimizer and schedule, on seq-512 data."""
    optimizer: Literal["lamb", "adamw"] = "lamb"
    schedule_power: float = 0.5
    """Polynomial decay power after warmup (NVIDIA: 0.5; 1.0 is linear, as Google's)."""
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
        out = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                    masked_lm_positions=batch["masked_lm_positions"])
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
    sums = torch.zeros(6, dtype=torch.float64)  # mlm loss, mlm correct, masked, nsp loss, nsp correct, seqs
    seen = 0
    t0 = time.perf_counter()
    for batch in dataset.eval_batches(batch_size * runtime.world_size, runtime.dist.rank, runtime.world_size):
        if max_samples is not None and seen >= max_samples:
            break
        seen += batch["input_ids"].shape[0] * runtime.world_size
        batch = {k: v.to(runtime.device) for k, v in trim_padding(batch).items()}
        with runtime.autocast():
            out = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                        masked_lm_positions=batch["masked_lm_positions"])
        w = batch["masked_lm_weights"].flatten().double()
        labels = batch["masked_lm_ids"].flatten()
        logits = out.mlm_logits.float().flatten(0, 1)
        mlm_loss = F.cross_entropy(logits, labels, reduction="none").double()
        nsp = out.nsp_logits.float()
        nsp_labels = batch["next_sentence_labels"]
        sums += torch.stack([(mlm_loss * w).sum(), ((logits.argmax(-1) == labels).double() * w).sum(), w.sum(),
                             F.cross_entropy(nsp, nsp_labels, reduction="sum").double(),
                             (nsp.argmax(-1) == nsp_labels).double().sum(),
                             torch.tensor(float(nsp_labels.shape[0]), dtype=torch.float64, device=w.device)]).cpu()
    sums = runtime.all_reduce_sum(sums).cpu()
    masked, seqs = max(sums[2].item(), 1.0), max(sums[5].item(), 1.0)
    return {"mlm_accuracy": sums[1].item() / masked, "nsp_accuracy": sums[4].item() / seqs,
            "mlm_loss": sums[0].item() / masked, "nsp_loss": sums[3].item() / seqs,
            "loss": sums[0].item() / masked + sums[3].item() / seqs,
            "eval_sequences": int(sums[5].item()), "eval_seconds": time.perf_counter() - t0}


def run(cfg: PretrainRun, dist_info: DistInfo = DistInfo(), progress: bool = True) -> dict:
    if cfg.data.input_dir is None:
        raise ConfigError("--input_dir is required: a directory written by `bertforge prepare pretraining`")
    if cfg.phase2 and not cfg.model.init_checkpoint:
        raise ConfigError("--phase2 starts from phase 1's weights: pass --init_checkpoint PHASE1_OUTPUT_DIR")
    cfg.train.validate()
    if cfg.train.max_steps is None:
        raise ConfigError("pretraining runs for --max_steps optimizer steps; give --max_steps")
    with Runtime(cfg.runtime, dist_info) as runtime:
        return _run(cfg, runtime, progress)


def _run(cfg: PretrainRun, runtime: Runtime, progress: bool) -> dict:
    out = Path(cfg.output_dir)
    accumulation = cfg.train.accumulation_for(runtime.world_size)  # fail before any work
    seed_everything(cfg.train.seed)
    train_set = PretrainingDataset(cfg.data.input_dir, "train")
    model_args = cfg.model
    if model_args.vocab_file is None:
        model_args.vocab_file = str(train_set.vocab_file)
    if model_args.do_lower_case is None:
        model_args.do_lower_case = train_set.do_lower_case
    loaded = load_model(model_args, "pretraining", unpad=cfg.runtime.unpad)
    if train_set.max_seq_length > loaded.config.max_position_embeddings:
        raise ConfigError(f"the data's max_seq_length {train_set.max_seq_length} exceeds the model's "
                          f"max_position_embeddings {loaded.config.max_position_embeddings}")
    plan = StepPlan(cfg.train.train_batch_size, accumulation, runtime.world_size)
    loader = PretrainStepLoader(train_set, plan, runtime.dist.rank)
    log.info("pretraining%s: %d instances of length <= %d; %s", " phase 2" if cfg.phase2 else "",
             train_set.num_samples, train_set.max_seq_length, cfg.data.input_dir)
    log_batch_plan(cfg.train, runtime, accumulation, cfg.train.max_steps, loader.steps_per_epoch)
    heldout = PretrainingDataset(cfg.data.input_dir, "held_out")

    def evaluate(step: int) -> dict:
        result = evaluate_heldout(loaded.model, heldout, runtime, cfg.data.eval_batch_size,
                                  cfg.data.max_eval_samples)
        return {**result, "lr": trainer.lr}

    has_heldout = heldout.num_samples > 0
    if not has_heldout:
        log.warning("%s has no held-out instances: no MLM/NSP accuracy will be reported", cfg.data.input_dir)
    trainer = Trainer(loaded.model, PretrainLoss(), loader, cfg.train, runtime, out, cfg.train.max_steps,
                      accumulation, optimizer=cfg.optimizer, schedule="poly", schedule_power=cfg.schedule_power,
                      eval_fn=evaluate if has_heldout else None,
                      eval_every=(cfg.data.eval_every or cfg.train.max_steps) if has_heldout else None,
                      progress=progress)
    result = trainer.fit()
    summary = {"steps": result.steps, "seconds": result.seconds, "samples": result.samples,
               "first_loss": result.first_loss, "last_loss": result.last_loss}
    if runtime.is_main:
        save_native(out, loaded.model, loaded.config, vocab_file=loaded.vocab_file,
                    do_lower_case=loaded.tokenizer.do_lower_case,
                    extra={"task": "pretraining", "phase": 2 if cfg.phase2 else 1, "steps": trainer.step})
        write_json(out / "train_summary.json", summary)
        log.info("pretraining done: %s", json.dumps(summary))
    return summary
