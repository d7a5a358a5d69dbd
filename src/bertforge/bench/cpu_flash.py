"""Softmax attention over sequences packed back to back, written out in float64, and the same as
a CPU kernel for FlashAttention's varlen op (`torch.ops.aten._flash_attention_forward` and its
backward), which only CUDA builds ship: with it the model's flash code path (its arguments, its
autograd, its place in compiled graphs, attention dropout included) runs in CPU tests and in
the GPU suite's CPU smoke run (benchmarks/run_gpu_suite.py --smoke). A reference, not a fast
path: float64, one sequence at a time."""

from __future__ import annotations

import math

import torch

from bertforge.model import attention


def _sequences(cu_seqlens):
    bounds = cu_seqlens.tolist()
    return list(zip(bounds[:-1], bounds[1:]))


def _heads_first(t, start, end):
    return t[start:end].double().transpose(0, 1)  # (L, nh, hd) -> (nh, L, hd)


def dropout_keep_masks(cu_seqlens, heads: int, dropout_p: float, seed: int) -> list[torch.Tensor] | None:
    """Per sequence, which attention probabilities dropout keeps: (nh, L, L) bool, drawn from
    `seed` alone, so the backward pass can draw them again. None without dropout."""
    if dropout_p == 0.0:
        return None
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(heads, end - start, end - start, generator=g, dtype=torch.float64) >= dropout_p
            for start, end in _sequences(cu_seqlens)]


def _dropped(probs, keep, i, dropout_p):
    """probs with dropout's mask and 1 / (1 - p) scaling applied (unchanged without dropout)."""
    return probs if keep is None else probs * keep[i] / (1 - dropout_p)


def reference_varlen_attention(q, k, v, cu_seqlens, scale=None, keep=None, dropout_p=0.0):
    """Softmax attention per sequence, sequences delimited by cu_seqlens, in float64, with the
    dropout masks `keep` (see dropout_keep_masks) if given:
    q, k, v (N, nh, hd) -> out (N, nh, hd), logsumexp (nh, N)."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    outs, lses = [], []
    for i, (start, end) in enumerate(_sequences(cu_seqlens)):
        qi, ki, vi = (_heads_first(t, start, end) for t in (q, k, v))
        scores = qi @ ki.transpose(1, 2) * scale  # (nh, L, L)
        lses.append(scores.logsumexp(-1))  # (nh, L)
        probs = _dropped(scores.softmax(-1), keep, i, dropout_p)
        outs.append((probs @ vi).transpose(0, 1))  # (L, nh, hd)
    return torch.cat(outs).to(q.dtype), torch.cat(lses, dim=1).float()


def reference_varlen_attention_backward(grad_out, q, k, v, cu_seqlens, scale=None, keep=None, dropout_p=0.0):
    """The gradients of reference_varlen_attention, written out: with P = softmax(S),
    S = scale Q K^T, dropout D(P) = P * M / (1 - p) and O = D(P) V:
    dV = D(P)^T dO, dP = D(dO V^T), dS = P * (dP - rowsum(P * dP)),
    dQ = scale dS K, dK = scale dS^T Q."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    grads = [torch.empty_like(t, dtype=torch.float64) for t in (q, k, v)]
    for i, (start, end) in enumerate(_sequences(cu_seqlens)):
        qi, ki, vi, dout = (_heads_first(t, start, end) for t in (q, k, v, grad_out))
        probs = (qi @ ki.transpose(1, 2) * scale).softmax(-1)  # (nh, L, L)
        dprobs = _dropped(dout @ vi.transpose(1, 2), keep, i, dropout_p)
        dscores = probs * (dprobs - (probs * dprobs).sum(-1, keepdim=True))
        dv = _dropped(probs, keep, i, dropout_p).transpose(1, 2) @ dout
        for grad, value in zip(grads, (scale * dscores @ ki, scale * dscores.transpose(1, 2) @ qi, dv)):
            grad[start:end] = value.transpose(0, 1)
    return tuple(g.to(q.dtype) for g in grads)


class CpuFlash:
    """The op's CPU kernels. The forward records what the model passes (`dropout_ps`,
    `max_seqlens`, one entry per call). Dropout masks come from a seed the forward returns as
    its RNG state (where the CUDA kernel returns its philox seed), so the backward replays
    them, as the CUDA kernel does."""

    def __init__(self):
        self.dropout_ps: list[float] = []
        self.max_seqlens: list[int] = []

    def forward(self, q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, is_causal, return_debug_mask,
                *, scale=None, **_):
        assert torch.equal(cu_q, cu_k) and cu_q.dtype == torch.int32 and not is_causal
        assert max_q == max_k == int((cu_q[1:] - cu_q[:-1]).max())
        self.dropout_ps.append(dropout_p)
        self.max_seqlens.append(max_q)
        seed = len(self.dropout_ps)  # a fresh mask per call
        keep = dropout_keep_masks(cu_q, q.shape[1], dropout_p, seed)
        out, lse = reference_varlen_attention(q, k, v, cu_q, scale, keep, dropout_p)
        rng = torch.tensor([seed, 0], dtype=torch.uint64)
        return out, lse, rng, torch.zeros((), dtype=torch.uint64), q.new_empty(0)

    def backward(self, grad_out, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, dropout_p, is_causal,
                 rng_state, unused, *, scale=None, **_):
        keep = dropout_keep_masks(cu_q, q.shape[1], dropout_p, int(rng_state[0]))
        return reference_varlen_attention_backward(grad_out, q, k, v, cu_q, scale, keep, dropout_p)


def install_cpu_flash() -> CpuFlash:
    """For the rest of the process, the CPU counts as a device with FlashAttention's varlen
    kernel, run by CpuFlash (a smoke run's stand-in; tests use their own fixture, which undoes
    it). Returns the kernel, which records what the model passed."""
    flash = CpuFlash()
    lib = torch.library.Library("aten", "IMPL")
    lib.impl("_flash_attention_forward", flash.forward, "CPU")
    lib.impl("_flash_attention_backward", flash.backward, "CPU")
    attention._flash_varlen_on = lambda device: device.type == "cpu"
    flash.library = lib  # the registration lives as long as the library object
    return flash
