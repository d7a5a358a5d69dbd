"""The prepared data set on disk: shards of instances, a copy of the vocabulary, the manifest.

`output_dir` holds `vocab.txt`, per split and shard `{split}-{k:05d}.tokens.npy` (the shard's
instances back to back, uint16 ids when the vocabulary fits, else int32) and
`{split}-{k:05d}.index.npy` (one `INDEX_DTYPE` record per instance), and `manifest.json` (the
config, vocabulary hash and size, counts, shard list). Every file is written to a temporary
name, fsynced and renamed; the manifest comes last, so a crash never leaves a manifest that
names a missing or half-written shard. Readers memory-map the shards.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bertforge.errors import ConfigError, DataError
from bertforge.fileio import atomic_write, read_json
from bertforge.tokenization import load_vocab

if TYPE_CHECKING:
    from bertforge.data.pretraining.config import PrepareConfig
    from bertforge.data.pretraining.instances import ChunkResult

MANIFEST = "manifest.json"
VOCAB = "vocab.txt"
FORMAT = "bertforge.pretraining"
FORMAT_VERSION = 1

# One record per stored instance. `start` is the offset of its first token in the shard's
# token array; tokens [start, start + length) are [CLS] A [SEP] B [SEP]; B starts at
# `start + b_start`. `random_next` is the NSP label (1 = B is from another document).
INDEX_DTYPE = np.dtype([("start", "<i8"), ("length", "<u2"), ("b_start", "<u2"),
                        ("random_next", "u1"), ("doc", "<i8")])


def shard_paths(directory: Path, split: str, number: int) -> tuple[Path, Path]:
    """(tokens, index) files of shard `number` of `split`."""
    stem = f"{split}-{number:05d}"
    return directory / f"{stem}.tokens.npy", directory / f"{stem}.index.npy"


@dataclass
class SplitStats:
    """Counts of one split, as the summary and the manifest report them."""

    dupe_factor: int
    """Passes of instance creation over every document."""
    docs: int = 0
    """Documents with at least one token."""
    instances: int = 0
    tokens: int = 0
    """Tokens stored, [CLS] and [SEP] included."""
    source_tokens: int = 0
    """WordPiece tokens of the documents (once, not per pass)."""
    used_tokens: int = 0
    """Source tokens stored as their own instance's text (A, or B of an actual-next pair),
    summed over the passes."""
    random_next: int = 0
    """Instances whose B comes from another document."""
    shards: list[dict[str, Any]] = field(default_factory=list)

    _COUNTS = ("docs", "instances", "tokens", "source_tokens", "used_tokens", "random_next")

    @classmethod
    def combined(cls, parts: Iterable[SplitStats]) -> SplitStats:
        """The counts of several splits together (no shard list)."""
        parts = list(parts)
        total = cls(parts[0].dupe_factor)
        for name in cls._COUNTS:
            setattr(total, name, sum(getattr(p, name) for p in parts))
        return total

    @property
    def source_token_share(self) -> float | None:
        """Share of the source tokens that made it into instances, per pass; None without any."""
        if not self.source_tokens:
            return None
        return self.used_tokens / (self.dupe_factor * self.source_tokens)

    def summary(self) -> dict[str, Any]:
        counts = {k: getattr(self, k) for k in self._COUNTS}
        return {**counts, "source_token_share": self.source_token_share,
                "shards": len(self.shards)}


class ShardWriter:
    """Buffers one split's instances and writes them as shards of `shard_size` instances."""

    _FIELDS = ("tokens", "lengths", "b_starts", "random_next", "doc_ids")

    def __init__(self, directory: Path, split: str, shard_size: int, dupe_factor: int):
        self.directory = directory
        self.split = split
        self.shard_size = shard_size
        self.stats = SplitStats(dupe_factor)
        self._buffer: dict[str, list[np.ndarray]] = {name: [] for name in self._FIELDS}
        self._buffered = 0

    def add(self, result: ChunkResult) -> None:
        self.stats.docs += result.docs
        self.stats.instances += len(result.lengths)
        self.stats.tokens += len(result.tokens)
        self.stats.source_tokens += result.source_tokens
        self.stats.used_tokens += result.used_tokens
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


def prepare_output_dir(directory: Path, overwrite: bool, vocab_file: Path) -> None:
    """Create `directory`; refuse to mix with an earlier data set unless `overwrite`."""
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"output_dir: {directory} exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    ours = [p for p in directory.iterdir() if _is_ours(p.name)]
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


def _is_ours(name: str) -> bool:
    """A file this module writes, or the temporary file of one (`atomic_write` writes to
    `.{name}.XXXX.tmp`) that a killed run left behind."""
    if name.startswith(".") and name.endswith(".tmp"):
        name = name[1:].rsplit(".", 2)[0]
    return name == MANIFEST or name.endswith((".tokens.npy", ".index.npy"))


def vocab_info(vocab_file: Path) -> dict[str, Any]:
    """The manifest's description of the vocabulary: size is the largest id + 1."""
    size = max(load_vocab(vocab_file).values()) + 1  # raises DataError if missing or bad
    return {"file": VOCAB, "sha256": hashlib.sha256(vocab_file.read_bytes()).hexdigest(),
            "size": size}


def write_manifest(out: Path, cfg: PrepareConfig, vocab: dict[str, Any], token_dtype: str,
                   files: Sequence[Path], sentence_splitter: dict[str, Any],
                   stats: dict[str, SplitStats]) -> None:
    """Write `manifest.json`, last, after every shard."""
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "config": dataclasses.asdict(cfg),
        "input_files": [str(f) for f in files],
        "vocab": vocab,
        "token_dtype": token_dtype,
        "sentence_splitter": sentence_splitter,
        "splits": {s: {**st.summary(), "shards": st.shards} for s, st in stats.items()},
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
