"""Attention, and the two layouts of the hidden states that BERT's layers run on.

- padded:   (B, T, H), with a key-padding mask for attention (none when nothing is padding);
- unpadded: (N, H), N = the real tokens of the batch, sequences stored back to back and delimited
  by `cu_seqlens`, so embeddings, linear layers, GELU and LayerNorm spend no FLOPs on padding.

Only attention needs to know the layout. The padded layout runs SDPA; the unpadded one the
fastest exact kernel the device has (`unpadded_attention`): FlashAttention's variable-length
kernel, SDPA per sequence on the CPU, or SDPA on the padded grid. docs/model.md records why, with
measurements.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from bertforge.errors import DataError

# Whether this torch build ships FlashAttention (a compile-time property; no device is touched).
_FLASH_BUILT = torch.backends.cuda.is_flash_attention_available()


# ---- layouts -----------------------------------------------------------------------------


@dataclass
class Padded:
    """Hidden states are (B, T, H); `mask` is the SDPA boolean mask (B, 1, 1, T), True = attend,
    or None when no position is padding."""

    mask: Tensor | None


@dataclass
class Unpadded:
    """Hidden states are (N, H): the real tokens of B sequences back to back."""

    indices: Tensor
    """(N,) int64 positions of the real tokens in the flattened (B*T) padded grid."""
    cu_seqlens: Tensor
    """(B+1,) int32 cumulative sequence lengths on the tokens' device, cu_seqlens[0] = 0."""
    lengths: list[int]
    """The B sequence lengths, on the host."""
    max_seqlen: int
    """The longest sequence of the batch."""
    batch: int
    """B of the padded grid."""
    seqlen: int
    """T of the padded grid."""
    mask: Tensor
    """(B, 1, 1, T) boolean SDPA mask, True = real token, for kernels that run on the grid."""
    flash_varlen: bool
    """Whether the tokens' device runs FlashAttention's variable-length kernel."""

    @classmethod
    def from_mask(cls, attention_mask: Tensor, seq_lengths: Sequence[int] | None = None
                  ) -> Unpadded | None:
        """attention_mask: (B, T), 1 for real tokens; real tokens need not be a prefix.
        seq_lengths: the B counts of real tokens per row, when the host knows them.

        None when no position is padding: then the padded layout without a mask is the same
        function with no gathers and the fastest attention kernels. With seq_lengths nothing
        waits for the device; without, reading the lengths back is the one host sync.
        """
        B, T = attention_mask.shape
        mask_lengths = attention_mask.sum(dim=1, dtype=torch.int32)  # (B,)
        if seq_lengths is None:
            lengths = mask_lengths.tolist()
        else:
            lengths = list(seq_lengths)
            _check_lengths_match_mask(mask_lengths, lengths)
        n = sum(lengths)
        if n == B * T:
            return None
        # nonzero_static: the output size is known, so no sync to learn it (as nonzero needs).
        indices = torch.nonzero_static(attention_mask.flatten(), size=n).flatten()  # (N,)
        cu_seqlens = F.pad(torch.cumsum(mask_lengths, dim=0, dtype=torch.int32), (1, 0))
        return cls(indices, cu_seqlens, lengths, max(lengths), B, T,
                   attention_mask.bool()[:, None, None, :], _flash_varlen_on(attention_mask.device))

    def unpad(self, x: Tensor) -> Tensor:
        """(B, T, ...) -> (N, ...)"""
        return x.flatten(0, 1).index_select(0, self.indices)

    def pad(self, x: Tensor) -> Tensor:
        """(N, ...) -> (B, T, ...), zeros at padding."""
        out = x.new_zeros(self.batch * self.seqlen, *x.shape[1:])
        out.index_copy_(0, self.indices, x)
        return out.view(self.batch, self.seqlen, *x.shape[1:])

    def positions(self) -> Tensor:
        """(N,) position id of each real token: its column in the padded grid, as the padded
        path counts positions (the same as its index in the sequence when padding is a suffix)."""
        return self.indices % self.seqlen


Layout = Padded | Unpadded


def host_lengths(seq_lengths: Sequence[int], attention_mask: Tensor | None, batch: int,
                 seqlen: int) -> list[int]:
    """seq_lengths as a list of B ints in 0..T, or a DataError naming what is wrong."""
    if attention_mask is None:
        raise DataError("seq_lengths was given without attention_mask: the lengths count the "
                        "mask's real tokens")
    if isinstance(seq_lengths, Tensor):
        raise DataError("seq_lengths must be a Python sequence of ints known on the host, not a "
                        "tensor (reading a device tensor back would be the sync it avoids)")
    try:
        lengths = [operator.index(n) for n in seq_lengths]
    except TypeError:
        raise DataError(f"seq_lengths must hold ints, got {list(seq_lengths)!r}") from None
    if len(lengths) != batch or not all(0 <= n <= seqlen for n in lengths):
        raise DataError(f"seq_lengths must hold {batch} lengths in 0..{seqlen} (one per row of "
                        f"attention_mask {tuple(attention_mask.shape)}), got {lengths}")
    return lengths


def _check_lengths_match_mask(mask_lengths: Tensor, lengths: list[int]) -> None:
    """Lengths that disagree with the mask would send kernels past the packed tokens. The check
    must not wait for the device: exact on the CPU, a device-side assertion elsewhere."""
    expected = torch.tensor(lengths, dtype=torch.int32, pin_memory=mask_lengths.is_cuda)
    expected = expected.to(mask_lengths.device, non_blocking=True)
    if mask_lengths.device.type == "cpu":
        if not torch.equal(mask_lengths, expected):
            raise DataError(f"seq_lengths {lengths} disagree with attention_mask, whose rows "
                            f"hold {mask_lengths.tolist()} real tokens")
    else:
        torch._assert_async((mask_lengths == expected).all(),
                            "seq_lengths disagree with attention_mask's real tokens per row")


# ---- attention ---------------------------------------------------------------------------


def attend(qkv: Tensor, layout: Layout, dropout_p: float, recompute: bool = False) -> Tensor:
    """softmax(q k^T / sqrt(hd)) v per head, with attention dropout.

    qkv: (B, T, 3, nh, hd) padded or (N, 3, nh, hd) unpadded, the queries, keys and values
    -> (B, T, nh, hd) or (N, nh, hd). `recompute`: see `_per_sequence_attention`.
    """
    if isinstance(layout, Padded):
        return _grid_attention(qkv, layout.mask, dropout_p)
    return unpadded_attention(qkv, layout, dropout_p, recompute)


def unpadded_attention(qkv: Tensor, layout: Unpadded, dropout_p: float, recompute: bool = False) -> Tensor:
    """qkv: (N, 3, nh, hd), the real tokens' queries, keys and values -> (N, nh, hd).

    The fastest exact kernel the device has, all with attention dropout (docs/model.md):
    - FlashAttention's varlen kernel where it runs (NVIDIA, fp16/bf16, head_dim % 8 == 0 and
      <= 256): no padding at all, one call, traceable into the compiled layer graph;
    - CPU, eager: SDPA per sequence; attention cost sum(L_i^2), not B*T^2;
    - elsewhere (fp32/tf32 on CUDA, other accelerators, CPU under torch.compile): SDPA on the
      padded grid, for attention only.
    """
    q, k, v = qkv.unbind(1)  # each (N, nh, hd)
    if layout.flash_varlen and _flash_varlen_supports(q):
        return _flash_varlen_attention(q, k, v, layout, dropout_p)
    if q.device.type == "cpu" and not torch.compiler.is_compiling():
        return _per_sequence_attention(q, k, v, layout.lengths, dropout_p, recompute)
    return _padded_grid_attention(qkv, layout, dropout_p)


def _grid_attention(qkv: Tensor, mask: Tensor | None, dropout_p: float) -> Tensor:
    """SDPA on the padded grid: qkv (B, T, 3, nh, hd), mask (B, 1, 1, T) or None -> (B, T, nh, hd)."""
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, nh, T, hd)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    return y.transpose(1, 2)  # (B, T, nh, hd)


def _flash_varlen_on(device: torch.device) -> bool:
    """Whether FlashAttention's varlen kernel runs on the device: torch builds it for NVIDIA
    GPUs of compute capability 8.0 and newer. ROCm builds take the padded grid, as their flash
    support differs by GPU and version."""
    return (device.type == "cuda" and _FLASH_BUILT and torch.version.hip is None
            and torch.cuda.get_device_capability(device) >= (8, 0))


def _flash_varlen_supports(q: Tensor) -> bool:
    """The kernel's own limits on its inputs: half precision, head_dim a multiple of 8 up to 256."""
    head_dim = q.shape[-1]
    return q.dtype in (torch.float16, torch.bfloat16) and head_dim % 8 == 0 and head_dim <= 256


def _flash_varlen_attention(q: Tensor, k: Tensor, v: Tensor, layout: Unpadded,
                            dropout_p: float) -> Tensor:
    """q, k, v: (N, nh, hd) -> (N, nh, hd), sequences delimited by layout.cu_seqlens.

    The aten op itself, not `torch.nn.attention.varlen.varlen_attn`: that wrapper fixes dropout
    at 0. The op is differentiable (its backward replays the dropout mask from the returned RNG
    state) and has a meta kernel, so torch.compile keeps it inside the layer's graph.
    """
    out, *_ = torch.ops.aten._flash_attention_forward(
        q, k, v, layout.cu_seqlens, layout.cu_seqlens, layout.max_seqlen, layout.max_seqlen,
        dropout_p, False, False)  # is_causal, return_debug_mask
    return out


def _per_sequence_attention(q: Tensor, k: Tensor, v: Tensor, lengths: list[int],
                            dropout_p: float, recompute: bool = False) -> Tensor:
    """q, k, v: (N, nh, hd), sequences back to back -> (N, nh, hd).

    With `recompute`, training with attention dropout recomputes the attention in the backward
    pass instead of keeping it (torch.utils.checkpoint; the dropout masks are replayed from the
    saved RNG state): with dropout SDPA runs its math kernel on the CPU, which keeps 9 bytes per
    score (the probabilities, the mask, the dropped probabilities) for every layer until the
    backward pass, about a third of a fine-tune's peak memory; recomputing costs about 20% more
    time per step (docs/memory.md)."""
    if recompute and dropout_p > 0 and torch.is_grad_enabled() and q.requires_grad:
        return checkpoint(_attend_each, q, k, v, lengths, dropout_p, use_reentrant=False)
    return _attend_each(q, k, v, lengths, dropout_p)


def _attend_each(q: Tensor, k: Tensor, v: Tensor, lengths: list[int], dropout_p: float) -> Tensor:
    """SDPA per sequence: q, k, v (N, nh, hd) -> (N, nh, hd).

    Each sequence goes in as a batch of one, (1, nh, L_i, hd): SDPA's fused CPU kernel takes 4-D
    inputs only and sends 3-D ones to its unfused math kernel, 3x slower (docs/model.md)."""
    out = [F.scaled_dot_product_attention(qi.transpose(0, 1)[None], ki.transpose(0, 1)[None],
                                          vi.transpose(0, 1)[None], dropout_p=dropout_p)[0].transpose(0, 1)
           for qi, ki, vi in zip(q.split(lengths), k.split(lengths), v.split(lengths))]  # each (L_i, nh, hd)
    return torch.cat(out)


def _padded_grid_attention(qkv: Tensor, layout: Unpadded, dropout_p: float) -> Tensor:
    """qkv: (N, 3, nh, hd) -> (N, nh, hd), scattered into the padded grid for SDPA only; every
    other op of the layer still runs on the N real tokens."""
    return layout.unpad(_grid_attention(layout.pad(qkv), layout.mask, dropout_p))


__all__ = ["Layout", "Padded", "Unpadded", "attend", "host_lengths", "unpadded_attention"]
