"""The one training step and the one training loop.

`train_step` is an optimizer step and nothing else: forward and loss of every micro-batch under
autocast, backward (through the loss scaler, a no-op unless fp16), gradient norm and clipping,
the optimizer and schedule step. The `Trainer` and `bertforge benchmark` both call it, so speed
figures describe the code that trains. It issues no host-device synchronisation: losses and the
gradient norm come back as device tensors, and the loop reads them only when it logs.

Loss normalisation is exact: each loss term is a sum over samples (or masked tokens) divided
by the count over the whole global batch (all micro-batches on all ranks), so the gradient of a
step does not depend on how the global batch is split across devices and micro-batches.

The `Trainer` adds what a run needs around the step: data-parallel replicas (DDP), progress,
JSON-lines metrics, atomic resumable checkpoints and exact resume, the non-finite-loss guard,
checkpoints on preemption signals, and callbacks for what a task adds (evaluation).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import signal
import threading
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from bertforge.errors import BertforgeError, CheckpointError
from bertforge.fileio import json_safe
from bertforge.runconfig import TrainArgs
from bertforge.train import checkpoints
from bertforge.train.batching import Prefetcher
from bertforge.train.hostmem import HeapTrimmer
from bertforge.train.optim import apply_schedule, build_optimizer, build_schedule
from bertforge.train.runtime import Runtime

log = logging.getLogger(__name__)

Batch = dict[str, object]  # tensors, plus host-side facts such as "seq_lengths" (a list of ints)


class LossFn(Protocol):
    """How a task turns a batch into losses."""

    def denominators(self, batch: Batch) -> dict[str, float]:
        """Per loss term, how many items (samples, masked tokens) the batch holds; read from the
        batch while it is still on the host."""

    def loss_sums(self, model: nn.Module, batch: Batch) -> dict[str, Tensor]:
        """Per loss term, the sum of the loss over those items (same keys as denominators)."""


class StepLoader(Protocol):
    """Yields, per optimizer step, this rank's list of micro-batches (on the host)."""

    steps_per_epoch: int

    def __iter__(self): ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class TrainingDiverged(BertforgeError):
    """The loss or gradient norm became inf/NaN (fp32/bf16), or fp16 kept overflowing."""


class Preempted(BertforgeError):
    """SIGTERM/SIGUSR1 arrived; a checkpoint was written if checkpoints are on."""


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Tensors (also in nested dicts) to `device`, asynchronously from pinned memory; host-side
    facts such as seq_lengths stay."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor)
            else to_device(v, device) if isinstance(v, dict) else v for k, v in batch.items()}


# ---- the training step -----------------------------------------------------------------------


@dataclass
class TrainState:
    """What one optimizer step acts on."""

    model: nn.Module  # what the loss calls: the DDP wrapper when data-parallel
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler  # disabled (a pass-through) unless fp16
    params: list[nn.Parameter]
    runtime: Runtime
    max_grad_norm: float | None


@dataclass
class StepOutput:
    sums: dict[str, Tensor]  # per loss term, summed over this rank's micro-batches (device)
    # per loss term, the count over the global batch: a host number in one process, a device
    # tensor under data parallelism (all-reduced there, never read back by the step)
    denominators: dict[str, float | Tensor]
    grad_norm: Tensor  # global gradient norm before clipping (device); inf/NaN: fp16 skipped

    @property
    def loss(self) -> Tensor:
        """This rank's share of the step's loss (the global loss after an all-reduce)."""
        return sum(self.sums[k] / _at_least_one(self.denominators[k]) for k in self.sums)


def _at_least_one(count: float | Tensor) -> float | Tensor:
    """A count to divide a loss sum by (a term with no items has a zero sum)."""
    return count.clamp_min(1.0) if isinstance(count, Tensor) else max(count, 1.0)


def build_train_state(model: nn.Module, cfg: TrainArgs, runtime: Runtime, total_steps: int) -> TrainState:
    """Optimizer, schedule and loss scaler for `model` (already on the device) as `cfg` says;
    wrapped in DDP when the run is data-parallel."""
    wrapped = model
    if runtime.dist.enabled:
        wrapped = DistributedDataParallel(
            model, device_ids=[runtime.device.index] if runtime.device.type != "cpu" else None)
    optimizer = build_optimizer(model, cfg.optimizer, cfg.learning_rate, cfg.weight_decay, runtime.device,
                                bias_correction=cfg.adam_bias_correction)
    schedule = build_schedule(optimizer, total_steps, cfg.warmup_proportion, cfg.schedule, cfg.schedule_power)
    params = [p for p in model.parameters() if p.requires_grad]
    return TrainState(wrapped, optimizer, schedule, runtime.grad_scaler(), params, runtime, cfg.max_grad_norm)


def train_step(state: TrainState, loss_fn: LossFn, micro_batches: list[Batch]) -> StepOutput:
    """One optimizer step over this rank's micro-batches (host batches; moved here)."""
    rt = state.runtime
    local: dict[str, float] = defaultdict(float)
    for batch in micro_batches:
        for k, v in loss_fn.denominators(batch).items():
            local[k] += float(v)
    keys = sorted(local)
    denominators: dict[str, float | Tensor] = dict(local)
    if rt.dist.enabled:
        # The global counts stay on the device: copied there without waiting (pinned memory),
        # summed by the all-reduce and divided by there. Reading them back would make the host
        # wait for the device at every step.
        counts = torch.tensor([local[k] for k in keys], dtype=torch.float32, pin_memory=rt.device.type == "cuda")
        counts = rt.all_reduce_sum(counts.to(rt.device, non_blocking=True))
        denominators = dict(zip(keys, counts.unbind()))
    sums: dict[str, Tensor] = {}
    for i, batch in enumerate(micro_batches):
        batch = to_device(batch, rt.device)
        last = i == len(micro_batches) - 1
        # Gradients are all-reduced once per step, on the last micro-batch.
        sync = contextlib.nullcontext() if last or not rt.dist.enabled else state.model.no_sync()
        with sync:
            with rt.autocast():
                terms = loss_fn.loss_sums(state.model, batch)
            # DDP averages gradients over ranks: scale by world so the result is the sum over the
            # global batch divided by the global count.
            loss = sum(terms[k].float() / _at_least_one(denominators[k]) for k in keys) * rt.world_size
            state.scaler.scale(loss).backward()
        for k in keys:
            sums[k] = sums[k] + terms[k].detach().float() if k in sums else terms[k].detach().float()
    state.scaler.unscale_(state.optimizer)
    # foreach=None: multi-tensor kernels wherever the device has them (CUDA, CPU, XPU, ...), a
    # per-tensor loop on devices without (where foreach=True would raise); no host read either way.
    if state.max_grad_norm is not None:
        grad_norm = torch.nn.utils.clip_grad_norm_(state.params, state.max_grad_norm, foreach=None)
    else:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in state.params if p.grad is not None],
                                                  foreach=None)
    state.scaler.step(state.optimizer)  # skipped by the scaler when fp16 gradients overflowed
    state.scaler.update()
    state.optimizer.zero_grad(set_to_none=True)
    with warnings.catch_warnings():
        # The schedule reads the optimizer's own count of applied updates, so after an update fp16
        # skipped it keeps the rate; torch's warning about stepping it first does not apply.
        warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
        state.schedule.step()
    return StepOutput(sums, denominators, grad_norm)


# ---- the loop --------------------------------------------------------------------------------


@dataclass
class TrainResult:
    steps: int
    seconds: float
    samples: int
    first_loss: float | None
    last_loss: float | None
    stop_reason: str | None = None  # why a callback ended the run early (request_stop)


class MetricsLog:
    """Append-only JSON lines (rank 0 only), flushed per record so a crash loses nothing.
    Non-finite numbers are written as null: strict JSON has no NaN."""

    def __init__(self, path: Path | None):
        self.path = path

    def write(self, record: dict) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(json_safe(record)) + "\n")


Callback = Callable[["Trainer"], None]
# on_record: a metrics record was just written (training, evaluation or an event such as a
# resume), readable as trainer.record: trackers hang here. on_close: the run is over, finished or
# not (an error, a preemption): trackers flush and close here, after every record.
EVENTS = ("on_train_start", "on_step_end", "on_log", "on_record", "on_train_end", "on_close")


@dataclass
class _Window:
    """Sums since the last log line."""

    sums: dict[str, Tensor] = field(default_factory=dict)
    den: dict[str, float | Tensor] = field(default_factory=lambda: defaultdict(float))
    samples: int = 0
    tokens: int = 0
    start: float = field(default_factory=time.perf_counter)

    def add(self, out: StepOutput, micro: list[Batch], world: int) -> int:
        for k, v in out.sums.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v
            self.den[k] += out.denominators[k]
        n = sum(int(b["input_ids"].shape[0]) for b in micro) * world
        self.samples += n
        self.tokens += sum(sum(b["seq_lengths"]) if "seq_lengths" in b else int(b["attention_mask"].sum())
                           for b in micro) * world
        return n


class Trainer:
    """Runs `train_step` for `total_steps` steps over `loader`, with logging, checkpoints,
    resume and callbacks (`add_callback("on_step_end", fn)`; fn gets the trainer)."""

    def __init__(self, model: nn.Module, loss: LossFn, loader: StepLoader, cfg: TrainArgs,
                 runtime: Runtime, output_dir: Path, total_steps: int, progress: bool = True):
        self.model = model
        self.loss = loss
        self.loader = loader
        self.cfg = cfg
        self.rt = runtime
        self.output_dir = Path(output_dir)
        self.total_steps = total_steps
        self.progress = progress and runtime.is_main
        model.to(runtime.device)
        if runtime.recompute_attention and hasattr(model, "recompute_attention"):
            model.recompute_attention(True)
        if runtime.compile:
            model.compile_layers()
        self.state = build_train_state(model, cfg, runtime, total_steps)
        self.step = 0
        # The rate of the latest update, for the log: a device tensor where the optimizer counts
        # its updates on the device (fused AdamW), read only when logged (`lr`).
        self._lr: float | Tensor = self.state.schedule.get_last_lr()[0]
        self.last_record: dict | None = None  # the latest training record
        self.record: dict | None = None  # the latest record of any kind (see log)
        # Writes what makes a checkpoint directory loadable by --init_checkpoint alone (config,
        # vocabulary, head); the run sets it.
        self.describe: Callable[[Path], None] | None = None
        self.metrics = MetricsLog(self.output_dir / "metrics.jsonl" if runtime.is_main else None)
        self._callbacks: dict[str, list[Callback]] = defaultdict(list)
        self._unchecked: list[tuple[int, Tensor]] = []  # (step, [loss, grad norm, scale]) not yet looked at
        self._fp16_skips_in_a_row = 0
        self._scale = self.state.scaler.get_scale()  # the loss scale after the latest checked step
        self._preempt = threading.Event()
        self._flags_group = None  # see _host_group
        self.stop_reason: str | None = None  # set by request_stop
        self._saved_step: int | None = None  # the step of the latest checkpoint this run wrote
        self._loader_state = loader.state_dict()  # the data position after the latest step
        # CPU training: activations live in the host heap, whose freed memory creeps up otherwise.
        self._heap = HeapTrimmer() if runtime.device.type == "cpu" else None
        # Every rank starts from the same weights (seeded before the model was built); from here
        # each rank draws its own dropout masks, deterministically from (seed, rank). A resumed
        # run restores the generators' states instead.
        torch.manual_seed(int(np.random.SeedSequence([cfg.seed, runtime.dist.rank]).generate_state(1)[0]))

    @property
    def lr(self) -> float:
        """The learning rate of the latest update (a host read where it lives on the device)."""
        return float(self._lr)

    # ---- callbacks -------------------------------------------------------------------------

    def add_callback(self, event: str, fn: Callback) -> None:
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}; events: {', '.join(EVENTS)}")
        self._callbacks[event].append(fn)

    def trigger(self, event: str) -> None:
        for fn in self._callbacks[event]:
            fn(self)

    def log(self, record: dict) -> None:
        """The one place every metrics record goes (training, evaluation, events): metrics.jsonl
        on rank 0, then the on_record callbacks, which read it as `self.record`."""
        self.metrics.write(record)
        self.record = record
        self.trigger("on_record")

    def request_stop(self, reason: str) -> None:
        """End `fit()` after the current step as the last step would end it (final checkpoint
        with --save_every, on_train_end callbacks, the model saved by the caller). For callbacks
        that decide a run is done (a target accuracy reached, a sample budget spent). Every rank
        must ask at the same step: decide from values all ranks share (all-reduced metrics,
        step counts)."""
        if self.stop_reason is None:
            self.stop_reason = reason
            log.info("step %d: stopping (%s)", self.step, reason)

    # ---- checkpoints -----------------------------------------------------------------------

    def save(self) -> Path:
        """A resumable checkpoint of the current step (every rank calls it). Refuses to write
        weights that went non-finite."""
        self._check_finite()
        self._saved_step = self.step
        state = {"optimizer": self.state.optimizer.state_dict(), "schedule": self.state.schedule.state_dict(),
                 "scaler": self.state.scaler.state_dict()}
        meta = {"loader": self._loader_state, "total_steps": self.total_steps, "seed": self.cfg.seed,
                "optimizer": type(self.state.optimizer).__name__}
        return checkpoints.save_training_checkpoint(
            self.output_dir, self.step, self.model.state_dict(), state, meta, checkpoints.rng_state(),
            self.rt.dist.rank, self.rt.barrier, self.cfg.keep_checkpoints, self.describe)

    def resume(self, ckpt: checkpoints.TrainingCheckpoint) -> None:
        meta = ckpt.meta
        if meta.get("seed") != self.cfg.seed:
            raise CheckpointError(f"cannot resume from {ckpt.path}: it was written with --seed "
                                  f"{meta.get('seed')}, this run has --seed {self.cfg.seed}")
        self.loader.load_state_dict(meta["loader"])
        self._loader_state = self.loader.state_dict()
        self.model.load_state_dict(ckpt.model)
        changed = checkpoints.restore_optimizer(
            self.state.optimizer, ckpt, f"--optimizer {self.cfg.optimizer} --adam_bias_correction "
                                        f"{str(self.cfg.adam_bias_correction).lower()}")
        self.state.schedule.load_state_dict(ckpt.state["schedule"])
        self.state.scaler.load_state_dict(ckpt.state["scaler"])
        self._scale = self.state.scaler.get_scale()
        self.step = int(meta["step"])
        if self.step > self.total_steps:
            raise CheckpointError(f"cannot resume from {ckpt.path}: it is at step {self.step}, past this "
                                  f"run's {self.total_steps} steps")
        self._rederive_schedule(int(meta["total_steps"]))
        checkpoints.set_rng_state(ckpt.rng)
        self.log({"event": "resume", "step": self.step, "checkpoint": str(ckpt.path),
                  "total_steps": self.total_steps, "previous_total_steps": int(meta["total_steps"]),
                  **({"changed": changed} if changed else {})})
        log.info("resumed from %s at step %d", ckpt.path, self.step)

    def _rederive_schedule(self, previous_total: int) -> None:
        """The learning rate of the next update from this run's schedule (its total steps and
        peak rate), not the one the checkpoint's run would have used."""
        schedule = self.state.schedule
        schedule.base_lrs = [self.cfg.learning_rate] * len(schedule.base_lrs)
        apply_schedule(schedule)
        if previous_total != self.total_steps:
            log.warning("resuming a run of %d steps as a run of %d: the learning-rate schedule is "
                        "re-derived for %d steps (next rate %.3g)", previous_total, self.total_steps,
                        self.total_steps, float(self.state.optimizer.param_groups[0]["lr"]))

    def _resume_point(self) -> checkpoints.TrainingCheckpoint | None:
        resume = self.cfg.resume
        if isinstance(resume, str) and resume not in ("", "latest"):
            return checkpoints.load_training_checkpoint(Path(resume), self.rt.dist.rank)
        found = checkpoints.latest_intact_checkpoint(self.output_dir, self.rt.dist.rank)
        if found is None:
            log.warning("--resume: no intact checkpoint in %s; starting from step 0",
                        checkpoints.checkpoint_root(self.output_dir))
        return found

    # ---- health checks ---------------------------------------------------------------------

    def _health(self, out: StepOutput) -> Tensor:
        """[loss, gradient norm, loss scale after the step] of a step, on the device, unread."""
        scaler = self.state.scaler
        # _get_scale_async: the scale tensor without a host sync (get_scale() would sync).
        scale = scaler._get_scale_async().float() if scaler.is_enabled() else torch.ones((), device=out.loss.device)
        return torch.stack([out.loss.detach().float(), out.grad_norm.detach().float(), scale.reshape(())])

    def _check_finite(self) -> None:
        """Look at the losses and gradient norms of the steps since the last look (one host
        sync). fp32/bf16: a non-finite one stops the run. fp16: a non-finite gradient norm was an
        overflow the scaler skipped; the run stops after max_fp16_skips of them in a row."""
        if not self._unchecked:
            return
        steps = [s for s, _ in self._unchecked]
        values = torch.stack([v for _, v in self._unchecked]).tolist()  # (steps, [loss, norm, scale])
        self._unchecked.clear()
        fp16 = self.state.scaler.is_enabled()
        for step, (loss, norm, scale) in zip(steps, values):
            before, self._scale = self._scale, scale
            if math.isfinite(norm) and (fp16 or math.isfinite(loss)):
                self._fp16_skips_in_a_row = 0
                continue
            if not fp16:
                raise TrainingDiverged(
                    f"step {step}: the loss or gradient became inf/NaN; training stopped and nothing "
                    f"from step {step} on was saved. Lower --learning_rate, check the model config "
                    f"(e.g. layer_norm_eps) and the data, or resume from the last checkpoint.")
            self._fp16_skips_in_a_row += 1
            self.log({"event": "fp16_overflow_skip", "step": step, "scale": before, "new_scale": scale})
            log.warning("step %d: inf/NaN gradients, update skipped; loss scale %.0f -> %.0f", step, before, scale)
            if self._fp16_skips_in_a_row >= self.cfg.max_fp16_skips:
                raise TrainingDiverged(
                    f"step {step}: {self._fp16_skips_in_a_row} fp16 overflows in a row (loss scale "
                    f"{scale:g}); the loss is likely inf/NaN. Try --precision bf16 or fp32, or a lower "
                    f"--learning_rate")

    @contextlib.contextmanager
    def _preemption_signals(self):
        """SIGTERM (what Slurm and Kubernetes send before killing a job) and SIGUSR1 set a flag
        the loop acts on after the current step. Only where handlers can be installed (the
        main thread); previous handlers come back afterwards."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        wanted = [signal.SIGTERM] + ([signal.SIGUSR1] if hasattr(signal, "SIGUSR1") else [])
        previous = {s: signal.getsignal(s) for s in wanted}
        for s in wanted:
            signal.signal(s, lambda signum, frame: self._preempt.set())
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _preempted(self) -> bool:
        flag = self._preempt.is_set()
        if self.rt.dist.enabled and self.cfg.save_every:
            # Every rank must stop at the same step to write one checkpoint together. The flag is
            # a host fact, agreed over a host (gloo) group: a device all-reduce read back would
            # make the host wait for the device at every step.
            t = torch.tensor([1.0 if flag else 0.0])
            dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self._host_group())
            flag = bool(t.item())
        return flag

    def _host_group(self):
        """The process group for host values: the default one where it is gloo, else a gloo group
        over the same ranks, made at the first call (every rank makes it at the same step)."""
        if self._flags_group is None:
            self._flags_group = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        return self._flags_group

    # ---- the loop --------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        try:
            if self.cfg.resume:
                found = self._resume_point()
                if found is not None:
                    self.resume(found)
            with self._preemption_signals():
                return self._fit()
        finally:
            self.trigger("on_close")

    def _fit(self) -> TrainResult:
        cfg, rt = self.cfg, self.rt
        self.model.train()
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not self.progress,
                   desc="train", unit="step", dynamic_ncols=True)
        window = _Window()
        t0, start_step, samples = time.perf_counter(), self.step, 0
        first_loss = None
        # The loader's position is read right after each step's batches are made: with
        # prefetching the loader itself is already ahead of the step being trained.
        iterator = iter(Prefetcher(_with_position(self.loader), rt.num_workers,
                                   pin=rt.device.type != "cpu"))
        self.trigger("on_train_start")
        out = None
        while self.step < self.total_steps and self.stop_reason is None:
            micro, self._loader_state = next(iterator)
            self._lr = self.state.schedule.get_last_lr()[0]
            out = train_step(self.state, self.loss, micro)
            if self._heap is not None:
                self._heap.after_step()
            self.step += 1
            self._unchecked.append((self.step, self._health(out)))
            samples += window.add(out, micro, rt.world_size)
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == self.total_steps or self.step == start_step + 1:
                self.last_record = self._log_record(window, out.grad_norm)
                window = _Window()
                if first_loss is None:
                    first_loss = self.last_record["loss"]
                bar.set_postfix(loss=f"{self.last_record['loss']:.4f}", lr=f"{self.last_record['lr']:.2e}",
                                seq_s=f"{self.last_record['seq_per_s']:.1f}")
                self.trigger("on_log")
                self._check_finite()
            # Callbacks (evaluation) before the checkpoint: a run resumed from step k has had
            # step k's evaluation, and --save_best its weights. Evaluation draws no random
            # numbers, so the checkpoint's generator states are the same either way. Their time
            # is not training time: it stays out of the throughput the next record reports.
            callbacks_start = time.perf_counter()
            self.trigger("on_step_end")
            window.start += time.perf_counter() - callbacks_start
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < self.total_steps:
                self.save()
            if self._preempted():
                bar.close()
                self._on_preemption()
        bar.close()
        if window.samples:  # a stop requested between log lines: log the steps since the last
            self.last_record = self._log_record(window, out.grad_norm)
            first_loss = self.last_record["loss"] if first_loss is None else first_loss
            self.trigger("on_log")
        self._check_finite()
        if cfg.save_every and self._saved_step != self.step:
            self.save()
        self.trigger("on_train_end")
        last = self.last_record["loss"] if self.last_record else None
        return TrainResult(self.step - start_step, time.perf_counter() - t0, samples, first_loss, last,
                           self.stop_reason)

    def _on_preemption(self) -> None:
        saved = None
        if self.cfg.save_every:
            saved = self.save()
        self.log({"event": "preempted", "step": self.step, "checkpoint": str(saved) if saved else None})
        raise Preempted(f"stopped by a termination signal after step {self.step}; "
                        + (f"checkpoint written to {saved}: run the same command with --resume to continue"
                           if saved else "no checkpoint written (pass --save_every to make runs resumable)"))

    def _log_record(self, window: _Window, grad_norm: Tensor) -> dict:
        keys = sorted(window.sums)
        totals = self.rt.all_reduce_sum(torch.stack([window.sums[k] for k in keys]).double()).tolist()
        counts = [float(window.den[k]) for k in keys]  # device tensors under data parallelism: read at log time
        terms = {f"{k}_loss": totals[i] / max(counts[i], 1.0) for i, k in enumerate(keys)}
        loss = sum(terms.values())
        seconds = max(time.perf_counter() - window.start, 1e-9)
        record = {"step": self.step, "loss": loss, **(terms if len(terms) > 1 else {}),
                  "lr": self.lr, "seq_per_s": window.samples / seconds, "tokens_per_s": window.tokens / seconds,
                  "epoch": self.step / self.loader.steps_per_epoch, "grad_norm": float(grad_norm)}
        if self.state.scaler.is_enabled():
            record["loss_scale"] = self.state.scaler.get_scale()
        self.log(record)
        return record


def _with_position(loader: StepLoader):
    for micro in loader:
        yield micro, loader.state_dict()


def evaluate_every(trainer: Trainer, every: int | None, evaluate: Callable[[int], dict | None]) -> None:
    """Register `evaluate(step)` to run every `every` steps and after the last step; its result
    is logged as an eval record."""
    evaluate_on(trainer, (lambda step: step % every == 0) if every else None, evaluate)


def evaluate_on(trainer: Trainer, due: Callable[[int], bool] | None,
                evaluate: Callable[[int], dict | None]) -> None:
    """Register `evaluate(step)` to run after each step where `due(step)` holds, and after the
    last step unless it just ran; its result is logged as an eval record."""
    evaluated_at: list[int] = []

    def run_eval(t: Trainer) -> None:
        evaluated_at[:] = [t.step]
        t.model.eval()
        with torch.no_grad():
            result = evaluate(t.step)
        t.model.train()
        if result:
            t.log({"step": t.step, "split": "eval", **result})
            log.info("step %d eval: %s", t.step, json.dumps(json_safe(result)))

    if due is not None:
        trainer.add_callback("on_step_end", lambda t: run_eval(t) if due(t.step) else None)
    trainer.add_callback("on_train_end", lambda t: run_eval(t) if evaluated_at != [t.step] else None)
