"""BERT (Devlin et al., 2019), read from the smallest part up:
embeddings -> self-attention -> feed-forward -> layer -> encoder -> BertModel -> heads.

Single-device model code only: no data, optimizer or distributed logic here.

Two layouts of the hidden states run through the same layers:
- padded:   (B, T, H), with a key-padding mask for attention (none when nothing is padding);
- unpadded: (N, H), N = the real tokens of the batch, sequences stored back to back and delimited
  by `cu_seqlens`, so embeddings, linear layers, GELU and LayerNorm spend no FLOPs on padding.
  Only attention needs to know the layout (`Padded` / `Unpadded` below); `unpadded_attention`
  picks its kernel per device and precision. docs/model.md records why, with measurements.
Parameter names follow Google's / Hugging Face's so that checkpoint key maps stay short
(`bertforge.checkpoint.hf` holds the map); query, key and value are one fused projection.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from bertforge.config import BertConfig
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


def _host_lengths(seq_lengths: Sequence[int], attention_mask: Tensor | None, batch: int,
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


# ---- building blocks ---------------------------------------------------------------------


def gelu_for(name: str):
    # BERT uses the exact (erf) GELU; "gelu_new" is the tanh approximation some checkpoints use.
    approximate = "none" if name == "gelu" else "tanh"
    return lambda x: F.gelu(x, approximate=approximate)


class BertEmbeddings(nn.Module):
    """Sum of word, position and token-type embeddings, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor,
                position_ids: Tensor | None = None) -> Tensor:
        """input_ids, token_type_ids: (B, T) -> (B, T, H); or, unpadded, (N,) with their
        position_ids (N,) -> (N, H). Without position_ids positions are 0..T-1."""
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = (self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
             + self.token_type_embeddings(token_type_ids))
        return self.dropout(self.norm(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection, through SDPA or FlashAttention's
    varlen kernel."""

    # The paper's (and every reference's) query, key and value projections are three tensors;
    # here they are the three row blocks of qkv (see stacked_parts).
    STACKED = {"qkv.weight": 3, "qkv.bias": 3}

    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob
        self.recompute = False  # see BertPreTrainedModel.recompute_attention

    def forward(self, x: Tensor, layout: Layout) -> Tensor:
        """x: (B, T, H) padded or (N, H) unpadded -> same shape (before the output projection)."""
        dropout_p = self.dropout_p if self.training else 0.0
        qkv = self.qkv(x).unflatten(-1, (3, self.num_heads, self.head_dim))
        if isinstance(layout, Padded):
            q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, nh, T, hd)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=layout.mask, dropout_p=dropout_p)
            return y.transpose(1, 2).flatten(2)  # (B, T, H)
        return unpadded_attention(qkv, layout, dropout_p, self.recompute).flatten(1)  # (N, H)


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
    """SDPA per sequence: q, k, v (N, nh, hd) -> (N, nh, hd)."""
    out = [F.scaled_dot_product_attention(qi.transpose(0, 1), ki.transpose(0, 1), vi.transpose(0, 1),
                                          dropout_p=dropout_p).transpose(0, 1)  # (L_i, nh, hd)
           for qi, ki, vi in zip(q.split(lengths), k.split(lengths), v.split(lengths))]
    return torch.cat(out)


def _padded_grid_attention(qkv: Tensor, layout: Unpadded, dropout_p: float) -> Tensor:
    """qkv: (N, 3, nh, hd) -> (N, nh, hd), scattered into the padded grid for SDPA only; every
    other op of the layer still runs on the N real tokens."""
    q, k, v = layout.pad(qkv).permute(2, 0, 3, 1, 4)  # each (B, nh, T, hd)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=layout.mask, dropout_p=dropout_p)
    return layout.unpad(y.transpose(1, 2))  # (N, nh, hd)


class FeedForward(nn.Module):
    """Position-wise H -> 4H -> H with GELU."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.intermediate = nn.Linear(config.hidden_size, config.intermediate_size)
        self.output = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = gelu_for(config.hidden_act)

    def forward(self, x: Tensor) -> Tensor:
        return self.output(self.act(self.intermediate(x)))


class BertLayer(nn.Module):
    """Post-LayerNorm transformer layer, as in BERT:
    x = LN(x + Dropout(Proj(Attention(x)))); x = LN(x + Dropout(FFN(x)))."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = SelfAttention(config)
        self.attention_output = nn.Linear(config.hidden_size, config.hidden_size)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn = FeedForward(config)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: Tensor, layout: Layout) -> Tensor:
        x = self.attention_norm(x + self.dropout(self.attention_output(self.attention(x, layout))))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layers = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: Tensor, layout: Layout) -> Tensor:
        for layer in self.layers:
            x = layer(x, layout)
        return x


class BertPooler(nn.Module):
    """tanh(W h_[CLS] + b): the sentence representation NSP and classification read."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, sequence_output: Tensor) -> Tensor:
        """(B, T, H) -> (B, H)"""
        return torch.tanh(self.dense(sequence_output[:, 0]))


@dataclass
class BertOutput:
    sequence_output: Tensor  # (B, T, H); zeros at padding on the unpadded path
    pooled_output: Tensor | None  # (B, H), None without a pooler


class BertModel(nn.Module):
    """The BERT encoder: embeddings, L layers, optional pooler.

    `unpad=True` runs the layers on the real tokens only (see module docstring); outputs at real
    positions are the same function as the padded path.
    """

    def __init__(self, config: BertConfig, add_pooler: bool = True, unpad: bool = False):
        super().__init__()
        self.config = config
        self.unpad = unpad
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooler else None

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None,
                attention_mask: Tensor | None = None, *,
                seq_lengths: Sequence[int] | None = None) -> BertOutput:
        """input_ids, token_type_ids, attention_mask: (B, T); attention_mask 1 = real token.
        seq_lengths: the B counts of real tokens per row of attention_mask, a host list (the
        data loader knows them): with it the unpadded path never waits for the device."""
        B, T = input_ids.shape
        if seq_lengths is not None:
            seq_lengths = _host_lengths(seq_lengths, attention_mask, B, T)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if _encodes_in_groups(input_ids):
            if self.unpad and attention_mask is not None and seq_lengths is None:
                seq_lengths = attention_mask.sum(dim=1).tolist()  # a CPU tensor: nothing to wait for
            groups = _cpu_inference_groups(seq_lengths if self.unpad and seq_lengths is not None
                                           else [T] * B)
        else:
            groups = [slice(0, B)]
        if len(groups) > 1:
            x = torch.cat([self._encode(input_ids[g], token_type_ids[g],
                                        None if attention_mask is None else attention_mask[g],
                                        None if seq_lengths is None else seq_lengths[g])
                           for g in groups])
        else:
            x = self._encode(input_ids, token_type_ids, attention_mask, seq_lengths)
        pooled = self.pooler(x) if self.pooler is not None else None
        return BertOutput(x, pooled)

    def _encode(self, input_ids: Tensor, token_type_ids: Tensor, attention_mask: Tensor | None,
                seq_lengths: list[int] | None) -> Tensor:
        """(B, T) ids -> (B, T, H) last hidden states."""
        layout = (Unpadded.from_mask(attention_mask, seq_lengths)
                  if attention_mask is not None and self.unpad else None)
        if layout is not None:
            # Embeddings, layers and all their activations on the N real tokens only.
            x = self.embeddings(layout.unpad(input_ids), layout.unpad(token_type_ids),
                                layout.positions())  # (N, H)
            return layout.pad(self.encoder(x, layout))  # (B, T, H)
        # Unpadding found no padding, or the padded layout was asked for (unpad=False keeps the
        # forward free of host syncs, as CUDA graph capture needs).
        mask = None if attention_mask is None or self.unpad else attention_mask.bool()[:, None, None, :]
        return self.encoder(self.embeddings(input_ids, token_type_ids), Padded(mask))  # (B, T, H)


# CPU inference encodes groups of consecutive sequences of about this many tokens (real ones when
# unpadding), so that each layer's activations stay small enough for the allocator to reuse
# (docs/model.md has the measurement).
CPU_GROUP_TOKENS = 2048


def _encodes_in_groups(input_ids: Tensor) -> bool:
    """CPU inference encodes the batch in groups; training, accelerators and compiled code in one
    pass."""
    return (input_ids.device.type == "cpu" and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling())


def _cpu_inference_groups(sizes: Sequence[int]) -> list[slice]:
    """Slices of consecutive sequences of about CPU_GROUP_TOKENS tokens, given each sequence's
    token count (real tokens when unpadding, else T)."""
    groups, start, tokens = [], 0, 0
    for i, n in enumerate(sizes):
        if i > start and tokens + n > CPU_GROUP_TOKENS:
            groups.append(slice(start, i))
            start, tokens = i, 0
        tokens += n
    groups.append(slice(start, len(sizes)))
    return groups


# ---- heads -------------------------------------------------------------------------------


class BertPreTrainedModel(nn.Module):
    """What every head shares: weight initialisation (normal(0, initializer_range), untruncated,
    as BERT) and regional compilation of the encoder layers."""

    config: BertConfig
    layers_compiled: bool = False
    """Whether compile_layers ran: each BertLayer then calls its compiled graph."""

    def init_weights(self) -> None:
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def recompute_attention(self, on: bool = True) -> None:
        """Recompute the attention of CPU training steps in the backward pass instead of keeping
        it (less memory, more time; see `_per_sequence_attention`)."""
        for module in self.modules():
            if isinstance(module, SelfAttention):
                module.recompute = on

    def compile_layers(self) -> None:
        """torch.compile each BertLayer in place, with dynamic shapes so that any batch and
        sequence length reuses the graph. Regional compilation: the layers share one graph,
        compiled once, and parameter names stay as they are. Compiling twice does nothing."""
        if self.layers_compiled:
            return
        for module in self.modules():
            if isinstance(module, BertLayer):
                module.compile(dynamic=True)
        self.layers_compiled = True


class MaskedLMHead(nn.Module):
    """transform (dense, GELU, LayerNorm), then a decoder tied to the word embeddings, plus a bias."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = gelu_for(config.hidden_act)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x: Tensor, word_embeddings: Tensor) -> Tensor:
        """x: (..., H), word_embeddings: (V, H), the tied decoder weight -> (..., V)"""
        x = self.norm(self.act(self.dense(x)))
        return F.linear(x, word_embeddings, self.bias)


@dataclass
class PreTrainingOutput:
    mlm_logits: Tensor  # (B, P, V) at masked_lm_positions, or (B, T, V) without them
    nsp_logits: Tensor  # (B, 2)


class BertForPreTraining(BertPreTrainedModel):
    """Masked LM + next sentence prediction."""

    head = "pretraining"

    def __init__(self, config: BertConfig, unpad: bool = False):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooler=True, unpad=unpad)
        self.mlm = MaskedLMHead(config)
        self.nsp = nn.Linear(config.hidden_size, 2)
        self.init_weights()

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None,
                attention_mask: Tensor | None = None, masked_lm_positions: Tensor | None = None,
                *, seq_lengths: Sequence[int] | None = None) -> PreTrainingOutput:
        """input_ids, token_type_ids, attention_mask: (B, T); seq_lengths: see BertModel.
        masked_lm_positions: (B, P) token positions to predict; the MLM head runs on those only."""
        out = self.bert(input_ids, token_type_ids, attention_mask, seq_lengths=seq_lengths)
        seq = out.sequence_output
        if masked_lm_positions is not None:
            index = masked_lm_positions.unsqueeze(-1).expand(-1, -1, seq.shape[-1])
            seq = torch.gather(seq, 1, index)  # (B, P, H)
        mlm_logits = self.mlm(seq, self.bert.embeddings.word_embeddings.weight)
        return PreTrainingOutput(mlm_logits, self.nsp(out.pooled_output))


class BertForQuestionAnswering(BertPreTrainedModel):
    """Span extraction (SQuAD): a start and an end logit per token."""

    head = "qa"

    def __init__(self, config: BertConfig, unpad: bool = False):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooler=False, unpad=unpad)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.init_weights()

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None,
                attention_mask: Tensor | None = None, *,
                seq_lengths: Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
        """input_ids, token_type_ids, attention_mask: (B, T); seq_lengths: see BertModel.
        -> start_logits, end_logits: each (B, T)"""
        out = self.bert(input_ids, token_type_ids, attention_mask, seq_lengths=seq_lengths)
        logits = self.qa_outputs(out.sequence_output)  # (B, T, 2)
        start, end = logits.unbind(-1)
        return start, end


class BertForSequenceClassification(BertPreTrainedModel):
    """Classification (num_labels >= 2) or regression (num_labels == 1) on the pooled [CLS]."""

    head = "classification"

    def __init__(self, config: BertConfig, num_labels: int = 2, unpad: bool = False):
        super().__init__()
        self.config = config
        self.num_labels = num_labels
        self.bert = BertModel(config, add_pooler=True, unpad=unpad)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        self.init_weights()

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None,
                attention_mask: Tensor | None = None, *,
                seq_lengths: Sequence[int] | None = None) -> Tensor:
        """input_ids, token_type_ids, attention_mask: (B, T); seq_lengths: see BertModel.
        -> logits (B, num_labels)"""
        pooled = self.bert(input_ids, token_type_ids, attention_mask,
                           seq_lengths=seq_lengths).pooled_output
        return self.classifier(self.dropout(pooled))


class BertEncoderOnly(BertPreTrainedModel):
    """The bare encoder (with pooler) as a head-less model, for feature extraction and checkpoints
    that carry no head."""

    head = "base"

    def __init__(self, config: BertConfig, unpad: bool = False):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooler=True, unpad=unpad)
        self.init_weights()

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None,
                attention_mask: Tensor | None = None, *,
                seq_lengths: Sequence[int] | None = None) -> BertOutput:
        """input_ids, token_type_ids, attention_mask: (B, T); seq_lengths: see BertModel.
        -> sequence_output (B, T, H), pooled_output (B, H)"""
        return self.bert(input_ids, token_type_ids, attention_mask, seq_lengths=seq_lengths)


HEADS: dict[str, type[BertPreTrainedModel]] = {
    cls.head: cls for cls in
    (BertEncoderOnly, BertForPreTraining, BertForQuestionAnswering, BertForSequenceClassification)
}


def build_model(config: BertConfig, head: str, num_labels: int = 2, unpad: bool = False
                ) -> BertPreTrainedModel:
    """A freshly initialised model with the named head (see HEADS)."""
    cls = HEADS[head]
    if cls is BertForSequenceClassification:
        return cls(config, num_labels=num_labels, unpad=unpad)
    return cls(config, unpad=unpad)


def stacked_parts(model: nn.Module) -> dict[nn.Parameter, int]:
    """Parameters that hold several of the reference model's tensors stacked along dim 0 (the
    fused query/key/value projection: 3), with how many. Per-tensor rules of the references (LAMB's
    trust ratio) apply to each part."""
    parts = {}
    for module in model.modules():
        for name, k in getattr(type(module), "STACKED", {}).items():
            owner, _, attr = name.rpartition(".")
            param = getattr(module.get_submodule(owner), attr)
            parts[param] = k
    return parts


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_flops_per_token(config: BertConfig, seq_len: int, training: bool) -> float:
    """Matmul FLOPs per token of the encoder (PaLM-style accounting: 2 per MAC, x3 for training)."""
    H, L, I = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    per_layer = 2 * (3 * H * H + H * H + 2 * H * I) + 2 * 2 * seq_len * H
    return (3.0 if training else 1.0) * L * per_layer


__all__ = [
    "BertConfig", "BertModel", "BertForPreTraining", "BertForQuestionAnswering",
    "BertForSequenceClassification", "BertEncoderOnly", "HEADS", "build_model", "count_parameters",
    "model_flops_per_token", "Padded", "Unpadded",
]
