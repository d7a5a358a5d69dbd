"""`PrepareConfig`: the settings of `bertforge prepare pretraining`, checked when it is built."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bertforge.errors import ConfigError

logger = logging.getLogger(__name__)

# The annotations below, as strings (postponed evaluation), and how to check a value of each.
_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "int | None": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "str | list[str]": lambda v: isinstance(v, str) or (
        isinstance(v, list) and all(isinstance(i, str) for i in v)),
}


@dataclass(kw_only=True, slots=True)
class PrepareConfig:
    """Settings of prepare_pretraining_data (flags up to random_seed as Google's script's)

    Checked when built: a bad value raises ConfigError naming its flag.
    """

    input_file: str | list[str]
    """Text to read: comma-separated files, globs and directories (read recursively, hidden
    files skipped), or a list of them. JSON lines with a string 'text' field (WikiExtractor
    --json), or plain text with a blank line between documents (Google's layout)."""
    output_dir: str
    """Where the shards, manifest.json and a copy of the vocabulary are written."""
    vocab_file: str
    """The WordPiece vocab.txt."""
    do_lower_case: bool = True
    """Lower-case and strip accents before WordPiece (uncased models)."""
    do_whole_word_mask: bool = False
    """Mask every WordPiece piece of a word together. Masks are drawn when training reads the
    data; this is recorded in the manifest for it."""
    max_seq_length: int = 128
    """Tokens per instance, [CLS] and the two [SEP] included."""
    max_predictions_per_seq: int = 20
    """Most masked tokens per instance (Google: 20 at 128, 80 at 512)."""
    masked_lm_prob: float = 0.15
    """Share of an instance's maskable tokens that are masked."""
    short_seq_prob: float = 0.1
    """Probability that a document's instances aim at a random shorter length, to narrow the
    gap to fine-tuning on short sequences."""
    dupe_factor: int = 1
    """How many times instances are created from every document, each time with other random
    lengths, segment splits and random-next partners. Masks are drawn anew every epoch when the
    data is read, so 1 suffices (Google stores 10 statically masked copies)."""
    random_seed: int = 12345
    """Seed of instance creation, of the held-out choice and (by default) of the masks."""
    num_workers: int | None = None
    """Worker processes; null: one per CPU; 0: everything in this process."""
    held_out_fraction: float = 0.01
    """Share of documents set aside in the held_out split (chosen by a keyed hash of their text)."""
    shard_size: int = 100_000
    """Instances per output shard."""
    chunk_chars: int = 1 << 20
    """Characters of text per unit of work. Also the pool random-next segments are drawn from,
    and the longest document kept whole: longer ones are cut, so that memory stays bounded."""
    language: str = "en"
    """ISO 639 code for sentence splitting (codes sentencex does not know use its generic rules)."""
    overwrite: bool = False
    """Replace prepared data already in output_dir."""

    def __post_init__(self) -> None:
        # Paths are accepted and kept as strings: the manifest stores the config as JSON.
        for name in ("output_dir", "vocab_file"):
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        if isinstance(self.input_file, os.PathLike):
            self.input_file = os.fspath(self.input_file)
        elif isinstance(self.input_file, (list, tuple)):
            self.input_file = [os.fspath(p) if isinstance(p, os.PathLike) else p
                               for p in self.input_file]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not _TYPE_CHECKS[f.type](value):
                raise ConfigError(f"--{f.name} must be {f.type}, got {value!r}")
        for name in ("input_file", "output_dir", "vocab_file"):
            if not getattr(self, name):
                raise ConfigError(f"--{name} is required")
        checks = [
            ("max_seq_length", 5 <= self.max_seq_length <= 65535, "in [5, 65535]"),
            ("max_predictions_per_seq", self.max_predictions_per_seq >= 1, ">= 1"),
            ("masked_lm_prob", 0.0 < self.masked_lm_prob < 1.0, "in (0, 1)"),
            ("short_seq_prob", 0.0 <= self.short_seq_prob <= 1.0, "in [0, 1]"),
            ("dupe_factor", self.dupe_factor >= 1, ">= 1"),
            ("num_workers", self.num_workers is None or self.num_workers >= 0, ">= 0 or null"),
            ("held_out_fraction", 0.0 <= self.held_out_fraction < 1.0, "in [0, 1)"),
            ("shard_size", self.shard_size >= 1, ">= 1"),
            ("chunk_chars", self.chunk_chars >= 1, ">= 1"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise ConfigError(f"--{name} must be {want}, got {getattr(self, name)!r}")
        expected = round(self.masked_lm_prob * (self.max_seq_length - 3))
        if self.max_predictions_per_seq < expected:
            logger.warning(
                "max_predictions_per_seq=%d caps masking below masked_lm_prob=%.2f of a full "
                "%d-token sequence (%d tokens); Google uses 20 at 128 and 80 at 512",
                self.max_predictions_per_seq, self.masked_lm_prob, self.max_seq_length, expected)
