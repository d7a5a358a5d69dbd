"""The one training loop. A task supplies how a batch becomes a loss (`TrainTask`); the loop
does the rest: data-parallel replicas (DDP), gradient accumulation (no_sync), autocast and fp16
loss scaling, clipping, the schedule, progress, JSON-lines metrics, atomic resumable
checkpoints and exact resume.

Loss normalisation is exact: each loss term is a sum over samples (or masked tokens) divided
by the count over the whole global batch (all micro-batches on all ranks), so the gradient of
a step does not depend on how the global batch is split across devices and micro-batches.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from bertforge.runconfig import TrainArgs
from bertforge.train import checkpoints
from bertforge.train.optim import OptimizerName, ScheduleName, build_optimizer, build_schedule
from bertforge.train.runtime import Runtime, rng_state, set_rng_state

log = logging.getLogger(__name__)


class TrainTask(Protocol):
    """How a task turns batches into losses."""

    def denominators(self, batch: dict[str, Tensor]) -> dict[str, float]:
        """Per loss term, how many items (samples, masked tokens) the batch holds."""

    def loss_sums(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per loss term, the sum of the loss over those items (same keys as denominators)."""


class StepLoader(Protocol):
    def __iter__(self): ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class TrainResult:
    steps: int
    seconds: float
    samples: int
    first_loss: float | None
    last_loss: float | None


class MetricsLog:
    """Append-only JSON lines (rank 0 only), flushed per record so a crash loses nothing."""

    def __init__(self, path: Path | None):
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        if self.path is None:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=False) + "\n")


def compile_layers(model: nn.Module) -> None:
    """torch.compile each transformer layer in place (regional compilation: one compiled
    graph serves all layers, parameter names unchanged)."""
    for module in model.modules():
        if type(module).__name__ == "BertLayer":
            module.compile(dynamic=True)


class Trainer:
    def __init__(self, model: nn.Module, task: TrainTask, loader: StepLoader, args: TrainArgs,
                 runtime: Runtime, output_dir: Path, total_steps: int, accumulation: int,
                 optimizer: OptimizerName = "adamw", schedule: ScheduleName = "linear",
                 schedule_power: float = 0.5, eval_fn: Callable[[int], dict] | None = None,
                 eval_every: int | None = None, progress: bool = True):
        self.model = model
        self.task = task
        self.loader = loader
        self.args = args
        self.rt = runtime
        self.output_dir = output_dir
        self.total_steps = total_steps
        self.accumulation = accumulation
        self.eval_fn = eval_fn
        self.eval_every = eval_every
        self.progress = progress and runtime.is_main
        model.to(runtime.device)
        if runtime.compile:
            compile_layers(model)
        self.ddp = (DistributedDataParallel(model, device_ids=[runtime.device.index]
                                            if runtime.device.type != "cpu" else None)
                    if runtime.dist.enabled else None)
        self.optimizer = build_optimizer(model, optimizer, args.learning_rate, args.weight_decay,
                                         runtime.device)
        self.schedule = build_schedule(self.optimizer, total_steps, args.warmup_proportion,
                                       schedule, schedule_power)
        self.scaler = runtime.grad_scaler()
        self.step = 0
        self.grad_norm: Tensor | None = None  # of the latest update, before clipping
        # Every rank starts from the same weights (seeded before the model was built); from here
        # each rank draws its own dropout masks, deterministically from (seed, rank). A resumed
        # run restores the generators' states instead.
        torch.manual_seed(int(np.random.SeedSequence([args.seed, runtime.dist.rank]).generate_state(1)[0]))
        self.lr = self.schedule.get_last_lr()[0]  # the rate of the latest update, for the log
        self.metrics = MetricsLog(output_dir / "metrics.jsonl" if runtime.is_main else None)
        self.params = [p for p in model.parameters() if p.requires_grad]

    @property
    def forward_model(self) -> nn.Module:
        return self.ddp if self.ddp is not None else self.model

    # ---- checkpoints ---------------------------------------------------------------------

    def _trainer_state(self) -> dict:
        return {"step": self.step, "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "loader": self.loader.state_dict(), "total_steps": self.total_steps}

    def save(self) -> Path:
        return checkpoints.save_training_checkpoint(
            self.output_dir, self.step, self.model.state_dict(), self._trainer_state(), rng_state(),
            self.rt.dist.rank, self.rt.barrier, self.args.keep_checkpoints)

    def resume(self, path: Path) -> None:
        model_state, state, rng = checkpoints.load_training_checkpoint(path, self.rt.dist.rank)
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.loader.load_state_dict(state["loader"])
        self.step = state["step"]
        set_rng_state(rng)
        log.info("resumed from %s at step %d", path, self.step)

    # ---- one optimizer step --------------------------------------------------------------

    def _train_step(self, micro_batches: list[dict[str, Tensor]]) -> tuple[dict[str, Tensor], dict[str, float], bool]:
        """-> (summed loss terms, global denominators, whether the update was applied)."""
        local: dict[str, float] = {}
        for batch in micro_batches:
            for k, v in self.task.denominators(batch).items():
                local[k] = local.get(k, 0.0) + float(v)
        keys = sorted(local)
        den = self.rt.all_reduce_sum(torch.tensor([local[k] for k in keys], dtype=torch.float64))
        denominators = dict(zip(keys, den.tolist()))
        world = self.rt.world_size
        sums_total: dict[str, Tensor] = {}
        for i, batch in enumerate(micro_batches):
            batch = {k: v.to(self.rt.device, non_blocking=True) for k, v in batch.items()}
            last = i == len(micro_batches) - 1
            sync = contextlib.nullcontext() if (self.ddp is None or last) else self.ddp.no_sync()
            with sync:
                with self.rt.autocast():
                    sums = self.task.loss_sums(self.forward_model, batch)
                # DDP averages gradients over ranks: scale by world so the result is the sum
                # over the global batch divided by the global count.
                loss = sum(sums[k].float() / max(denominators[k], 1.0) for k in keys) * world
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
            for k in keys:
                sums_total[k] = sums_total.get(k, 0.0) + sums[k].detach().float()
        applied = self._apply_update()
        return sums_total, denominators, applied

    def _apply_update(self) -> bool:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.args.max_grad_norm is not None:
            self.grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.args.max_grad_norm, foreach=True)
        applied = True
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.scaler.get_scale() < scale:
                applied = False
                self.metrics.write({"event": "fp16_overflow_skip", "step": self.step + 1,
                                    "scale": scale, "new_scale": self.scaler.get_scale()})
                log.warning("step %d: inf/NaN gradients, update skipped; loss scale %.0f -> %.0f",
                            self.step + 1, scale, self.scaler.get_scale())
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.lr = self.schedule.get_last_lr()[0]
        with warnings.catch_warnings():
            # The schedule follows the step count even when fp16 skipped the update; torch's
            # warning about stepping it before the optimizer does not apply.
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            self.schedule.step()
        return applied

    # ---- the loop ------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        args, rt = self.args, self.rt
        if args.resume:
            found = checkpoints.latest_checkpoint(self.output_dir)
            if found is None:
                log.warning("--resume: no checkpoint in %s; starting from step 0",
                            checkpoints.checkpoint_root(self.output_dir))
            else:
                self.resume(found)
                self.metrics.write({"event": "resume", "step": self.step, "checkpoint": str(found)})
        self.model.train()
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not self.progress,
                   desc="train", unit="step", dynamic_ncols=True)
        window_sums: dict[str, Tensor] = {}
        window_den: dict[str, float] = {}
        window_samples, window_tokens, window_start = 0, 0, time.perf_counter()
        t0, start_step, samples = time.perf_counter(), self.step, 0
        first_loss = last_loss = None
        iterator = iter(self.loader)
        while self.step < self.total_steps:
            micro = next(iterator)
            sums, den, _ = self._train_step(micro)
            self.step += 1
            n = sum(int(b["input_ids"].shape[0]) for b in micro) * rt.world_size
            window_samples += n
            samples += n
            window_tokens += sum(int(b["attention_mask"].sum()) for b in micro) * rt.world_size
            for k, v in sums.items():
                window_sums[k] = window_sums.get(k, 0.0) + v
                window_den[k] = window_den.get(k, 0.0) + den[k]
            bar.update(1)
            if self.step % args.log_every == 0 or self.step == self.total_steps or self.step == start_step + 1:
                record = self._log_record(window_sums, window_den, window_samples, window_tokens,
                                          time.perf_counter() - window_start)
                last_loss = record["loss"]
                if first_loss is None:
                    first_loss = last_loss
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                                seq_s=f"{record['seq_per_s']:.1f}")
                window_sums, window_den = {}, {}
                window_samples, window_tokens, window_start = 0, 0, time.perf_counter()
            if args.save_every and self.step % args.save_every == 0 and self.step < self.total_steps:
                self.save()
            if self.eval_fn is not None and self.eval_every and self.step % self.eval_every == 0:
                self._evaluate()
        bar.close()
        if self.eval_fn is not None and self.eval_every and self.step % self.eval_every != 0:
            self._evaluate()
        if args.save_every:
            self.save()
        return TrainResult(self.step - start_step, time.perf_counter() - t0, samples, first_loss, last_loss)

    def _evaluate(self) -> None:
        self.model.eval()
        with torch.no_grad():
            result = self.eval_fn(self.step)
        self.model.train()
        if result:
            self.metrics.write({"step": self.step, "split": "eval", **result})
            log.info("step %d eval: %s", self.step, json.dumps(result))

    def _log_record(self, sums: dict[str, Tensor], den: dict[str, float], samples: int, tokens: int,
                    seconds: float) -> dict:
        keys = sorted(sums)
        totals = self.rt.all_reduce_sum(torch.stack([sums[k] for k in keys]).double()).tolist()
        terms = {f"{k}_loss": totals[i] / max(den[k], 1.0) for i, k in enumerate(keys)}
        loss = sum(terms.values())
        record = {"step": self.step, "loss": loss, **(terms if len(terms) > 1 else {}),
                  "lr": self.lr, "seq_per_s": samples / max(seconds, 1e-9),
                  "tokens_per_s": tokens / max(seconds, 1e-9),
                  "epoch": self.step / getattr(self.loader, "steps_per_epoch", math.inf)}
        if self.grad_norm is not None:
            record["grad_norm"] = float(self.grad_norm)
        if self.scaler is not None:
            record["loss_scale"] = self.scaler.get_scale()
        if not math.isfinite(loss):
            log.warning("step %d: loss is %s", self.step, loss)
        self.metrics.write(record)
        return record
