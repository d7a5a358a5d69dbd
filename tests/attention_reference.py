"""Softmax attention over sequences packed back to back, written out in float64, and the same as
a CPU kernel for FlashAttention's varlen op (`torch.ops.aten._flash_attention_forward` and its
backward), which only CUDA builds ship: with it the model's flash code path (its arguments, its
autograd, its place in compiled graphs) runs in CPU tests."""

from __future__ import annotations

import math

import torch


def _sequences(cu_seqlens):
    bounds = cu_seqlens.tolist()
    return list(zip(bounds[:-1], bounds[1:]))


def _heads_first(t, start, end):
    return t[start:end].double().transpose(0, 1)  # (L, nh, hd) -> (nh, L, hd)


def reference_varlen_attention(q, k, v, cu_seqlens, scale=None):
    """Softmax attention per sequence, sequences delimited by cu_seqlens, in float64:
    q, k, v (N, nh, hd) -> out (N, nh, hd), logsumexp (nh, N)."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    outs, lses = [], []
    for start, end in _sequences(cu_seqlens):
        qi, ki, vi = (_heads_first(t, start, end) for t in (q, k, v))
        scores = qi @ ki.transpose(1, 2) * scale  # (nh, L, L)
        lses.append(scores.logsumexp(-1))  # (nh, L)
        outs.append((scores.softmax(-1) @ vi).transpose(0, 1))  # (L, nh, hd)
    return torch.cat(outs).to(q.dtype), torch.cat(lses, dim=1).float()


def reference_varlen_attention_backward(grad_out, q, k, v, cu_seqlens, scale=None):
    """The gradients of reference_varlen_attention, written out: with P = softmax(S),
    S = scale Q K^T and O = P V: dV = P^T dO, dS = P * (dO V^T - rowsum(dO * O)),
    dQ = scale dS K, dK = scale dS^T Q."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    grads = [torch.empty_like(t, dtype=torch.float64) for t in (q, k, v)]
    for start, end in _sequences(cu_seqlens):
        qi, ki, vi, dout = (_heads_first(t, start, end) for t in (q, k, v, grad_out))
        probs = (qi @ ki.transpose(1, 2) * scale).softmax(-1)  # (nh, L, L)
        out = probs @ vi
        dscores = probs * (dout @ vi.transpose(1, 2) - (dout * out).sum(-1, keepdim=True))
        for grad, value in zip(grads, (scale * dscores @ ki, scale * dscores.transpose(1, 2) @ qi,
                                       probs.transpose(1, 2) @ dout)):
            grad[start:end] = value.transpose(0, 1)
    return tuple(g.to(q.dtype) for g in grads)


class CpuFlash:
    """The op's CPU kernels. The forward records what the model passes (`dropout_ps`,
    `max_seqlens`, one entry per call) and leaves dropout out: its RNG is the GPU kernel's."""

    def __init__(self):
        self.dropout_ps: list[float] = []
        self.max_seqlens: list[int] = []

    def forward(self, q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, is_causal, return_debug_mask,
                *, scale=None, **_):
        assert torch.equal(cu_q, cu_k) and cu_q.dtype == torch.int32 and not is_causal
        assert max_q == max_k == int((cu_q[1:] - cu_q[:-1]).max())
        self.dropout_ps.append(dropout_p)
        self.max_seqlens.append(max_q)
        out, lse = reference_varlen_attention(q, k, v, cu_q, scale)
        rng = torch.zeros(2, dtype=torch.uint64)
        return out, lse, rng, torch.zeros((), dtype=torch.uint64), q.new_empty(0)

    def backward(self, grad_out, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, dropout_p, is_causal,
                 rng_state, unused, *, scale=None, **_):
        assert dropout_p == 0.0, "the reference has no dropout mask to replay"
        return reference_varlen_attention_backward(grad_out, q, k, v, cu_q, scale)
