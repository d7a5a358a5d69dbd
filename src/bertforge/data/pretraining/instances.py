"""Instances of one chunk (runs in a worker): sentences, WordPiece ids, and Google's pairing.

`create_chunk_instances` splits each document into sentences (sentencex), tokenizes them, cuts
any sentence longer than an instance into pieces, and builds `[CLS] A [SEP] B [SEP]` pairs as
Google's `create_instances_from_document` does, random draw for random draw (masks are drawn
when training reads the data, so the draws of Google's masking are not made here). As Google's,
a chunk of one sentence always pairs with a random next segment, so short documents give more
than half random pairs (about 64% on Wikipedia lead sections). docs/pretraining_data.md records
the choices and measurements.
"""

from __future__ import annotations

import functools
import importlib.metadata
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from bertforge.data.pretraining.chunks import Chunk
from bertforge.optional import require
from bertforge.tokenization import WordPieceTokenizer

# Google tries this many times to draw a random document other than the current one.
_RANDOM_DOC_TRIES = 10


@dataclass(frozen=True)
class CreateSettings:
    """What a worker needs besides the chunk (small: it is pickled with every task)."""

    vocab_file: str
    do_lower_case: bool
    max_seq_length: int
    short_seq_prob: float
    dupe_factor: int
    random_seed: int
    language: str
    token_dtype: str


@dataclass
class ChunkResult:
    """The instances of one chunk, packed: `tokens` back to back, one entry per instance in
    `lengths`, `b_starts`, `random_next`, `doc_ids`."""

    split: str
    index: int
    tokens: np.ndarray
    lengths: np.ndarray
    b_starts: np.ndarray
    random_next: np.ndarray
    doc_ids: np.ndarray
    docs: int
    """Documents with at least one token."""
    source_tokens: int
    """WordPiece tokens of those documents."""
    used_tokens: int
    """Source tokens that made it into an instance as its own text (A, and B when it is the
    actual next), summed over the dupe_factor passes."""
    nbytes: int


def _sentencex() -> ModuleType:
    # The `prepare` extra: reading prepared data needs no sentence splitter.
    return require("sentencex", "prepare", "bertforge prepare pretraining (sentence splitting)")


def sentence_splitter(language: str) -> dict[str, Any]:
    """The manifest's record of the sentence splitter (a ConfigError naming the extra to install
    when it is missing)."""
    _sentencex()
    return {"name": "sentencex", "language": language,
            "version": importlib.metadata.version("sentencex")}


@functools.lru_cache(maxsize=4)
def _tokenizer(vocab_file: str, do_lower_case: bool) -> WordPieceTokenizer:
    # Built once per worker process, on its first task.
    return WordPieceTokenizer(vocab_file, do_lower_case)


def split_sentences(lines: Iterable[str], language: str) -> list[str]:
    """Sentences of a document's lines, stripped, empty ones dropped."""
    segment = _sentencex().segment
    return [s for line in lines for s in map(str.strip, segment(language, line)) if s]


def tokenize_documents(docs: Sequence[Sequence[str]], tokenizer: WordPieceTokenizer,
                       language: str) -> list[list[list[int]]]:
    """Documents as lists of sentences as lists of WordPiece ids (empty sentences dropped)."""
    # One sentence at a time: as fast per core as `ids_batch` (measured), and it starts no
    # tokenizers thread pool, which in every worker process would oversubscribe the cores.
    return [[ids for ids in (tokenizer.ids(s) for s in split_sentences(lines, language)) if ids]
            for lines in docs]


def split_long_sentences(document: Sequence[list[int]], max_num_tokens: int
                         ) -> list[list[int]]:
    """The document with every sentence longer than `max_num_tokens` cut into pieces of half
    that length (alternately rounded down and up, so that two neighbours fill one instance).

    Pairing never cuts a sentence, so one longer than an instance would be truncated to fit:
    a paragraph without sentence punctuation would give one instance however long it is. Half
    rather than whole instances, because a piece alone is segment A of a random-next pair,
    which truncation would cut by the length of its B (see docs/pretraining_data.md).
    """
    out: list[list[int]] = []
    for sentence in document:
        if len(sentence) <= max_num_tokens:
            out.append(sentence)
            continue
        cuts = [j // 2 for j in range(0, 2 * len(sentence), max_num_tokens)]  # k * T // 2
        out += [sentence[a:b] for a, b in zip(cuts, [*cuts[1:], len(sentence)], strict=True)]
    return out


def truncate_seq_pair(tokens_a: list[int], tokens_b: list[int], max_num_tokens: int,
                      rng: random.Random) -> tuple[list[int], list[int]]:
    """Google's truncate_seq_pair: drop one token at a time from the front or back (at random)
    of the longer segment (B on ties) until both fit. Counts the drops, then slices once."""
    a0, a1, b0, b1 = 0, len(tokens_a), 0, len(tokens_b)
    while (a1 - a0) + (b1 - b0) > max_num_tokens:
        if a1 - a0 > b1 - b0:
            if rng.random() < 0.5:
                a0 += 1
            else:
                a1 -= 1
        elif rng.random() < 0.5:
            b0 += 1
        else:
            b1 -= 1
    return tokens_a[a0:a1], tokens_b[b0:b1]


def create_instances_from_document(all_documents: Sequence[Sequence[Sequence[int]]],
                                   document_index: int, max_seq_length: int,
                                   short_seq_prob: float, rng: random.Random
                                   ) -> list[tuple[list[int], list[int], bool]]:
    """(tokens_a, tokens_b, is_random_next) of one document, as Google's function of this name.
    `all_documents` is the random-next pool."""
    document = all_documents[document_index]
    max_num_tokens = max_seq_length - 3
    # Google draws the target once per document: with short_seq_prob the whole document gets
    # a shorter one, to reduce the mismatch with fine-tuning on short sequences.
    target_seq_length = max_num_tokens
    if rng.random() < short_seq_prob:
        target_seq_length = rng.randint(2, max_num_tokens)
    instances = []
    current_chunk: list[Sequence[int]] = []
    current_length = 0
    i = 0
    while i < len(document):
        current_chunk.append(document[i])
        current_length += len(document[i])
        if i == len(document) - 1 or current_length >= target_seq_length:
            tokens_a, tokens_b, is_random_next, unused = _make_pair(
                current_chunk, all_documents, document_index, target_seq_length, rng)
            i -= unused  # random next: put the unused sentences back, as Google
            tokens_a, tokens_b = truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng)
            instances.append((tokens_a, tokens_b, is_random_next))
            current_chunk = []
            current_length = 0
        i += 1
    return instances


def _make_pair(chunk: list[Sequence[int]], all_documents: Sequence[Sequence[Sequence[int]]],
               document_index: int, target_seq_length: int, rng: random.Random
               ) -> tuple[list[int], list[int], bool, int]:
    """Segments A and B from a chunk of sentences, as Google makes them, in the order Google
    draws: (A, B, is_random_next, sentences unused).

    A is the chunk's first a_end sentences (a_end drawn from [1, len - 1]; 1 for one sentence).
    B is the rest of the chunk, or, always for a one-sentence chunk and otherwise with
    probability 0.5, text from a random other document starting at a random sentence, long
    enough for the target; then the sentences after A are put back for the next pair."""
    a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
    tokens_a = [t for sentence in chunk[:a_end] for t in sentence]
    if len(chunk) >= 2 and rng.random() >= 0.5:
        return tokens_a, [t for sentence in chunk[a_end:] for t in sentence], False, 0
    target_b_length = target_seq_length - len(tokens_a)
    for _ in range(_RANDOM_DOC_TRIES):
        random_document_index = rng.randint(0, len(all_documents) - 1)
        if random_document_index != document_index:
            break
    random_document = all_documents[random_document_index]
    tokens_b: list[int] = []
    for sentence in random_document[rng.randint(0, len(random_document) - 1):]:
        tokens_b.extend(sentence)
        if len(tokens_b) >= target_b_length:
            break
    return tokens_a, tokens_b, True, len(chunk) - a_end


def create_chunk_instances(settings: CreateSettings, chunk: Chunk) -> ChunkResult:
    """Sentence-split, tokenize and build the instances of one chunk (runs in a worker)."""
    tokenizer = _tokenizer(settings.vocab_file, settings.do_lower_case)
    tokenized = tokenize_documents(chunk.docs, tokenizer, settings.language)
    kept = [i for i, doc in enumerate(tokenized) if doc]
    documents = [split_long_sentences(tokenized[i], settings.max_seq_length - 3) for i in kept]
    doc_ids = [chunk.doc_ids[i] for i in kept]
    rng = random.Random(f"{settings.random_seed}/{chunk.split}/{chunk.index}")
    sequences: list[list[int]] = []
    b_starts, random_next, owners = [], [], []
    used_tokens = 0
    for _ in range(settings.dupe_factor):
        for d in range(len(documents)):
            for tokens_a, tokens_b, is_random in create_instances_from_document(
                    documents, d, settings.max_seq_length, settings.short_seq_prob, rng):
                sequences.append([tokenizer.cls_id, *tokens_a, tokenizer.sep_id,
                                  *tokens_b, tokenizer.sep_id])
                b_starts.append(len(tokens_a) + 2)
                random_next.append(is_random)
                owners.append(doc_ids[d])
                used_tokens += len(tokens_a) + (0 if is_random else len(tokens_b))
    flat = [t for seq in sequences for t in seq]
    return ChunkResult(
        split=chunk.split, index=chunk.index,
        tokens=np.asarray(flat, dtype=settings.token_dtype),
        lengths=np.asarray([len(s) for s in sequences], dtype=np.uint16),
        b_starts=np.asarray(b_starts, dtype=np.uint16),
        random_next=np.asarray(random_next, dtype=np.uint8),
        doc_ids=np.asarray(owners, dtype=np.int64),
        docs=len(documents),
        source_tokens=sum(len(s) for doc in documents for s in doc),
        used_tokens=used_tokens,
        nbytes=chunk.nbytes)
