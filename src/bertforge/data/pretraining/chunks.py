"""Chunks: the document stream of each split cut into units of work of about `chunk_chars`.

A chunk is what one worker turns into instances, and also the pool its random-next segments
come from (Google draws them from the whole corpus held in memory). Chunk boundaries depend only
on the input and `chunk_chars`, so the output does not depend on the number of workers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bertforge.data.pretraining.config import PrepareConfig
from bertforge.data.pretraining.corpus import SPLITS, is_held_out, iter_documents


@dataclass
class Chunk:
    """Documents of one split sent to a worker."""

    split: str
    """"train" or "held_out"."""
    index: int = -1
    """Its number within the split (with the split and the seed, it seeds the chunk's randomness)."""
    docs: list[list[str]] = field(default_factory=list)
    """Each document's lines."""
    doc_ids: list[int] = field(default_factory=list)
    """`docs[i]` is document number `doc_ids[i]` of the input (counted across both splits)."""
    nbytes: int = 0
    """Input bytes read for these documents (for progress)."""
    text_chars: int = 0
    """Characters of text in `docs`."""

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
    """Chunks of both splits in input order; documents are numbered from 0 in that order.
    The parts of a document cut for length stay in the split of its first part."""
    chunkers = {s: _SplitChunker(s, cfg.chunk_chars) for s in SPLITS}
    doc_id = 0
    split = "train"
    for path in files:
        for doc in iter_documents(path, cfg.chunk_chars):
            if not doc.continued:
                held_out = bool(doc.lines) and is_held_out(
                    doc.lines, cfg.held_out_fraction, cfg.random_seed)
                split = "held_out" if held_out else "train"
            yield from chunkers[split].add(doc.lines, doc_id if doc.lines else None, doc.nbytes)
            doc_id += bool(doc.lines)
    for chunker in chunkers.values():
        yield from chunker.finish()
