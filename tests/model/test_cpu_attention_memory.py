"""CPU training with attention dropout can recompute each sequence's attention in the backward
pass instead of keeping it (`--recompute_attention`, off by default): the same outputs, gradients
and random stream as keeping it, and nothing of size heads x L x L saved for the backward pass
(docs/memory.md: it was a third of a MiniLM fine-tune's peak memory)."""

from __future__ import annotations

import pytest
import torch

from bertforge.model import BertForQuestionAnswering
from bertforge.model import attention
from bertforge.model import bert as bert_module
from conftest import random_batch, tiny_config

CFG = tiny_config(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.2, max_position_embeddings=128)


def train_step(model, batch):
    """Forward and backward in training mode; (start logits, gradients, the next random draw)."""
    start, end = model(**batch, seq_lengths=batch["attention_mask"].sum(1).tolist())
    mask = batch["attention_mask"].bool()
    (start[mask].square().sum() + end[mask].sum()).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    return start.detach(), grads, torch.rand(3)


def test_recomputed_attention_trains_exactly_as_kept_attention():
    batch = random_batch(CFG, batch=5, seq=40, seed=4)
    results = []
    for recompute in (False, True):
        torch.manual_seed(0)
        model = BertForQuestionAnswering(CFG, unpad=True).train()
        model.recompute_attention(recompute)
        torch.manual_seed(1)  # the same dropout masks for both
        results.append(train_step(model, batch))
    (start_a, grads_a, next_a), (start_b, grads_b, next_b) = results
    assert torch.equal(start_a, start_b)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert torch.equal(next_a, next_b)  # the backward pass left the random stream where it was


def _saved_for_backward(model, batch) -> list[torch.Size]:
    shapes: list[torch.Size] = []

    def pack(t):
        shapes.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        start, _ = model(**batch, seq_lengths=batch["attention_mask"].sum(1).tolist())
    start.sum().backward()
    return shapes


def test_no_attention_scores_kept_for_the_backward_pass():
    batch = random_batch(CFG, batch=4, seq=48, seed=2, min_len=30)
    lengths = set(batch["attention_mask"].sum(1).tolist())
    torch.manual_seed(0)
    model = BertForQuestionAnswering(CFG, unpad=True).train()

    def scores(shapes):
        return [s for s in shapes if len(s) >= 2 and s[-1] == s[-2] and s[-1] in lengths]

    assert scores(_saved_for_backward(model, batch))  # kept by default: the check sees them
    model.recompute_attention(True)
    assert scores(_saved_for_backward(model, batch)) == []


def test_inference_and_no_dropout_have_nothing_to_recompute(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("recomputed")

    monkeypatch.setattr(attention, "checkpoint", refuse)
    q = torch.randn(10, 2, 8, requires_grad=True)
    with torch.no_grad():
        attention._per_sequence_attention(q, q, q, [4, 6], 0.1, recompute=True)
    attention._per_sequence_attention(q, q, q, [4, 6], 0.0, recompute=True)  # SDPA's flash kernel: O(L)
    attention._per_sequence_attention(q, q, q, [4, 6], 0.1)  # off unless asked for
    with pytest.raises(AssertionError, match="recomputed"):
        attention._per_sequence_attention(q, q, q, [4, 6], 0.1, recompute=True)


def test_the_trainer_turns_it_on_from_the_runtime_option(tmp_path):
    from bertforge.runconfig import RuntimeArgs, TrainArgs
    from bertforge.train.loop import Trainer
    from bertforge.train.runtime import Runtime

    def flags(recompute: bool) -> set[bool]:
        model = BertForQuestionAnswering(CFG, unpad=True)
        runtime = Runtime(RuntimeArgs(device="cpu", recompute_attention=recompute))
        Trainer(model, None, _NoData(), TrainArgs(max_steps=1), runtime, tmp_path, total_steps=1, progress=False)
        return {m.recompute for m in model.modules() if isinstance(m, bert_module.SelfAttention)}

    assert flags(False) == {False}
    assert flags(True) == {True}


class _NoData:
    def state_dict(self) -> dict:
        return {}
