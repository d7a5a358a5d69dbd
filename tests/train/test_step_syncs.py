"""The training step never makes the host wait for the device when the batch carries its
`seq_lengths`: one `train_step` (forward, loss, backward, clipping, optimizer, schedule) on the
meta device, where tensors have shapes and no data, so any read of a device value fails and
`HostSyncRecorder` names it. Host batches stay on the CPU, as a loader hands them over. (bf16
autocast does not exist on the meta device; it adds casts only. What the CPU cannot show, the
CUDA kernels themselves, the GPU suite's sanity case checks under set_sync_debug_mode.)"""

from __future__ import annotations

import pytest
import torch

from bertforge.bench.syncs import HostSyncRecorder
from bertforge.model import build_model
from bertforge.runconfig import RuntimeArgs, TrainArgs
from bertforge.tasks.pretraining import PretrainLoss
from bertforge.tasks.squad import SpanLoss
from bertforge.train.loop import build_train_state, train_step
from bertforge.train.optim import build_optimizer
from bertforge.train.runtime import Runtime
from conftest import random_batch, tiny_config

B, T, P = 4, 16, 3


def meta_runtime(precision: str = "fp32") -> Runtime:
    runtime = Runtime(RuntimeArgs(device="cpu", precision="fp32"))
    runtime.device = torch.device("meta")  # no such device to resolve: set where the step reads it
    runtime.precision = precision
    return runtime


def host_batch(head: str, seed: int) -> dict:
    cfg = tiny_config()
    batch = random_batch(cfg, batch=B, seq=T, seed=seed)
    batch["seq_lengths"] = batch["attention_mask"].sum(dim=1).tolist()
    assert len(set(batch["seq_lengths"])) > 1  # real padding: the unpadded path runs
    if head == "qa":
        batch["start_positions"] = torch.tensor([1, 2, 3, 0])
        batch["end_positions"] = torch.tensor([2, 2, 4, 0])
    else:
        batch["masked_lm_positions"] = torch.tensor([[1, 2, 0]] * B)
        batch["masked_lm_ids"] = torch.randint(1, cfg.vocab_size, (B, P))
        batch["masked_lm_weights"] = torch.tensor([[1.0, 1.0, 0.0]] * B)  # the last slot is padding
        batch["next_sentence_labels"] = torch.tensor([0, 1, 0, 1])
    return batch


def run_step(head: str, optimizer: str, precision: str = "fp32", lengths: bool = True) -> list[str]:
    runtime = meta_runtime(precision)
    with torch.device("meta"):
        model = build_model(tiny_config(), head, unpad=True)
    state = build_train_state(model, TrainArgs(optimizer=optimizer, max_steps=10), runtime, 10)
    if precision == "fp16":
        state.scaler = torch.amp.GradScaler("meta", enabled=True)
    loss = SpanLoss() if head == "qa" else PretrainLoss()
    micro = [host_batch(head, seed) for seed in (0, 1)]  # two micro-batches: accumulation too
    if not lengths:
        for batch in micro:
            del batch["seq_lengths"]
    with HostSyncRecorder() as recorder:
        try:
            out = train_step(state, loss, micro)
        except (RuntimeError, NotImplementedError):
            return recorder.syncs or ["failed without a recorded read"]
    assert out.loss.device.type == "meta" and out.grad_norm.device.type == "meta"
    return recorder.syncs


@pytest.mark.parametrize("head, optimizer", [("qa", "adamw"), ("pretraining", "lamb")])
def test_training_step_reads_nothing_back_given_the_lengths(head, optimizer):
    assert run_step(head, optimizer) == []


def test_the_recorder_sees_the_read_without_the_lengths():
    """Without seq_lengths the unpadded forward must read the lengths back: the one read the
    lengths exist to avoid, and proof that the recorder sees reads on the meta device."""
    syncs = run_step("qa", "adamw", lengths=False)
    assert syncs and syncs[0] == "aten._to_copy.default"  # mask lengths .tolist()


@pytest.mark.parametrize("head, optimizer", [("qa", "adamw"), ("pretraining", "lamb")])
def test_fp16_reads_back_only_in_the_scaler_of_an_unfused_optimizer(head, optimizer):
    """fp16: GradScaler reads found_inf once per optimizer step to decide whether to step an
    optimizer that cannot skip on its own (LAMB; AdamW where it is not fused). The CUDA AdamW
    is fused: it takes found_inf as a device tensor and skips inside the kernel, no read."""
    assert run_step(head, optimizer, "fp16") == ["aten._local_scalar_dense.default"]
    model = build_model(tiny_config(), "qa")
    fused = build_optimizer(model, "adamw", 1e-4, 0.01, torch.device("cuda"))
    assert fused.defaults["fused"] and getattr(fused, "_step_supports_amp_scaling", False)
    lamb = build_optimizer(model, "lamb", 1e-4, 0.01, torch.device("cuda"))
    assert not getattr(lamb, "_step_supports_amp_scaling", False)
