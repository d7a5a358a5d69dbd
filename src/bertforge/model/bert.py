"""BERT (Devlin et al., 2019), read from the smallest part up:
embeddings -> self-attention -> feed-forward -> layer -> encoder -> BertModel -> heads.

Single-device model code only: no data, optimizer or distributed logic here.

The layers run on padded hidden states (B, T, H) or on the real tokens only (N, H), the
"unpadded" layout of `BertModel(unpad=True)`; only attention needs to know which, and
`bertforge.model.attention` holds both layouts and the attention kernels.
Parameter names follow Google's / Hugging Face's so that checkpoint key maps stay short
(`bertforge.checkpoint.hf` holds the map); query, key and value are one fused projection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertforge.config import BertConfig
from bertforge.model.attention import Layout, Padded, Unpadded, attend, host_lengths


# ---- building blocks ---------------------------------------------------------------------


def gelu_for(name: str, inplace: bool = False):
    # BERT uses the exact (erf) GELU; "gelu_new" is the tanh approximation some checkpoints use.
    approximate = "none" if name == "gelu" else "tanh"
    if inplace:
        return lambda x: torch.ops.aten.gelu_(x, approximate=approximate)
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
    """Multi-head self-attention with a fused QKV projection (the output projection is the
    layer's `attention_output`)."""

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
        qkv = self.qkv(x).unflatten(-1, (3, self.num_heads, self.head_dim))  # (..., 3, nh, hd)
        return attend(qkv, layout, dropout_p, self.recompute).flatten(-2)  # (..., H)


class FeedForward(nn.Module):
    """Position-wise H -> 4H -> H with GELU."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.intermediate = nn.Linear(config.hidden_size, config.intermediate_size)
        self.output = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = gelu_for(config.hidden_act)
        self.act_ = gelu_for(config.hidden_act, inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """(..., H) -> (..., H)"""
        h = self.intermediate(x)  # (..., 4H)
        # Without autograd GELU overwrites the product: no second (..., 4H) buffer to fill.
        return self.output(self.act(h) if torch.is_grad_enabled() else self.act_(h))


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
        """x: (B, T, H) padded or (N, H) unpadded -> same shape."""
        x = self.attention_norm(x + self.dropout(self.attention_output(self.attention(x, layout))))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


class BertEncoder(nn.Module):
    """The stack of L layers."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.layers = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: Tensor, layout: Layout) -> Tensor:
        """x: (B, T, H) padded or (N, H) unpadded -> same shape."""
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
        data loader knows them): with it the unpadded path never waits for the device.
        -> sequence_output (B, T, H), pooled_output (B, H) or None"""
        B, T = input_ids.shape
        if seq_lengths is not None:
            seq_lengths = host_lengths(seq_lengths, attention_mask, B, T)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        encode = self._encode_in_groups if _encodes_in_groups(input_ids) else self._encode
        x = encode(input_ids, token_type_ids, attention_mask, seq_lengths)  # (B, T, H)
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

    def _encode_in_groups(self, input_ids: Tensor, token_type_ids: Tensor,
                          attention_mask: Tensor | None, seq_lengths: list[int] | None) -> Tensor:
        """_encode, one group of consecutive sequences at a time (see CPU_GROUP_TOKENS)."""
        B, T = input_ids.shape
        if self.unpad and attention_mask is not None and seq_lengths is None:
            seq_lengths = attention_mask.sum(dim=1).tolist()  # a CPU tensor: nothing to wait for
        groups = _cpu_inference_groups(seq_lengths if self.unpad and seq_lengths is not None
                                       else [T] * B)
        if len(groups) == 1:
            return self._encode(input_ids, token_type_ids, attention_mask, seq_lengths)
        return torch.cat([self._encode(input_ids[g], token_type_ids[g],
                                       None if attention_mask is None else attention_mask[g],
                                       None if seq_lengths is None else seq_lengths[g])
                          for g in groups])


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
    """What every head shares: the encoder `bert`, weight initialisation (normal(0,
    initializer_range), untruncated, as BERT) and regional compilation of the encoder layers.
    A head builds its own layers after this __init__, then calls init_weights."""

    head: str
    """The head's name (`bertforge.model.heads.HEADS` describes each)."""
    layers_compiled: bool = False
    """Whether compile_layers ran: each BertLayer then calls its compiled graph."""

    def __init__(self, config: BertConfig, add_pooler: bool, unpad: bool):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooler=add_pooler, unpad=unpad)

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
        it (less memory, more time; see `attention._per_sequence_attention`)."""
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
        super().__init__(config, add_pooler=True, unpad=unpad)
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
        super().__init__(config, add_pooler=False, unpad=unpad)
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
        super().__init__(config, add_pooler=True, unpad=unpad)
        self.num_labels = num_labels
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
        super().__init__(config, add_pooler=True, unpad=unpad)
        self.init_weights()

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None,
                attention_mask: Tensor | None = None, *,
                seq_lengths: Sequence[int] | None = None) -> BertOutput:
        """input_ids, token_type_ids, attention_mask: (B, T); seq_lengths: see BertModel.
        -> sequence_output (B, T, H), pooled_output (B, H)"""
        return self.bert(input_ids, token_type_ids, attention_mask, seq_lengths=seq_lengths)


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
    "BertForSequenceClassification", "BertEncoderOnly", "BertPreTrainedModel", "count_parameters",
    "model_flops_per_token", "stacked_parts", "Padded", "Unpadded",
]
