"""The GPU suite's sync check keeps one result per configuration, also when a configuration's
step raises half way. The raise is forced on the CPU by running the step on the meta device
(tensors with shapes and no data), where any read of a device value fails, as every
synchronising call does under CUDA's set_sync_debug_mode("error"): fp16 with LAMB fails inside
GradScaler.step, after unscale_ and before update()."""

from __future__ import annotations

import contextlib

import pytest
import torch

from bertforge.bench.sanity import SYNC_CHECKS, SyncCheck, host_batch, sync_check, where
from bertforge.model import build_model
from bertforge.runconfig import RuntimeArgs, TrainArgs
from bertforge.train.loop import build_train_state
from bertforge.train.runtime import Runtime
from conftest import tiny_config

SCALER_READ = "aten._local_scalar_dense.default"


def meta_state(check: SyncCheck):
    runtime = Runtime(RuntimeArgs(device="cpu", precision="fp32"))
    runtime.device = torch.device("meta")  # set where the step reads it (no such device to resolve)
    runtime.synchronize = lambda: None
    with torch.device("meta"):
        model = build_model(tiny_config(), check.head, unpad=True)
    state = build_train_state(model, TrainArgs(optimizer=check.optimizer, max_steps=10), runtime, 10)
    if check.precision == "fp16":
        state.scaler = torch.amp.GradScaler("meta", enabled=True)
    return state, runtime


def run_check(check: SyncCheck) -> dict:
    batches = [host_batch(tiny_config(), check.head, batch=4, seq=16, seed=i) for i in range(5)]
    # No untimed steps: on the meta device they would fail as the watched ones do.
    return sync_check(lambda: meta_state(check), check, batches, contextlib.nullcontext, warmup=0)


def test_fp16_lamb_raise_in_the_scaler_is_recorded_from_a_fresh_state():
    """The watched step fails at GradScaler's read of found_inf; the recorder step then runs on
    a fresh state (the old code ran it on the half-stepped one, whose unscale_ raised "unscale_()
    has already been called", and the whole check came back FAILED with nothing recorded)."""
    check = next(c for c in SYNC_CHECKS if c.name == "pretraining_lamb_fp16")
    result = run_check(check)
    assert "train/loop.py" in result["where"] and "scaler.step" in result["where"]
    assert result["recorded"] == [SCALER_READ]  # the read, named: nothing raised before it
    assert "unscale_" not in result.get("recorder_stopped_at", "")
    assert result["ok"] is True and result["expected"] == [SCALER_READ]


def test_a_configuration_that_reads_unexpectedly_fails_alone():
    """AdamW where it is not fused (here) reads found_inf too: that configuration fails and
    names the read; one without a scaler passes."""
    fp16_adamw = run_check(SyncCheck("qa", "adamw", "fp16", compiled=False))
    assert fp16_adamw["ok"] is False and fp16_adamw["recorded"] == [SCALER_READ]
    assert run_check(SyncCheck("qa", "adamw", "fp32", compiled=False)) == {"ok": True}
    assert run_check(SyncCheck("pretraining", "lamb", "fp32", compiled=False)) == {"ok": True}


def test_where_names_the_innermost_bertforge_frame():
    from bertforge.config import resolve_config

    with pytest.raises(Exception) as info:
        resolve_config("no-such-preset")
    assert "bertforge/config.py" in where(info.value)
    assert where(ValueError("raised outside bertforge")) == ""
