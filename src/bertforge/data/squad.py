"""SQuAD v1.1 for BERT: reading the JSON file, building windowed features, turning logits
back into answer text.

Faithful to Google's `run_squad.py` (BERT repository): `read_squad_examples`,
`convert_examples_to_features` (with `_improve_answer_span` and `_check_is_max_context`),
and `write_predictions` / `get_final_text` without the SQuAD 2.0 (null answer) branch.
Where this module differs from it, the difference is about robustness, never about results:

- bad input does not crash a long run: whole-file problems raise `DataError`; one bad question
  becomes a `Problem` record and is skipped (Google logs "Could not find answer" and skips);
- training questions may carry several answers (the first one is the label), so the dev file
  can be split into train and eval parts;
- an example with no valid span predicts "" (Google writes the placeholder text "empty").

Features are stored as arrays, with per-context data (sub-tokens and their map back to
whitespace words) shared by every question about that context.
"""

from __future__ import annotations

import logging
import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
from tqdm.auto import tqdm

from bertforge.errors import ConfigError, DataError
from bertforge.fileio import atomic_write_json, read_json
from bertforge.tokenization import WordPieceTokenizer

logger = logging.getLogger(__name__)

# Google's reader splits words on these characters only (not on every Unicode space).
_WORD = re.compile("[^ \t\r\n\u202f]+")


class Answer(TypedDict):
    text: str
    answer_start: int


@dataclass
class SquadExample:
    """One question about one context.

    `doc_tokens` are the context's whitespace-separated words; `char_to_word_offset[c]` is the
    word that character c belongs to (for whitespace: the word before it, -1 at the start).
    Both are shared by every question about the same paragraph. `start_position` and
    `end_position` are word indices of the first answer, or None when it cannot be located.
    """

    qas_id: str
    question_text: str
    context_text: str
    doc_tokens: list[str]
    char_to_word_offset: np.ndarray
    answers: list[Answer]
    start_position: int | None = None
    end_position: int | None = None


@dataclass(frozen=True)
class Problem:
    """A question that was skipped, and why."""

    qas_id: str
    message: str


# ---- reading ------------------------------------------------------------------------------


def load_json(path: str | Path, what: str = "JSON file") -> Any:
    """Parse a JSON file; a missing or malformed file raises DataError with line and column."""
    return read_json(path, what, DataError)


def split_whitespace(text: str) -> tuple[list[str], np.ndarray]:
    """Google's `read_squad_examples` word split: the words, and char_to_word_offset
    (int32, one entry per character of `text`)."""
    matches = list(_WORD.finditer(text))
    words = [m.group() for m in matches]
    starts = np.fromiter((m.start() for m in matches), dtype=np.int64, count=len(matches))
    # Every character belongs to the last word that started at or before it.
    offsets = np.searchsorted(starts, np.arange(len(text)), side="right") - 1
    return words, offsets.astype(np.int32)


def read_squad_examples(path: str | Path, is_training: bool, articles: slice | None = None
                        ) -> tuple[list[SquadExample], list[Problem]]:
    """Read a SQuAD v1.1 file into examples, plus the questions skipped as problems.

    With `is_training`, a question whose first answer cannot be found in the context at its
    `answer_start` (Google's "Could not find answer") or that has no answer is skipped. Without
    it every question is kept and positions are filled only where the first answer is found.
    Either way, questions about an empty context and repeated question ids are skipped.
    `articles` keeps only those entries of the file's 'data' list (e.g. slice(0, 38)).
    """
    path = Path(path)
    data = load_json(path, "SQuAD file")
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataError(f"{path}: expected a JSON object with a 'data' list (the SQuAD format)")
    examples: list[SquadExample] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for a in range(len(data["data"]))[articles or slice(None)]:
        article = data["data"][a]
        for p, paragraph in enumerate(_field(article, "paragraphs", list, path, f"data[{a}]")):
            where = f"data[{a}].paragraphs[{p}]"
            context = _field(paragraph, "context", str, path, where)
            doc_tokens, char_to_word = split_whitespace(context)
            for q, qa in enumerate(_field(paragraph, "qas", list, path, where)):
                example, problem = _read_question(
                    qa, context, doc_tokens, char_to_word, is_training, path, f"{where}.qas[{q}]")
                if problem is None and example.qas_id in seen:
                    problem = Problem(example.qas_id, "question id repeats an earlier question's id")
                if problem is not None:
                    problems.append(problem)
                    logger.debug("skipping question %s: %s", problem.qas_id, problem.message)
                    continue
                seen.add(example.qas_id)
                examples.append(example)
    if problems:
        logger.info("%s: skipped %d of %d questions (first: %s: %s)", path, len(problems),
                       len(problems) + len(examples), problems[0].qas_id, problems[0].message)
    return examples, problems


def _field(obj: Any, key: str, kind: type, path: Path, where: str) -> Any:
    if not isinstance(obj, dict):
        raise DataError(f"{path}: {where} must be a JSON object, got {type(obj).__name__}")
    if key not in obj:
        raise DataError(f"{path}: {where} has no '{key}'")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(f"{path}: {where}.{key} must be {_JSON_NAMES[kind]}, "
                        f"got {type(value).__name__}")
    return value


_JSON_NAMES = {list: "a list", str: "a string", int: "an integer"}


def _read_question(qa: Any, context: str, doc_tokens: list[str], char_to_word: np.ndarray,
                   is_training: bool, path: Path, where: str
                   ) -> tuple[SquadExample, Problem | None]:
    qas_id = _field(qa, "id", str, path, where)
    question = _field(qa, "question", str, path, where)
    answers: list[Answer] = []
    # Files to predict on may come without answers; training needs them.
    needs_answers = is_training or "answers" in qa
    raw_answers = _field(qa, "answers", list, path, where) if needs_answers else []
    for i, answer in enumerate(raw_answers):
        text = _field(answer, "text", str, path, f"{where}.answers[{i}]")
        start = _field(answer, "answer_start", int, path, f"{where}.answers[{i}]")
        answers.append(Answer(text=text, answer_start=start))
    example = SquadExample(qas_id, question, context, doc_tokens, char_to_word, answers)
    if not doc_tokens:
        return example, Problem(qas_id, "context is empty")
    if not answers:
        return example, Problem(qas_id, "has no answer") if is_training else None
    located = _locate_answer(answers[0], context, doc_tokens, char_to_word)
    if isinstance(located, str):
        return example, Problem(qas_id, located) if is_training else None
    example.start_position, example.end_position = located
    return example, None


def _locate_answer(answer: Answer, context: str, doc_tokens: list[str],
                   char_to_word: np.ndarray) -> tuple[int, int] | str:
    """Word span of an answer, or what is wrong with it. Google's check: the answer text
    (whitespace-normalised) must occur in the words its characters fall into."""
    text, start = answer["text"], answer["answer_start"]
    if not text.strip():
        return "first answer's text is empty"
    end = start + len(text) - 1
    if start < 0 or end >= len(context):
        return (f"first answer {text!r} at answer_start {start} runs outside the context "
                f"({len(context)} characters)")
    start_word, end_word = int(char_to_word[start]), int(char_to_word[end])
    actual = " ".join(doc_tokens[max(start_word, 0):end_word + 1])
    if start_word < 0 or actual.find(" ".join(text.split())) == -1:
        return (f"could not find first answer {text!r} at answer_start {start}: "
                f"the context there reads {actual!r}")
    return start_word, end_word


# ---- features -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ContextTokens:
    """WordPiece sub-tokens of one context, shared by all its questions (all int32 arrays).

    `ids[k]` is sub-token k, `tok_to_orig_index[k]` the whitespace word it came from, and
    `orig_to_tok_index[w]` the first sub-token of word w (Google's names).
    """

    ids: np.ndarray
    tok_to_orig_index: np.ndarray
    orig_to_tok_index: np.ndarray


@dataclass
class SquadFeatures:
    """Model inputs and postprocessing metadata for N windows ("features") of max_seq_length T.

    A window is `[CLS] question [SEP] context[doc_span_start : doc_span_start+doc_span_length]
    [SEP]` padded with 0; its context tokens start at position `doc_offset`.
    `start_positions`/`end_positions` are the gold answer's token positions, 0 ([CLS]) when the
    window does not hold the answer or the example has none. `token_is_max_context[n, t]` marks
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
    not hold the answer point at [CLS] (0), as do all windows of an example without one, which
    `is_training` forbids (read training files with `read_squad_examples(is_training=True)`).
    An example whose context has no sub-tokens at all gets no window (and later predicts "").
    """
    if is_training:
        unlocated = [e.qas_id for e in examples if e.start_position is None]
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


# ---- postprocessing -----------------------------------------------------------------------


def postprocess(examples: Sequence[SquadExample], features: SquadFeatures,
                start_logits: np.ndarray, end_logits: np.ndarray, n_best_size: int = 20,
                max_answer_length: int = 30, do_lower_case: bool | None = None,
                progress: bool = True) -> tuple[dict[str, str], dict[str, list[dict[str, Any]]]]:
    """Google's `write_predictions` (SQuAD v1.1): best answer text and n-best list per question.

    start_logits, end_logits: (N, T), row n belonging to features[n]. A span is a candidate
    when its start is among the window's n_best_size best start logits and its end among the
    best end logits, both lie in the context part, the start token has max context in this
    window, start <= end, and it spans at most max_answer_length tokens. Candidates of all an
    example's windows are ranked by start + end logit; the first n_best_size distinct texts
    (mapped back to the original context by `get_final_text`) make the n-best list, with
    softmax probabilities. `do_lower_case` defaults to the tokenizer setting the features were
    built with. Every example gets a prediction: "" when it has no candidate.
    """
    start_logits = np.asarray(start_logits, dtype=np.float64)
    end_logits = np.asarray(end_logits, dtype=np.float64)
    expected = (len(features), features.max_seq_length)
    if start_logits.shape != expected or end_logits.shape != expected:
        raise ValueError(f"logits must have shape {expected} (features, max_seq_length), got "
                         f"{start_logits.shape} and {end_logits.shape}")
    lower = features.do_lower_case if do_lower_case is None else do_lower_case
    feature, start, end, score = _candidates(features, start_logits, end_logits, n_best_size,
                                             max_answer_length)
    example_of = features.example_index[feature]
    # By example; within one, by score (stable, so ties keep Google's candidate order).
    order = np.lexsort((-score, example_of))
    bounds = np.searchsorted(example_of[order], np.arange(len(examples) + 1))
    predictions: dict[str, str] = {}
    nbest_all: dict[str, list[dict[str, Any]]] = {}
    for i, example in enumerate(tqdm(examples, desc="SQuAD answers", disable=not progress)):
        chosen = order[bounds[i]:bounds[i + 1]]
        nbest = _nbest(example, features, feature[chosen], start[chosen], end[chosen],
                       start_logits, end_logits, n_best_size, lower)
        predictions[example.qas_id] = nbest[0]["text"]
        nbest_all[example.qas_id] = nbest
    return predictions, nbest_all


def _candidates(features: SquadFeatures, start_logits: np.ndarray, end_logits: np.ndarray,
                n_best_size: int, max_answer_length: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All valid (feature, start, end) spans and their scores, in Google's order: by feature,
    then start-logit rank, then end-logit rank."""
    k = min(n_best_size, features.max_seq_length)
    # Google sorts with Python's stable sort: equal logits keep the lower position first.
    starts = np.argsort(-start_logits, axis=1, kind="stable")[:, :k]  # (N, k)
    ends = np.argsort(-end_logits, axis=1, kind="stable")[:, :k]      # (N, k)
    lo = features.doc_offset[:, None].astype(np.int64)
    hi = lo + features.doc_span_length[:, None]
    rows = np.arange(len(features))[:, None]
    start_ok = (starts >= lo) & (starts < hi) & features.token_is_max_context[rows, starts]
    end_ok = (ends >= lo) & (ends < hi)
    s, e = starts[:, :, None], ends[:, None, :]                         # (N, k, 1), (N, 1, k)
    valid = (start_ok[:, :, None] & end_ok[:, None, :] & (e >= s)
             & (e - s + 1 <= max_answer_length))                        # (N, k, k)
    n, i, j = np.nonzero(valid)
    start, end = starts[n, i], ends[n, j]
    return n, start, end, start_logits[n, start] + end_logits[n, end]


def _nbest(example: SquadExample, features: SquadFeatures, feature: np.ndarray,
           start: np.ndarray, end: np.ndarray, start_logits: np.ndarray, end_logits: np.ndarray,
           n_best_size: int, do_lower_case: bool) -> list[dict[str, Any]]:
    """The first n_best_size distinct answer texts of an example's ranked candidates."""
    entries: list[tuple[str, float, float]] = []
    seen: set[str] = set()
    for f, s, e in zip(feature.tolist(), start.tolist(), end.tolist()):
        if len(entries) >= n_best_size:
            break
        text = _span_text(example, features, f, s, e, do_lower_case)
        if text in seen:
            continue
        seen.add(text)
        entries.append((text, float(start_logits[f, s]), float(end_logits[f, e])))
    if not entries:
        entries.append(("", 0.0, 0.0))
    probs = _softmax([s + e for _, s, e in entries])
    return [{"text": t, "probability": p, "start_logit": s, "end_logit": e}
            for (t, s, e), p in zip(entries, probs)]


def _span_text(example: SquadExample, features: SquadFeatures, f: int, start: int, end: int,
               do_lower_case: bool) -> str:
    """Original context text of the tokens start..end of window f."""
    ids = features.input_ids[f, start:end + 1].tolist()
    pieces = " ".join(map(features.id_to_token.__getitem__, ids))
    # Undo WordPiece's split-offs, then normalise whitespace (Google's order of steps).
    tok_text = " ".join(pieces.replace(" ##", "").replace("##", "").strip().split())
    first, last = features.token_to_orig(f, start), features.token_to_orig(f, end)
    orig_text = " ".join(example.doc_tokens[first:last + 1])
    return get_final_text(tok_text, orig_text, do_lower_case)


def _softmax(scores: list[float]) -> list[float]:
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    return [x / total for x in exps]


# Google's BasicTokenizer (tokenization.py), re-implemented for `get_final_text`: the
# `tokenizers` normalizer lower-cases a final capital sigma to "σ" where Python's str.lower()
# (and so Google, and the WordPiece tokens) give "ς", which would break the alignment.
_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
               (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _is_cjk(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def _is_punctuation(c: str) -> bool:
    # Google counts all non-alphanumeric ASCII as punctuation, e.g. "^", "$", "`".
    cp = ord(c)
    return (33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126
            or unicodedata.category(c).startswith("P"))


def _clean_char(c: str) -> str:
    """Google's `_clean_text` and `_tokenize_chinese_chars` for one character."""
    if " " < c < "\x7f":  # printable ASCII other than space: kept as is
        return c
    cp = ord(c)
    if cp == 0 or cp == 0xFFFD or (c not in "\t\n\r" and unicodedata.category(c) in ("Cc", "Cf")):
        return ""
    if c in " \t\n\r" or unicodedata.category(c) == "Zs":
        return " "
    return f" {c} " if _is_cjk(cp) else c


def _split_on_punctuation(token: str) -> list[str]:
    pieces: list[str] = []
    start_new = True
    for c in token:
        if _is_punctuation(c):
            pieces.append(c)
            start_new = True
        else:
            if start_new:
                pieces.append("")
            pieces[-1] += c
            start_new = False
    return pieces


@lru_cache(maxsize=1 << 18)
def _basic_tokenize_word(word: str, do_lower_case: bool) -> tuple[str, ...]:
    tokens: list[str] = []
    for token in "".join(map(_clean_char, word)).split():
        if do_lower_case:
            token = unicodedata.normalize("NFD", token.lower())
            token = "".join(c for c in token if unicodedata.category(c) != "Mn")
        tokens.extend(_split_on_punctuation(token))
    return tuple(" ".join(tokens).split())


def basic_tokenize(text: str, do_lower_case: bool) -> list[str]:
    """Google's `BasicTokenizer(do_lower_case).tokenize(text)`: cleaned, CJK characters and
    punctuation split out, lower-cased and accent-stripped when uncased.

    Every step of it acts on single characters or on whitespace-separated words, so the text
    is tokenized word by word, with a cache: answer spans reuse the same context words.
    """
    return [token for word in text.split(" ")
            for token in _basic_tokenize_word(word, do_lower_case)]


def get_final_text(pred_text: str, orig_text: str, do_lower_case: bool) -> str:
    """Google's `get_final_text`: the part of `orig_text` that the normalised `pred_text`
    came from (e.g. "Steve Smith" for pred "steve smith" in "Steve Smith's").

    Characters of the basic-tokenized original and of the original are aligned one to one
    after removing spaces; when that is impossible, the whole `orig_text` is returned.
    """
    tok_text = " ".join(basic_tokenize(orig_text, do_lower_case))
    start = tok_text.find(pred_text)
    end = start + len(pred_text) - 1
    if start == -1 or end < start or " " in (tok_text[start], tok_text[end]):
        return orig_text
    if len(orig_text) - orig_text.count(" ") != len(tok_text) - tok_text.count(" "):
        return orig_text
    # Position among non-space characters = position - spaces before it.
    ns_start = start - tok_text.count(" ", 0, start)
    ns_end = end - tok_text.count(" ", 0, end)
    return orig_text[_non_space_position(orig_text, ns_start):
                     _non_space_position(orig_text, ns_end) + 1]


def _non_space_position(text: str, k: int) -> int:
    """Index in `text` of its k-th (from 0) character that is not a space."""
    position = 0
    for piece in text.split(" "):
        if k < len(piece):
            return position + k
        k -= len(piece)
        position += len(piece) + 1
    raise IndexError(f"{text!r} has fewer than {k + 1} non-space characters")


def write_predictions(out_dir: str | Path, predictions: dict[str, str],
                      nbest: dict[str, list[dict[str, Any]]]) -> tuple[Path, Path]:
    """Write predictions.json (id -> text) and nbest_predictions.json, each atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "predictions.json", out / "nbest_predictions.json"
    for path, content in zip(paths, (predictions, nbest)):
        # A crash mid-write must not leave a truncated file that looks like a result.
        atomic_write_json(path, content, indent=4)
    return paths
