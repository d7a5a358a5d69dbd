"""Mixed precision in the training loop, on the CPU: fp16 autocast with dynamic loss scaling
(an overflow skips the update, halves the scale, is logged, leaves the weights as they were and
the learning-rate schedule where it was) and bf16 autocast."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from bertforge.bench.syncs import HostSyncRecorder
from bertforge.model import build_model
from bertforge.runconfig import RuntimeArgs, TrainArgs
from bertforge.tasks.squad import SpanLoss
from bertforge.train import loop
from bertforge.train.batching import ArrayStepLoader, StepPlan
from bertforge.train.loop import Trainer
from bertforge.train.optim import build_schedule, param_groups
from bertforge.train.runtime import Runtime
from conftest import random_batch, tiny_config

STEPS, POISONED_STEP = 4, 3


def span_arrays(n: int = 64, seq: int = 24, seed: int = 0) -> dict[str, np.ndarray]:
    """Random SQuAD-like features: ids, ragged lengths, answer spans inside the sequence."""
    config = tiny_config()
    batch = {k: v.numpy() for k, v in random_batch(config, n, seq, seed=seed).items()}
    rng = np.random.default_rng(seed)
    lengths = batch["attention_mask"].sum(1)
    start = rng.integers(0, lengths)
    batch["start_positions"] = start
    batch["end_positions"] = np.minimum(start + rng.integers(0, 3, size=n), lengths - 1)
    return batch


class PoisonedSpanLoss(SpanLoss):
    """The SQuAD span loss, except that in the chosen steps one weight's gradient is +inf
    (as a fp16 overflow in the backward pass leaves it). One micro-batch per step."""

    def __init__(self, param: nn.Parameter, steps: tuple[int, ...]):
        self.steps = steps
        self.calls = 0
        param.register_hook(lambda g: torch.full_like(g, float("inf")) if self.calls in self.steps else g)

    def loss_sums(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        self.calls += 1
        return super().loss_sums(model, batch)


def make_trainer(out: Path, precision: str, poisoned: tuple[int, ...] = (), steps: int = STEPS,
                 save_every: int | None = None, resume: bool = False, snapshots: list | None = None,
                 **train: object) -> Trainer:
    torch.manual_seed(0)
    model = build_model(tiny_config(), "qa", unpad=True)
    args = TrainArgs(**{"train_batch_size": 8, "learning_rate": 1e-3, "warmup_proportion": 0.0, "max_steps": steps,
                        "log_every": 1, "save_every": save_every, "resume": resume, **train})
    runtime = Runtime(RuntimeArgs(device="cpu", precision=precision))
    loader = ArrayStepLoader(span_arrays(), StepPlan(8, 1, 1), rank=0, seed=0)

    trainer = Trainer(model, PoisonedSpanLoss(model.qa_outputs.weight, poisoned), loader, args, runtime, out,
                      steps, progress=False)
    if snapshots is not None:
        trainer.add_callback("on_step_end", lambda t: snapshots.append(
            {k: v.detach().clone() for k, v in t.model.state_dict().items()}))
    return trainer


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def first_loss(out: Path) -> float:
    return next(r["loss"] for r in metrics(out) if "seq_per_s" in r)


def same(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_fp16_overflow_skips_the_step_and_lowers_the_scale(tmp_path):
    snapshots: list[dict] = []
    trainer = make_trainer(tmp_path, "fp16", poisoned=(POISONED_STEP,), snapshots=snapshots)
    assert trainer.state.scaler.is_enabled()
    initial = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    after = [initial] + snapshots  # after[k]: the weights after step k

    records = metrics(tmp_path)
    skips = [r for r in records if r.get("event") == "fp16_overflow_skip"]
    assert skips == [{"event": "fp16_overflow_skip", "step": POISONED_STEP, "scale": 65536.0,
                      "new_scale": 32768.0}]
    scales = {r["step"]: r["loss_scale"] for r in records if "loss_scale" in r}
    assert scales == {1: 65536.0, 2: 65536.0, 3: 32768.0, 4: 32768.0}
    for step in range(1, STEPS + 1):
        assert same(after[step], after[step - 1]) == (step == POISONED_STEP), step
    for name, w in trainer.model.state_dict().items():
        assert torch.isfinite(w).all(), name
        assert w.dtype == torch.float32, name  # fp32 master weights
    # The skipped step left the optimizer state alone too: Adam took STEPS - 1 steps.
    adam_steps = {float(s["step"]) for s in trainer.state.optimizer.state.values()}
    assert adam_steps == {STEPS - 1.0}


def test_fp16_loss_scale_is_restored_on_resume(tmp_path):
    first = make_trainer(tmp_path, "fp16", poisoned=(1,), save_every=STEPS)
    first.fit()
    assert first.state.scaler.get_scale() == 32768.0
    resumed = make_trainer(tmp_path, "fp16", save_every=STEPS, resume=True)
    resumed.fit()  # finds the step-4 checkpoint: nothing left to train
    assert resumed.step == STEPS
    assert resumed.state.scaler.get_scale() == 32768.0
    assert same(resumed.model.state_dict(), first.model.state_dict())


def linear_multiplier(updates: int, total: int, warmup: int) -> float:
    """Hugging Face's get_linear_schedule_with_warmup after `updates` applied updates."""
    return updates / warmup if updates < warmup else max(0.0, (total - updates) / (total - warmup))


def fused_adamw(model, name, lr, weight_decay, device, bias_correction=True):
    """torch's fused AdamW (what CUDA runs; it counts and skips its updates on the device), here
    on the CPU, which has it too."""
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, eps=1e-6, fused=True)


@pytest.mark.parametrize("optimizer", ["adamw", "lamb", "fused-adamw"])
def test_fp16_skipped_updates_do_not_advance_the_schedule(tmp_path, monkeypatch, optimizer):
    """Steps 2 and 3 overflow: update k's rate is the schedule's at the updates applied before
    it (k - 1 minus the skips), as NVIDIA's and transformers' loops have it, not at k - 1."""
    if optimizer == "fused-adamw":
        monkeypatch.setattr(loop, "build_optimizer", fused_adamw)
    steps, peak, warmup = 8, 1e-3, 4
    trainer = make_trainer(tmp_path, "fp16", poisoned=(2, 3), steps=steps, warmup_proportion=warmup / steps,
                           optimizer="adamw" if optimizer == "fused-adamw" else optimizer)
    trainer.fit()
    records = metrics(tmp_path)
    assert [r["step"] for r in records if r.get("event") == "fp16_overflow_skip"] == [2, 3]
    applied = {1: 0, 2: 1, 3: 1, 4: 1, 5: 2, 6: 3, 7: 4, 8: 5}  # before step k
    logged = {r["step"]: r["lr"] for r in records if "seq_per_s" in r}
    assert logged == pytest.approx({k: peak * linear_multiplier(n, steps, warmup) for k, n in applied.items()},
                                   rel=1e-6, abs=1e-12)
    if optimizer == "fused-adamw":  # the rate came from the device count, as a tensor
        assert isinstance(trainer.state.optimizer.param_groups[0]["lr"], Tensor)


def test_schedule_reads_a_device_update_count_without_a_host_read():
    """Where the optimizer counts its updates on the device (fused AdamW on CUDA), the schedule
    looks the rate up on the device: nothing is read back, here with the count on the meta
    device, where any read fails."""
    p = nn.Parameter(torch.randn(4, 3))
    optimizer = torch.optim.AdamW([p], lr=1e-3, fused=True)
    schedule = build_schedule(optimizer, 10, 0.5, "linear")
    p.grad = torch.randn(4, 3)
    optimizer.step()
    optimizer.state[p]["step"] = torch.full((), 3.0, device="meta")
    with HostSyncRecorder() as recorder:
        schedule.step()
    assert recorder.syncs == []
    lr = optimizer.param_groups[0]["lr"]
    assert isinstance(lr, Tensor) and lr.device.type == "meta" and lr.shape == ()


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_steps_train_in_low_precision(tmp_path, precision, dtype):
    """A few steps in `precision`: autocast really runs the model in `dtype` (the loss differs
    from fp32's at that precision), the fp32 weights train and stay finite."""
    reference = make_trainer(tmp_path / "fp32", "fp32")
    reference.fit()
    trainer = make_trainer(tmp_path / precision, precision)
    assert trainer.state.scaler.is_enabled() == (precision == "fp16")
    ones = torch.ones(1, 8, dtype=torch.long)
    with trainer.rt.autocast():
        start, _ = trainer.model(ones, ones, ones)
    assert start.dtype == dtype
    initial = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    low, full = first_loss(tmp_path / precision), first_loss(tmp_path / "fp32")
    assert low != full
    assert low == pytest.approx(full, rel=2e-2)
    assert not [r for r in metrics(tmp_path / precision) if "event" in r]  # no overflow skips
    for name, w in trainer.model.state_dict().items():
        assert w.dtype == torch.float32 and torch.isfinite(w).all(), name
    assert not same(initial, trainer.model.state_dict())
