"""Under data parallelism the hot loop makes the host wait for the device as little as on one
device: the global loss counts are all-reduced and divided by on the device (never read back
by the step), and the preemption flag, a host fact, is agreed over a host (gloo) group.

The step runs on the meta device as in test_step_syncs.py (any read of a device value fails and
HostSyncRecorder names it), as rank 0 of two with the all-reduce stood in by a function that
keeps the tensor where it is, as NCCL does. The real two-process runs, which check that the
loss normalisation is still exact, are tests/train/test_distributed.py's."""

from __future__ import annotations

import contextlib
import threading
from types import SimpleNamespace

import pytest
import torch

from bertforge.bench.syncs import HostSyncRecorder
from bertforge.model import build_model
from bertforge.runconfig import RuntimeArgs, TrainArgs
from bertforge.tasks.pretraining import PretrainLoss
from bertforge.tasks.squad import SpanLoss
from bertforge.train import loop
from bertforge.train.loop import Trainer, build_train_state, train_step
from bertforge.train.runtime import DistInfo, Runtime
from conftest import random_batch, tiny_config

B, T, P = 4, 16, 3


def host_batch(head: str, seed: int) -> dict:
    cfg = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    batch = random_batch(cfg, batch=B, seq=T, seed=seed)
    batch["seq_lengths"] = batch["attention_mask"].sum(dim=1).tolist()
    if head == "qa":
        batch["start_positions"] = torch.tensor([1, 2, 3, 0])
        batch["end_positions"] = torch.tensor([2, 2, 4, 0])
    else:
        g = torch.Generator().manual_seed(seed)
        batch["masked_lm_positions"] = torch.tensor([[1, 2, 0]] * B)
        batch["masked_lm_ids"] = torch.randint(1, cfg.vocab_size, (B, P), generator=g)
        batch["masked_lm_weights"] = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]] * (B // 2))
        batch["next_sentence_labels"] = torch.tensor([0, 1, 0, 1])
    return batch


def data_parallel_state(head: str, optimizer: str, device: str, all_reduce):
    """A step's state as rank 0 of 2: built as one process (DDP needs a process group), then
    given the two-rank view the step reads, an all-reduce stand-in (which, as
    Runtime.all_reduce_sum, first moves what it gets to the device), and DDP's no_sync."""
    runtime = Runtime(RuntimeArgs(device="cpu", precision="fp32"))
    runtime.device = torch.device(device)
    cfg = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    with torch.device(device):
        model = build_model(cfg, head, unpad=True)
    state = build_train_state(model, TrainArgs(optimizer=optimizer, max_steps=10), runtime, 10)
    runtime.dist = DistInfo(rank=0, world_size=2)
    runtime.all_reduce_sum = lambda t: all_reduce(t).to(runtime.device)
    model.no_sync = contextlib.nullcontext  # DDP's, for the micro-batches before the last
    return state


@pytest.mark.parametrize("head, optimizer", [("qa", "adamw"), ("pretraining", "lamb")])
def test_data_parallel_step_reads_nothing_back(head, optimizer):
    reduced = []

    def all_reduce(t: torch.Tensor) -> torch.Tensor:
        reduced.append(t.device.type)
        return t

    state = data_parallel_state(head, optimizer, "meta", all_reduce)
    loss = SpanLoss() if head == "qa" else PretrainLoss()
    with HostSyncRecorder() as recorder:
        out = train_step(state, loss, [host_batch(head, 0), host_batch(head, 1)])
    assert recorder.syncs == []
    assert reduced == ["meta"]  # the counts went to the device before the all-reduce
    assert all(d.device.type == "meta" for d in out.denominators.values())


def test_data_parallel_loss_divides_by_the_global_counts():
    """Two ranks holding the same batch: every count doubles; the step's loss is the sums over
    this rank divided by those doubled counts (here the counts written out by hand)."""
    state = data_parallel_state("pretraining", "lamb", "cpu", lambda t: t * 2)
    batch = host_batch("pretraining", 0)
    out = train_step(state, PretrainLoss(), [batch])
    masked = float(batch["masked_lm_weights"].sum())  # 6 real masked positions
    assert masked == 6.0
    assert float(out.denominators["mlm"]) == 2 * masked and float(out.denominators["nsp"]) == 2 * B
    expected = out.sums["mlm"] / (2 * masked) + out.sums["nsp"] / (2 * B)
    torch.testing.assert_close(out.loss, expected)


def test_preemption_flag_is_agreed_on_the_host(monkeypatch):
    """With NCCL as the default group, the flag goes through a gloo group made once, as a host
    tensor: nothing is read back from the device."""
    calls = []
    monkeypatch.setattr(loop.dist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(loop.dist, "new_group", lambda backend=None: calls.append(("new_group", backend)) or "gloo")

    def all_reduce(t, op=None, group=None):
        calls.append(("all_reduce", t.device.type, group))
        t.fill_(1.0)  # another rank was signalled

    monkeypatch.setattr(loop.dist, "all_reduce", all_reduce)
    trainer = SimpleNamespace(rt=SimpleNamespace(dist=DistInfo(rank=0, world_size=2)),
                              cfg=SimpleNamespace(save_every=5), _preempt=threading.Event(), _flags_group=None)
    trainer._host_group = lambda: Trainer._host_group(trainer)
    assert Trainer._preempted(trainer) is True
    assert Trainer._preempted(trainer) is True
    assert calls == [("new_group", "gloo"), ("all_reduce", "cpu", "gloo"), ("all_reduce", "cpu", "gloo")]


@pytest.mark.slow
def test_two_ranks_with_checkpoints_agree_on_the_flag_every_step(tmp_path, vocab_file, squad_dev_file):
    """Two gloo ranks with --save_every: the preemption flag goes through the host group at every
    step, and the run trains, checkpoints and finishes on both ranks."""
    from dist_worker import Job, launch, read_metrics, write_tiny_config

    write_tiny_config(tmp_path / "tiny.json", dropout=0.0)
    argv = ["finetune", "squad", "--do_train", "--train_file", str(squad_dev_file), "--train_articles", "0:1",
            "--max_seq_length", "128", "--bert_model", str(tmp_path / "tiny.json"), "--vocab_file", str(vocab_file),
            "--do_lower_case", "true", "--max_steps", "4", "--save_every", "2", "--global_batch_size", "8",
            "--train_batch_size", "4", "--log_every", "1", "--device", "cpu", "--output_dir", str(tmp_path / "run")]
    launch(Job(argv), tmp_path / "launch", nproc=2).check()
    steps = [r["step"] for r in read_metrics(tmp_path / "run") if "seq_per_s" in r]
    assert steps == [1, 2, 3, 4]
    assert (tmp_path / "run" / "model.safetensors").is_file()
