"""SQuAD features: Google's `convert_examples_to_features`, as arrays.

Each question becomes one or more windows ("features") `[CLS] question [SEP] context-part
[SEP]` that slide over the WordPiece context with `doc_stride`, with the gold span's token
positions (Google's `_improve_answer_span`) and, per context token, whether this window gives
it the most context (`_check_is_max_context`). Per-context data (sub-tokens and their map back
to whitespace words) is computed once and shared by every question about that context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from bertforge.data.squad.examples import SquadExample
from bertforge.errors import ConfigError
from bertforge.tokenization import WordPieceTokenizer

@dataclass(frozen=True)
class ContextTokens:
    """WordPiece sub-tokens of one context, shared by all its questions (Google's names)."""

    ids: np.ndarray
    """(K,) int32: the context's sub-token ids."""
    tok_to_orig_index: np.ndarray
    """(K,) int32: the whitespace word each sub-token came from."""
    orig_to_tok_index: np.ndarray
    """(words,) int32: the first sub-token of each whitespace word."""


@dataclass
class SquadFeatures:
    """Model inputs and postprocessing metadata for N windows ("features") of max_seq_length T.

    A window is `[CLS] question [SEP] context[doc_span_start : doc_span_start+doc_span_length]
    [SEP]` padded with 0; its context tokens start at position `doc_offset`.
    `start_positions`/`end_positions` are the gold answer's token positions, 0 ([CLS]: the null
    span) when the window does not hold the answer or the example has none (SQuAD v2.0's
    unanswerable questions). `token_is_max_context[n, t]` marks
    context tokens for which window n has the most context on both sides (Google's
    `_check_is_max_context`): each context token is max-context in exactly one window.
    Model inputs are compact (int32 ids, int8 masks); `batch()` gives int64 copies.
    """

    input_ids: np.ndarray             # (N, T) int32
    token_type_ids: np.ndarray        # (N, T) int8
    attention_mask: np.ndarray        # (N, T) int8
    start_positions: np.ndarray       # (N,) int64
    end_positions: np.ndarray         # (N,) int64
    example_index: np.ndarray         # (N,) int64, into the examples list
    context_index: np.ndarray         # (N,) int32, into `contexts`
    doc_span_index: np.ndarray        # (N,) int32, window number within its example
    doc_span_start: np.ndarray        # (N,) int32, first context sub-token of the window
    doc_span_length: np.ndarray       # (N,) int32
    doc_offset: np.ndarray            # (N,) int32, = len(question tokens) + 2
    token_is_max_context: np.ndarray  # (N, T) bool
    contexts: list[ContextTokens]
    id_to_token: dict[int, str] = field(repr=False)
    do_lower_case: bool = True

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def max_seq_length(self) -> int:
        return self.input_ids.shape[1]

    def subset(self, indices: Sequence[int] | np.ndarray | slice) -> SquadFeatures:
        """The features at `indices`, in that order (shares the per-context data)."""
        if isinstance(indices, slice):
            indices = np.arange(len(self))[indices]
        idx = np.asarray(indices, dtype=np.int64)
        arrays = {name: getattr(self, name)[idx] for name in _PER_FEATURE}
        return SquadFeatures(**arrays, contexts=self.contexts, id_to_token=self.id_to_token,
                             do_lower_case=self.do_lower_case)

    def shard(self, rank: int, world_size: int) -> SquadFeatures:
        """Features rank, rank + world_size, ... (one process's share in distributed runs)."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        return self.subset(slice(rank, None, world_size))

    def batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """Model inputs and labels of some features as int64 arrays ((B, T) and (B,))."""
        idx = np.asarray(indices, dtype=np.int64)
        return {name: getattr(self, name)[idx].astype(np.int64)
                for name in ("input_ids", "token_type_ids", "attention_mask",
                             "start_positions", "end_positions")}

    def token_to_orig(self, n: int, position: int) -> int:
        """Whitespace word of the context token at `position` of window n (Google's
        `token_to_orig_map[position]`); the position must be in the window's context part."""
        k = self.doc_span_start[n] + position - self.doc_offset[n]
        return int(self.contexts[self.context_index[n]].tok_to_orig_index[k])

    def token_to_orig_map(self, n: int) -> dict[int, int]:
        """Google's `token_to_orig_map` of window n: position -> whitespace word index."""
        first = int(self.doc_offset[n])
        return {p: self.token_to_orig(n, p)
                for p in range(first, first + int(self.doc_span_length[n]))}

    def tokens(self, n: int) -> list[str]:
        """Google's `tokens` of window n (without padding)."""
        length = int(self.attention_mask[n].sum())
        return [self.id_to_token[int(i)] for i in self.input_ids[n, :length]]


def model_arrays(features: SquadFeatures, with_labels: bool) -> dict[str, np.ndarray]:
    """The compact arrays the model reads (and, `with_labels`, the gold positions) by name, for
    batching: (N, T) inputs, (N,) positions."""
    arrays = {"input_ids": features.input_ids, "token_type_ids": features.token_type_ids,
              "attention_mask": features.attention_mask}
    if with_labels:
        arrays["start_positions"] = features.start_positions
        arrays["end_positions"] = features.end_positions
    return arrays


_PER_FEATURE = ("input_ids", "token_type_ids", "attention_mask", "start_positions",
                "end_positions", "example_index", "context_index", "doc_span_index",
                "doc_span_start", "doc_span_length", "doc_offset", "token_is_max_context")


@dataclass(frozen=True)
class _Window:
    example: int
    context: int
    span_index: int
    start: int
    length: int
    query_length: int
    start_position: int
    end_position: int


def convert_examples_to_features(examples: Sequence[SquadExample], tokenizer: WordPieceTokenizer,
                                 max_seq_length: int = 384, doc_stride: int = 128,
                                 max_query_length: int = 64, is_training: bool = False,
                                 progress: bool = True) -> SquadFeatures:
    """Google's `convert_examples_to_features`: sliding windows over the WordPiece context.

    Gold positions are computed for every example that has `start_position`; windows that do
    not hold the answer point at [CLS] (0), as do all windows of an example without one.
    `is_training` forbids that, except for SQuAD v2.0 `is_impossible` examples, whose label in
    every window is the null span at [CLS] (read training files with
    `read_squad_examples(is_training=True)`). An example whose context has no sub-tokens at all
    gets no window (and later predicts "").
    """
    if is_training:
        unlocated = [e.qas_id for e in examples if e.start_position is None and not e.is_impossible]
        if unlocated:
            raise ValueError(f"{len(unlocated)} training example(s) have no answer position "
                             f"(first: {unlocated[0]}); read them with is_training=True")
    if max_seq_length - max_query_length - 3 < 1:
        raise ConfigError(f"max_seq_length ({max_seq_length}) must exceed max_query_length "
                          f"({max_query_length}) + 3 to leave room for the context")
    if doc_stride < 1:
        raise ConfigError(f"doc_stride must be positive, got {doc_stride}")
    contexts, context_of = _tokenize_contexts(examples, tokenizer)
    queries = [ids[:max_query_length]
               for ids in tokenizer.ids_batch([e.question_text for e in examples])]
    answer_tokens = _answer_tokens(examples, tokenizer)
    max_context: dict[tuple[int, int], tuple[list[tuple[int, int]], np.ndarray]] = {}
    windows: list[_Window] = []
    for i, example in enumerate(tqdm(examples, desc="SQuAD features", disable=not progress)):
        ctx = contexts[context_of[i]]
        query_length = len(queries[i])
        key = (context_of[i], query_length)
        if key not in max_context:
            spans = _doc_spans(len(ctx.ids), max_seq_length - query_length - 3, doc_stride)
            max_context[key] = (spans, _max_context_span(spans, len(ctx.ids)))
        spans = max_context[key][0]
        answer = None
        if example.start_position is not None and spans:
            answer = _answer_token_span(example, ctx, answer_tokens[i], tokenizer.inv_vocab)
        for k, (start, length) in enumerate(spans):
            start_position = end_position = 0
            if answer is not None and start <= answer[0] and answer[1] <= start + length - 1:
                start_position = answer[0] - start + query_length + 2
                end_position = answer[1] - start + query_length + 2
            windows.append(_Window(i, context_of[i], k, start, length, query_length,
                                   start_position, end_position))
    return _assemble(windows, contexts, queries, max_context, tokenizer, max_seq_length)


def _tokenize_contexts(examples: Sequence[SquadExample], tokenizer: WordPieceTokenizer
                       ) -> tuple[list[ContextTokens], list[int]]:
    """Sub-tokens of each distinct context, and each example's context number.

    As Google, every whitespace word is tokenized on its own; words repeat a lot across
    contexts, so each distinct word is tokenized once.
    """
    index: dict[str, int] = {}
    context_of: list[int] = []
    distinct: list[SquadExample] = []
    for example in examples:
        if example.context_text not in index:
            index[example.context_text] = len(distinct)
            distinct.append(example)
        context_of.append(index[example.context_text])
    words = list(dict.fromkeys(w for e in distinct for w in e.doc_tokens))
    word_ids = dict(zip(words, tokenizer.ids_batch(words)))
    contexts = []
    for example in distinct:
        pieces = [word_ids[w] for w in example.doc_tokens]
        counts = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
        ids = np.fromiter((t for p in pieces for t in p), dtype=np.int32, count=int(counts.sum()))
        contexts.append(ContextTokens(
            ids=ids,
            tok_to_orig_index=np.repeat(np.arange(len(pieces), dtype=np.int32), counts),
            orig_to_tok_index=(np.cumsum(counts) - counts).astype(np.int32)))
    return contexts, context_of


def _answer_tokens(examples: Sequence[SquadExample], tokenizer: WordPieceTokenizer
                   ) -> list[str | None]:
    """Google's `tok_answer_text` (the first answer's tokens, space-joined) per example."""
    located = [i for i, e in enumerate(examples) if e.start_position is not None]
    tokens = tokenizer.tokenize_batch([examples[i].answers[0]["text"] for i in located])
    out: list[str | None] = [None] * len(examples)
    for i, toks in zip(located, tokens):
        out[i] = " ".join(toks)
    return out


def _answer_token_span(example: SquadExample, ctx: ContextTokens, tok_answer_text: str | None,
                       id_to_token: dict[int, str]) -> tuple[int, int]:
    """Sub-token span of the first answer (Google's tok_start/end_position after
    `_improve_answer_span`)."""
    assert example.start_position is not None and example.end_position is not None
    start = int(ctx.orig_to_tok_index[example.start_position])
    if example.end_position < len(example.doc_tokens) - 1:
        end = int(ctx.orig_to_tok_index[example.end_position + 1]) - 1
    else:
        end = len(ctx.ids) - 1
    return _improve_answer_span(
        [id_to_token[int(t)] for t in ctx.ids[start:end + 1]], start, end, tok_answer_text or "")


def _improve_answer_span(span_tokens: list[str], input_start: int, input_end: int,
                         tok_answer_text: str) -> tuple[int, int]:
    """Google's `_improve_answer_span`: the shortest-first sub-span of the word-level answer
    span whose tokens equal the tokenized answer text (e.g. "1895" inside "(1895-1943)."),
    else the word-level span. `span_tokens` are the tokens input_start..input_end."""
    for new_start in range(input_start, input_end + 1):
        for new_end in range(input_end, new_start - 1, -1):
            text = " ".join(span_tokens[new_start - input_start:new_end - input_start + 1])
            if text == tok_answer_text:
                return new_start, new_end
    return input_start, input_end


def _doc_spans(num_tokens: int, max_tokens_for_doc: int, doc_stride: int
               ) -> list[tuple[int, int]]:
    """Google's sliding windows as (start, length) over `num_tokens` context sub-tokens."""
    spans = []
    start = 0
    while start < num_tokens:
        length = min(num_tokens - start, max_tokens_for_doc)
        spans.append((start, length))
        if start + length == num_tokens:
            break
        start += min(length, doc_stride)
    return spans


def _max_context_span(spans: list[tuple[int, int]], num_tokens: int) -> np.ndarray:
    """For each context sub-token, the window where it has maximum context (num_tokens,).

    Google's `_check_is_max_context` score min(left, right) + 0.01 * length, with the first
    window winning ties, computed for all tokens at once.
    """
    best = np.full(num_tokens, -1, dtype=np.int32)
    best_score = np.full(num_tokens, -np.inf)
    for k, (start, length) in enumerate(spans):
        pos = np.arange(start, start + length)
        score = np.minimum(pos - start, start + length - 1 - pos) + 0.01 * length
        better = score > best_score[start:start + length]
        best_score[start:start + length][better] = score[better]
        best[start:start + length][better] = k
    return best


def _assemble(windows: list[_Window], contexts: list[ContextTokens], queries: list[list[int]],
              max_context: dict[tuple[int, int], tuple[list[tuple[int, int]], np.ndarray]],
              tokenizer: WordPieceTokenizer, max_seq_length: int) -> SquadFeatures:
    """Pack windows into padded (N, T) arrays."""
    n = len(windows)
    meta = {name: np.fromiter((getattr(w, attr) for w in windows), dtype=dtype, count=n)
            for name, attr, dtype in (
                ("example_index", "example", np.int64), ("context_index", "context", np.int32),
                ("doc_span_index", "span_index", np.int32), ("doc_span_start", "start", np.int32),
                ("doc_span_length", "length", np.int32),
                ("start_positions", "start_position", np.int64),
                ("end_positions", "end_position", np.int64))}
    doc_offset = np.fromiter((w.query_length + 2 for w in windows), dtype=np.int32, count=n)
    input_ids = np.zeros((n, max_seq_length), dtype=np.int32)
    is_max = np.zeros((n, max_seq_length), dtype=bool)
    for row, w in enumerate(windows):
        q, first = w.query_length, w.query_length + 2
        input_ids[row, 0] = tokenizer.cls_id
        input_ids[row, 1:q + 1] = queries[w.example]
        input_ids[row, q + 1] = tokenizer.sep_id
        input_ids[row, first:first + w.length] = contexts[w.context].ids[w.start:w.start + w.length]
        input_ids[row, first + w.length] = tokenizer.sep_id
        best = max_context[(w.context, q)][1]
        is_max[row, first:first + w.length] = best[w.start:w.start + w.length] == w.span_index
    positions = np.arange(max_seq_length)[None, :]
    seq_end = (doc_offset + meta["doc_span_length"] + 1)[:, None]  # one past the last [SEP]
    return SquadFeatures(
        input_ids=input_ids,
        token_type_ids=((positions >= doc_offset[:, None]) & (positions < seq_end)).astype(np.int8),
        attention_mask=(positions < seq_end).astype(np.int8),
        doc_offset=doc_offset,
        token_is_max_context=is_max,
        contexts=contexts,
        id_to_token=tokenizer.inv_vocab,
        do_lower_case=tokenizer.do_lower_case,
        **meta)
