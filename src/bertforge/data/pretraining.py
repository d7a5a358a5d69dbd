"""BERT pretraining data: text corpus -> shards of unmasked masked-LM/NSP instances.

The library of `bertforge prepare pretraining`. It builds the same instances as Google's
`create_pretraining_data.py` (`create_instances_from_document`), but streams: a corpus of any
size goes through bounded memory on all cores, and masks are drawn when training reads a batch
(`bertforge.data.pretraining_dataset`), not stored.

Pipeline
    input files -> documents (read lazily, one at a time) -> chunks of about `chunk_chars` of
    text -> a process pool (at most 2 chunks per worker in flight) that splits sentences,
    WordPiece-tokenizes and builds instances -> shard writers (one per split) that hold at most
    one shard in memory -> `manifest.json`, written last.

Input
    Plain text (documents separated by blank lines, one or more sentences a line, Google's
    layout) or JSON lines with a string `text` field (WikiExtractor's `--json` layout: one
    article a line, paragraphs separated by newlines). `input_file` is a comma-separated list
    (or a list) of files, globs and directories (read recursively, hidden files skipped). The
    format is chosen per file: `.jsonl`/`.json` are JSON lines; any other file whose first
    non-blank line is a JSON object with a `text` field is too; the rest is plain text. A plain
    text document longer than `chunk_chars` is cut there (a file without blank lines would
    otherwise be one document, held whole in memory).

Sentence splitting
    `sentencex` (Wikimedia; rule-based, Rust core, wheels for Linux/macOS/Windows on x86-64 and
    ARM, no model download). Measured on the first 1,000 articles of wiki_summaries_en.jsonl
    (500 kB, one core): sentencex 68 MB/s, blingfire 0.1.8 14 MB/s (its last release, 2021,
    ships x86-64 binaries only), pysbd 0.22 MB/s (pure Python: it would take ~85% of the
    preparation time; WordPiece runs at ~2.3 MB/s a core). The three disagree on under 1% of
    sentences (abbreviations like "c. 1308", quotes). NLTK's punkt needs its model downloaded.
    A split error only moves a segment boundary, which BERT's segments tolerate.

Instances (Google's `create_instances_from_document`)
    target length `max_seq_length - 3`, with probability `short_seq_prob` a random shorter
    target for the document; sentences are accumulated until the target is reached, segment A
    is a random prefix of the accumulated sentences, B is either the rest (actual next) or, with
    probability 0.5, text from a random *other* document (random next), in which case the
    unused sentences are put back. The pair is truncated to `max_seq_length - 3` by dropping
    tokens from the front or back of the longer segment at random, then stored as
    `[CLS] A [SEP] B [SEP]` with the start of B.

    One departure, so that NSP is balanced: Google forces "random next" whenever the chunk
    holds a single sentence (a one-sentence document, a sentence longer than the target, a
    leftover put back), which on short documents gives far more than 50% random pairs (64% on
    wiki_summaries_en.jsonl at 128 and at 512 tokens, measured; 50% with this rule). Here the
    coin is tossed for every instance; a single-sentence chunk that draws "actual next" is cut
    at a random token into A and B (B is still the text that follows A). Only a one-token
    chunk is forced to random.

Random next from a bounded pool
    Google draws the random document from the whole corpus held in memory. Here it comes from
    the chunk being processed: the documents around it in the input, of the same split, about
    `chunk_chars` characters of text (~300 Wikipedia articles at the default 2**20). As in
    Google's code, 10 draws are tried to get a different document; a chunk of one document
    falls back to itself. A final chunk smaller than half of `chunk_chars` is merged into the
    one before, so only a corpus (or held-out split) of one document meets that fallback.

Masking: dynamic, at load time (why)
    Google stores `dupe_factor` (10) copies of every instance, each with a static mask. Here
    instances are stored once, unmasked, and the dataset draws the mask when it reads a sample,
    from (seed, split, epoch, sample index): shards are about 10x smaller, every epoch sees
    fresh masks (RoBERTa's dynamic masking), and resuming is exact because a mask depends on
    nothing but those numbers, not on batch size, world size or what was read before.
    `dupe_factor` keeps Google's meaning for the rest: instance creation runs that many times
    over every document with different random targets, A/B splits and random partners, so the
    stored data is that many times larger. It defaults to 1 here because masks no longer need
    copies.

Held-out split
    A document is held out when a keyed hash (BLAKE2b, key = `random_seed`) of its text falls
    below `held_out_fraction`: deterministic, independent of file order and chunking, and
    identical documents always land in the same split. Held-out documents form their own
    chunks, so no instance of one split pairs with a document of the other.

Output (`output_dir`)
    `vocab.txt` (a copy of the vocabulary), per split and shard `{split}-{k:05d}.tokens.npy`
    (the shard's instances back to back, uint16 ids when the vocabulary fits, else int32) and
    `{split}-{k:05d}.index.npy` (one `INDEX_DTYPE` record per instance: start, length, start of
    segment B, random-next label, document number), and `manifest.json` (the config, vocabulary
    hash and size, counts, shard list). Every file is written to a temporary name, fsynced and
    renamed; the manifest comes last, so a crash never leaves a manifest that names a missing
    or half-written shard. Shards are memory-mapped by the reader.

Determinism
    Chunk boundaries depend only on the input and `chunk_chars`, and each chunk's random stream
    on (random_seed, split, chunk number), so the output is the same for any `num_workers`.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import importlib.metadata
import json
import logging
import os
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import sentencex
from tqdm.auto import tqdm

from bertforge.errors import ConfigError, DataError
from bertforge.fileio import atomic_write, read_json
from bertforge.tokenization import WordPieceTokenizer, load_vocab

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
VOCAB = "vocab.txt"
FORMAT = "bertforge.pretraining"
FORMAT_VERSION = 1
SPLITS = ("train", "held_out")
JSON_SUFFIXES = (".jsonl", ".json")

# One record per stored instance. `start` is the offset of its first token in the shard's
# token array; tokens [start, start + length) are [CLS] A [SEP] B [SEP]; B starts at
# `start + b_start`. `random_next` is the NSP label (1 = B is from another document).
INDEX_DTYPE = np.dtype([("start", "<i8"), ("length", "<u2"), ("b_start", "<u2"),
                        ("random_next", "u1"), ("doc", "<i8")])

# Google tries this many times to draw a random document other than the current one.
_RANDOM_DOC_TRIES = 10

_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "int | None": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "str | list[str]": lambda v: isinstance(v, str) or (
        isinstance(v, list) and all(isinstance(i, str) for i in v)),
}


@dataclass
class PrepareConfig:
    """Settings of `prepare_pretraining_data`. Names up to `random_seed` are Google's flags.

    `input_file`: comma-separated files, globs and directories (or a list of them).
    `dupe_factor`: how many times instances are created from each document (see the module
    docstring: masks are dynamic, so 1 is the default, not Google's 10).
    `num_workers`: worker processes; None = os.cpu_count(); 0 = in this process.
    `held_out_fraction`: share of documents in the held-out split.
    `shard_size`: instances per output shard.
    `chunk_chars`: characters of text per unit of work; also the pool that random-next
    segments are drawn from, and the longest plain-text document kept whole (longer ones are
    cut, so that memory stays bounded).
    `language`: for sentence splitting (an ISO 639 code sentencex knows; unknown codes fall
    back to its generic rules).
    `overwrite`: replace a prepared data set already in `output_dir`.
    """

    input_file: str | list[str]
    output_dir: str
    vocab_file: str
    do_lower_case: bool = True
    do_whole_word_mask: bool = False
    max_seq_length: int = 128
    max_predictions_per_seq: int = 20
    masked_lm_prob: float = 0.15
    short_seq_prob: float = 0.1
    dupe_factor: int = 1
    random_seed: int = 12345
    num_workers: int | None = None
    held_out_fraction: float = 0.01
    shard_size: int = 100_000
    chunk_chars: int = 1 << 20
    language: str = "en"
    overwrite: bool = False

    def __post_init__(self) -> None:
        # Paths are accepted and kept as strings (the manifest stores the config as JSON).
        for name in ("input_file", "output_dir", "vocab_file"):
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        if isinstance(self.input_file, (list, tuple)):
            self.input_file = [os.fspath(p) for p in self.input_file]
        self.validate()

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not _TYPE_CHECKS[f.type](value):
                raise ConfigError(f"PrepareConfig: '{f.name}' must be {f.type}, got {value!r}")
        checks = [
            ("max_seq_length", 5 <= self.max_seq_length <= 65535, "in [5, 65535]"),
            ("max_predictions_per_seq", self.max_predictions_per_seq >= 1, ">= 1"),
            ("masked_lm_prob", 0.0 < self.masked_lm_prob < 1.0, "in (0, 1)"),
            ("short_seq_prob", 0.0 <= self.short_seq_prob <= 1.0, "in [0, 1]"),
            ("dupe_factor", self.dupe_factor >= 1, ">= 1"),
            ("num_workers", self.num_workers is None or self.num_workers >= 0, ">= 0 or None"),
            ("held_out_fraction", 0.0 <= self.held_out_fraction < 1.0, "in [0, 1)"),
            ("shard_size", self.shard_size >= 1, ">= 1"),
            ("chunk_chars", self.chunk_chars >= 1, ">= 1"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise ConfigError(
                    f"PrepareConfig: '{name}' must be {want}, got {getattr(self, name)!r}")
        for name in ("input_file", "output_dir", "vocab_file"):
            if not getattr(self, name):
                raise ConfigError(f"PrepareConfig: '{name}' is required")
        expected = round(self.masked_lm_prob * (self.max_seq_length - 3))
        if self.max_predictions_per_seq < expected:
            logger.warning(
                "max_predictions_per_seq=%d caps masking below masked_lm_prob=%.2f of a full "
                "%d-token sequence (%d tokens); Google uses 20 at 128 and 80 at 512",
                self.max_predictions_per_seq, self.masked_lm_prob, self.max_seq_length, expected)


# ---- input ---------------------------------------------------------------------------------

def resolve_input_files(spec: str | Sequence[str]) -> list[Path]:
    """Files named by a comma-separated string or list of files, globs and directories."""
    items = spec.split(",") if isinstance(spec, str) else [str(s) for s in spec]
    files: list[Path] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        path = Path(item)
        if path.is_dir():
            files += _files_under(path)
        elif path.is_file():
            files.append(path)
        elif any(c in item for c in "*?["):
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True))
            files += [f for m in matches for f in (_files_under(m) if m.is_dir() else [m])]
        else:
            raise DataError(f"input_file: {item} does not exist")
    unique = list(dict.fromkeys(files))
    if not unique:
        raise DataError(f"input_file: {spec!r} names no files")
    return unique


def _files_under(directory: Path) -> list[Path]:
    return sorted(f for f in directory.rglob("*") if f.is_file()
                  and not any(p.startswith(".") for p in f.relative_to(directory).parts))


def is_json_lines(path: Path) -> bool:
    """JSON lines by extension, else by a first non-blank line that is an object with 'text'."""
    if path.suffix.lower() in JSON_SUFFIXES:
        return True
    with path.open("rb") as f:
        for raw in f:
            if raw.strip():
                try:
                    obj = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    return False
                return isinstance(obj, dict) and isinstance(obj.get("text"), str)
    return False


def iter_documents(path: Path, max_chars: int) -> Iterator[tuple[list[str], int]]:
    """(non-blank lines of a document, bytes of the file it took) for each document in a file.

    A document without text is yielded with no lines, so that its bytes still count. A plain
    text document is cut after `max_chars` characters (a file without blank lines would
    otherwise be one document held whole in memory).
    """
    if is_json_lines(path):
        yield from _json_documents(path)
    else:
        yield from _text_documents(path, max_chars)


def _decode(raw: bytes, path: Path, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _json_documents(path: Path) -> Iterator[tuple[list[str], int]]:
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                yield [], len(raw)
                continue
            try:
                obj = json.loads(_decode(raw, path, lineno))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise DataError(
                    f"{path}:{lineno}: expected a JSON object with a string 'text' field")
            yield [s for s in (line.strip() for line in obj["text"].split("\n")) if s], len(raw)


def _text_documents(path: Path, max_chars: int) -> Iterator[tuple[list[str], int]]:
    lines: list[str] = []
    nbytes = chars = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            nbytes += len(raw)
            line = _decode(raw, path, lineno).strip()
            if line:
                lines.append(line)
                chars += len(line)
            if lines and (not line or chars >= max_chars):
                if line:
                    logger.warning("%s:%d: document longer than %d characters cut here",
                                   path, lineno, max_chars)
                yield lines, nbytes
                lines, nbytes, chars = [], 0, 0
    yield lines, nbytes


def is_held_out(lines: Sequence[str], fraction: float, seed: int) -> bool:
    """Whether a document belongs to the held-out split: a keyed hash of its text < fraction."""
    if fraction <= 0.0:
        return False
    key = seed.to_bytes(16, "little", signed=True)
    digest = hashlib.blake2b("\n".join(lines).encode("utf-8"), digest_size=8, key=key).digest()
    return int.from_bytes(digest, "little") < fraction * 2.0**64


# ---- chunks: the unit of work --------------------------------------------------------------

@dataclass
class Chunk:
    """Documents of one split sent to a worker; `docs[i]` is document number `doc_ids[i]`."""

    split: str
    index: int = -1
    docs: list[list[str]] = field(default_factory=list)
    doc_ids: list[int] = field(default_factory=list)
    nbytes: int = 0
    text_chars: int = 0

    def add(self, other: Chunk) -> None:
        self.docs += other.docs
        self.doc_ids += other.doc_ids
        self.nbytes += other.nbytes
        self.text_chars += other.text_chars


class _SplitChunker:
    """Groups one split's documents into chunks of about `chunk_chars`.

    A full chunk is held back until the next one fills, so that a small final chunk can be
    merged into it (a random-next pool of one or two documents would be poor).
    """

    def __init__(self, split: str, chunk_chars: int):
        self.split = split
        self.chunk_chars = chunk_chars
        self.count = 0
        self.current = Chunk(split)
        self.held: Chunk | None = None

    def add(self, lines: list[str], doc_id: int | None, nbytes: int) -> Iterator[Chunk]:
        if doc_id is not None:
            self.current.docs.append(lines)
            self.current.doc_ids.append(doc_id)
            self.current.text_chars += sum(len(s) for s in lines)
        self.current.nbytes += nbytes
        if self.current.text_chars >= self.chunk_chars:
            if self.held is not None:
                yield self._numbered(self.held)
            self.held, self.current = self.current, Chunk(self.split)

    def finish(self) -> Iterator[Chunk]:
        last = self.current
        if self.held is not None:
            if last.text_chars < self.chunk_chars // 2:
                self.held.add(last)
                last = self.held
            else:
                yield self._numbered(self.held)
        if last.docs or last.nbytes:
            yield self._numbered(last)

    def _numbered(self, chunk: Chunk) -> Chunk:
        chunk.index, self.count = self.count, self.count + 1
        return chunk


def iter_chunks(files: Sequence[Path], cfg: PrepareConfig) -> Iterator[Chunk]:
    """Chunks of both splits in input order; documents are numbered from 0 in that order."""
    chunkers = {s: _SplitChunker(s, cfg.chunk_chars) for s in SPLITS}
    doc_id = 0
    for path in files:
        for lines, nbytes in iter_documents(path, cfg.chunk_chars):
            held_out = bool(lines) and is_held_out(lines, cfg.held_out_fraction, cfg.random_seed)
            split = "held_out" if held_out else "train"
            yield from chunkers[split].add(lines, doc_id if lines else None, nbytes)
            doc_id += bool(lines)
    for chunker in chunkers.values():
        yield from chunker.finish()


# ---- instances (worker side) ---------------------------------------------------------------

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
    source_tokens: int
    nbytes: int


@functools.lru_cache(maxsize=4)
def _tokenizer(vocab_file: str, do_lower_case: bool) -> WordPieceTokenizer:
    # Built once per worker process, on its first task.
    return WordPieceTokenizer(vocab_file, do_lower_case)


def split_sentences(lines: Iterable[str], language: str) -> list[str]:
    """Sentences of a document's lines, stripped, empty ones dropped."""
    return [s for line in lines for s in map(str.strip, sentencex.segment(language, line)) if s]


def tokenize_documents(docs: Sequence[Sequence[str]], tokenizer: WordPieceTokenizer,
                       language: str) -> list[list[list[int]]]:
    """Documents as lists of sentences as lists of WordPiece ids (empty sentences dropped)."""
    # One sentence at a time: as fast per core as `ids_batch` (measured), and it starts no
    # tokenizers thread pool, which in every worker process would oversubscribe the cores.
    return [[ids for ids in (tokenizer.ids(s) for s in split_sentences(lines, language)) if ids]
            for lines in docs]


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
    """(tokens_a, tokens_b, is_random_next) of one document, as Google's function of this name
    with balanced NSP (see the module docstring). `all_documents` is the random-next pool."""
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
    """Segments A and B from a chunk of sentences: (A, B, is_random_next, sentences unused)."""
    is_random_next = rng.random() < 0.5
    if len(chunk) == 1 and len(chunk[0]) < 2:
        is_random_next = True  # one token cannot be cut into A and B
    if len(chunk) == 1 and not is_random_next:
        cut = rng.randint(1, len(chunk[0]) - 1)
        return list(chunk[0][:cut]), list(chunk[0][cut:]), False, 0
    a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
    tokens_a = [t for sentence in chunk[:a_end] for t in sentence]
    if not is_random_next:
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
    documents = [tokenized[i] for i in kept]
    doc_ids = [chunk.doc_ids[i] for i in kept]
    rng = random.Random(f"{settings.random_seed}/{chunk.split}/{chunk.index}")
    sequences: list[list[int]] = []
    b_starts, random_next, owners = [], [], []
    for _ in range(settings.dupe_factor):
        for d in range(len(documents)):
            for tokens_a, tokens_b, is_random in create_instances_from_document(
                    documents, d, settings.max_seq_length, settings.short_seq_prob, rng):
                sequences.append([tokenizer.cls_id, *tokens_a, tokenizer.sep_id,
                                  *tokens_b, tokenizer.sep_id])
                b_starts.append(len(tokens_a) + 2)
                random_next.append(is_random)
                owners.append(doc_ids[d])
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
        nbytes=chunk.nbytes)


# ---- output --------------------------------------------------------------------------------

def shard_paths(directory: Path, split: str, number: int) -> tuple[Path, Path]:
    """(tokens, index) files of shard `number` of `split`."""
    stem = f"{split}-{number:05d}"
    return directory / f"{stem}.tokens.npy", directory / f"{stem}.index.npy"


@dataclass
class SplitStats:
    docs: int = 0
    instances: int = 0
    tokens: int = 0
    source_tokens: int = 0
    random_next: int = 0
    shards: list[dict[str, Any]] = field(default_factory=list)


class ShardWriter:
    """Buffers one split's instances and writes them as shards of `shard_size` instances."""

    _FIELDS = ("tokens", "lengths", "b_starts", "random_next", "doc_ids")

    def __init__(self, directory: Path, split: str, shard_size: int):
        self.directory = directory
        self.split = split
        self.shard_size = shard_size
        self.stats = SplitStats()
        self._buffer: dict[str, list[np.ndarray]] = {name: [] for name in self._FIELDS}
        self._buffered = 0

    def add(self, result: ChunkResult) -> None:
        self.stats.docs += result.docs
        self.stats.instances += len(result.lengths)
        self.stats.tokens += len(result.tokens)
        self.stats.source_tokens += result.source_tokens
        self.stats.random_next += int(result.random_next.sum())
        for name in self._FIELDS:
            self._buffer[name].append(getattr(result, name))
        self._buffered += len(result.lengths)
        while self._buffered >= self.shard_size:
            self._write(self.shard_size)

    def close(self) -> SplitStats:
        if self._buffered:
            self._write(self._buffered)
        return self.stats

    def _write(self, count: int) -> None:
        """Write the first `count` buffered instances as the next shard; keep the rest."""
        data = {name: np.concatenate(parts) for name, parts in self._buffer.items()}
        lengths = data["lengths"][:count]
        n_tokens = int(lengths.sum(dtype=np.int64))
        tokens = data["tokens"][:n_tokens]
        index = np.zeros(count, dtype=INDEX_DTYPE)
        index["length"] = lengths
        index["start"] = np.cumsum(lengths, dtype=np.int64) - lengths
        index["b_start"] = data["b_starts"][:count]
        index["random_next"] = data["random_next"][:count]
        index["doc"] = data["doc_ids"][:count]
        tokens_path, index_path = shard_paths(self.directory, self.split, len(self.stats.shards))
        atomic_write(tokens_path, lambda f: np.save(f, tokens))
        atomic_write(index_path, lambda f: np.save(f, index))
        self.stats.shards.append({"tokens": tokens_path.name, "index": index_path.name,
                                  "instances": count, "num_tokens": n_tokens})
        self._buffer = {name: [data[name][n_tokens if name == "tokens" else count:]]
                        for name in self._FIELDS}
        self._buffered -= count


def _prepare_output_dir(directory: Path, overwrite: bool, vocab_file: Path) -> None:
    """Create `directory`; refuse to mix with an earlier data set unless `overwrite`."""
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"output_dir: {directory} exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    ours = [p for p in directory.iterdir()
            if p.name == MANIFEST or p.name.endswith((".tokens.npy", ".index.npy"))
            or (p.name.startswith(".") and ".tmp-" in p.name)]
    if ours and not overwrite:
        raise ConfigError(f"output_dir: {directory} already holds prepared data "
                          f"({ours[0].name}); set overwrite to replace it")
    if not ours and (directory / VOCAB).is_file() and \
            (directory / VOCAB).read_bytes() != Path(vocab_file).read_bytes():
        raise ConfigError(f"output_dir: {directory} holds a different {VOCAB}, which the "
                          "prepared data's copy of the vocabulary would replace")
    # The manifest goes first: a crash below must not leave it naming deleted shards.
    for p in sorted(ours, key=lambda p: p.name != MANIFEST):
        p.unlink()


def vocab_info(vocab_file: Path) -> dict[str, Any]:
    """The manifest's description of the vocabulary: size is the largest id + 1."""
    size = max(load_vocab(vocab_file).values()) + 1  # raises DataError if missing or bad
    return {"file": VOCAB, "sha256": hashlib.sha256(vocab_file.read_bytes()).hexdigest(),
            "size": size}


def _run_chunks(chunks: Iterator[Chunk], settings: CreateSettings, num_workers: int
                ) -> Iterator[ChunkResult]:
    """Results of `create_chunk_instances` in chunk order, with at most 2 chunks per worker in
    flight (so reading never runs far ahead of the pool: bounded memory)."""
    if num_workers == 0:
        for chunk in chunks:
            yield create_chunk_instances(settings, chunk)
        return
    # spawn, not fork: the caller may hold threads (torch, tokenizers) that fork would copy
    # in an undefined state; workers import only numpy, tokenizers and sentencex.
    with ProcessPoolExecutor(num_workers, mp_context=get_context("spawn")) as pool:
        pending: deque[Future[ChunkResult]] = deque()
        for chunk in chunks:
            pending.append(pool.submit(create_chunk_instances, settings, chunk))
            if len(pending) >= 2 * num_workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _peak_rss_mb() -> tuple[float | None, float | None]:
    """Peak resident memory of this process and of its largest finished child, in MiB."""
    try:
        import resource
    except ImportError:  # Windows
        return None, None
    scale = 1 / 1024**2 if os.uname().sysname == "Darwin" else 1 / 1024  # bytes vs KiB
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale)


def prepare_pretraining_data(cfg: PrepareConfig, progress: bool = True) -> dict[str, Any]:
    """Create the shards and manifest of `cfg.output_dir`; returns a summary.

    Summary keys: docs, instances, tokens (in instances, with [CLS]/[SEP]), source_tokens
    (WordPiece tokens of the documents), per-split counts under `splits`, seconds, docs_per_s,
    peak_rss_mb (this process), peak_rss_worker_mb (the largest worker process), num_workers,
    output_dir. Workers are spawned processes: a script that calls this with num_workers != 0
    needs the usual `if __name__ == "__main__":` guard.
    """
    start = time.perf_counter()
    files = resolve_input_files(cfg.input_file)
    vocab_file = Path(cfg.vocab_file)
    vocab = vocab_info(vocab_file)
    token_dtype = "uint16" if vocab["size"] <= 65536 else "int32"
    out = Path(cfg.output_dir)
    _prepare_output_dir(out, cfg.overwrite, vocab_file)
    atomic_write(out / VOCAB, lambda f: f.write(vocab_file.read_bytes()))
    settings = CreateSettings(
        vocab_file=str(vocab_file.resolve()), do_lower_case=cfg.do_lower_case,
        max_seq_length=cfg.max_seq_length, short_seq_prob=cfg.short_seq_prob,
        dupe_factor=cfg.dupe_factor, random_seed=cfg.random_seed, language=cfg.language,
        token_dtype=token_dtype)
    writers = {s: ShardWriter(out, s, cfg.shard_size) for s in SPLITS}
    num_workers = (os.cpu_count() or 1) if cfg.num_workers is None else cfg.num_workers
    total_bytes = sum(f.stat().st_size for f in files)
    with tqdm(total=total_bytes, unit="B", unit_scale=True, desc="prepare pretraining data",
              disable=not progress) as bar:
        docs = 0
        for result in _run_chunks(iter_chunks(files, cfg), settings, num_workers):
            writers[result.split].add(result)
            docs += result.docs
            bar.update(result.nbytes)
            rate = docs / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(docs=docs, docs_s=f"{rate:.0f}", refresh=False)
    stats = {s: w.close() for s, w in writers.items()}
    _write_manifest(out, cfg, vocab, token_dtype, files, stats)
    seconds = time.perf_counter() - start
    rss, rss_worker = _peak_rss_mb()
    totals = {k: sum(getattr(s, k) for s in stats.values())
              for k in ("docs", "instances", "tokens", "source_tokens")}
    return {**totals, "splits": {s: _split_summary(st) for s, st in stats.items()},
            "seconds": seconds, "docs_per_s": totals["docs"] / seconds, "peak_rss_mb": rss,
            "peak_rss_worker_mb": rss_worker, "num_workers": num_workers, "output_dir": str(out)}


def _split_summary(stats: SplitStats) -> dict[str, Any]:
    return {"docs": stats.docs, "instances": stats.instances, "tokens": stats.tokens,
            "source_tokens": stats.source_tokens, "random_next": stats.random_next,
            "shards": len(stats.shards)}


def _write_manifest(out: Path, cfg: PrepareConfig, vocab: dict[str, Any], token_dtype: str,
                    files: Sequence[Path], stats: dict[str, SplitStats]) -> None:
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "config": dataclasses.asdict(cfg),
        "input_files": [str(f) for f in files],
        "vocab": vocab,
        "token_dtype": token_dtype,
        "sentence_splitter": {"name": "sentencex", "language": cfg.language,
                              "version": importlib.metadata.version("sentencex")},
        "splits": {s: {**_split_summary(st), "shards": st.shards} for s, st in stats.items()},
    }
    text = json.dumps(manifest, indent=2) + "\n"
    atomic_write(out / MANIFEST, lambda f: f.write(text.encode("utf-8")))


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of a prepared data set, checked for format and version."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise DataError(f"{directory}: no {MANIFEST}; not prepared pretraining data "
                        "(or preparation did not finish)")
    manifest = read_json(path, MANIFEST, DataError)
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path}: not a {FORMAT} manifest of version {FORMAT_VERSION}")
    return manifest
