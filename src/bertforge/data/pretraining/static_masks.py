"""Pretraining data other toolkits prepared, read as masked-LM/NSP batches with the masks the
files hold: NVIDIA/Habana HDF5 (`hdf5.py`) and Google/MLPerf TFRecords (`tfrecord.py`).

The data set is a list of files, each a shard that counts its samples up front and reads them
on demand (`Shard`). Samples are numbered in stored order: file by file, in the order given.

Order, streamed: epoch e visits the files in a permutation drawn from (seed, e), cut into
windows of `shuffle_window` files; the samples of a window are visited in a permutation drawn
from (seed, e, window). So a batch needs only the files of one or two windows: a rank holds
those (an HDF5 file whole, a TFRecord file as an index of its record offsets) and drops them
when it moves on; memory does not grow with the number of files beyond one count each.
Batching, rank sharding and the resumable cursor are `EpochCursor`'s.

Every batch is checked before it is handed out (real tokens first, token types 0/1, masked
positions among the real tokens, ids inside the vocabulary once `vocab_size` is set), and a bad
sample is named by file and row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

from bertforge.data.pretraining.sampling import Batch, EpochCursor
from bertforge.errors import DataError

# Stream tags of the random generators: the file order and the order inside a window.
_FILE_ORDER = 2
_WINDOW_ORDER = 3


class Shard(Protocol):
    """One file of samples."""

    path: Any
    layout: str  # "NVIDIA HDF5", "Habana packed HDF5", "TFRecord"
    num_samples: int
    seq_length: int  # T
    max_predictions: int  # P, the width of the masked-LM arrays

    def take(self, local: np.ndarray) -> dict[str, np.ndarray]:
        """Samples `local` (n,) of this file: input_ids, input_mask, segment_ids (n, T),
        masked_lm_positions, masked_lm_ids, masked_lm_weights (n, P), next_sentence_labels (n,)."""

    def describe(self, local: int) -> str:
        """Where sample `local` is, for messages (file and row)."""

    def close(self) -> None:
        """Let go of what reading holds (arrays, index, file handle); `take` reopens."""


class StaticMaskDataset(EpochCursor):
    """Samples of `shards` as batches of dicts of tensors, with the keys and shapes of
    `PretrainingDataset`'s batches (T = the files' sequence length, P = their masked-LM width).

    `source` names the data in messages (e.g. the --input_dir value)."""

    vocab_file = None  # such data brings no vocabulary: the model's (or --vocab_file) is used
    do_lower_case = None

    def __init__(self, shards: Sequence[Shard], *, seed: int, shuffle_window: int = 1, source: str):
        if not shards:
            raise DataError(f"{source}: no files")
        if shuffle_window < 1:
            raise DataError(f"shuffle_window must be at least 1, got {shuffle_window}")
        first = next((s for s in shards if s.num_samples), shards[0])
        for shard in shards:
            if (shard.layout, shard.seq_length, shard.max_predictions) != \
                    (first.layout, first.seq_length, first.max_predictions) and shard.num_samples:
                raise DataError(
                    f"{shard.path}: {shard.layout} of sequence length {shard.seq_length} with "
                    f"{shard.max_predictions} masked-LM entries, but {first.path} is {first.layout} "
                    f"of {first.seq_length} with {first.max_predictions}; one data set, one layout")
        self.shards = list(shards)
        self.layout = first.layout
        self.source = source
        self.seed = seed
        self.shuffle_window = shuffle_window
        self.max_seq_length = first.seq_length
        self.max_predictions_per_seq = first.max_predictions
        self.vocab_size: int | None = None  # set to the model's, to check ids against it
        self._counts = np.array([s.num_samples for s in shards], dtype=np.int64)
        self._ends = np.cumsum(self._counts)
        self._starts = self._ends - self._counts
        self.num_samples = int(self._ends[-1])
        if not self.num_samples:
            raise DataError(f"{source}: {len(shards)} file(s), but no samples in them")
        fingerprint = "".join(f"{s.path.name}\t{s.num_samples}\n" for s in shards)
        self._files = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
        self._layout_cache: tuple[int, np.ndarray, np.ndarray] | None = None
        self._window_cache: tuple[int, int, np.ndarray] | None = None
        self._open: set[int] = set()
        self._init_cursor()

    def describe(self) -> str:
        return (f"{len(self.shards)} {self.layout} file(s), {self.num_samples} samples of length "
                f"<= {self.max_seq_length}, {self.max_predictions_per_seq} masked-LM entries each")

    # ---- order ---------------------------------------------------------------------------

    def identity(self) -> dict[str, Any]:
        # Names and counts, not paths: the data may be mounted elsewhere on resume.
        return {"seed": self.seed, "num_samples": self.num_samples, "files": self._files,
                "shuffle_window": self.shuffle_window}

    def _epoch_layout(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(files in epoch order (F,), cumulative samples per window (W,))."""
        if self._layout_cache is None or self._layout_cache[0] != epoch:
            order = np.random.default_rng([self.seed, _FILE_ORDER, epoch]).permutation(len(self.shards))
            sizes = np.add.reduceat(self._counts[order], np.arange(0, len(order), self.shuffle_window))
            self._layout_cache = (epoch, order, np.cumsum(sizes))
        return self._layout_cache[1], self._layout_cache[2]

    def _window_order(self, epoch: int, window: int, size: int) -> np.ndarray:
        if self._window_cache is None or self._window_cache[:2] != (epoch, window):
            order = np.random.default_rng([self.seed, _WINDOW_ORDER, epoch, window]).permutation(size)
            self._window_cache = (epoch, window, order)
        return self._window_cache[2]

    def epoch_indices(self, epoch: int, lo: int, hi: int) -> np.ndarray:
        order, window_ends = self._epoch_layout(epoch)
        parts = []
        w = int(np.searchsorted(window_ends, lo, side="right"))
        while lo < hi:
            start = int(window_ends[w - 1]) if w else 0
            stop = min(hi, int(window_ends[w]))
            local = self._window_order(epoch, w, int(window_ends[w]) - start)[lo - start:stop - start]
            files = order[w * self.shuffle_window:(w + 1) * self.shuffle_window]
            file_ends = np.cumsum(self._counts[files])
            which = np.searchsorted(file_ends, local, side="right")
            parts.append(self._starts[files[which]] + local - (file_ends[which] - self._counts[files[which]]))
            lo, w = stop, w + 1
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    # ---- reading -------------------------------------------------------------------------

    def collate(self, indices: np.ndarray, epoch: int = 0) -> Batch:
        """The batch of samples `indices` (B,) (stored-order numbers); the masks are the
        files', whatever the epoch."""
        indices = np.asarray(indices, dtype=np.int64)
        file_of = np.searchsorted(self._ends, indices, side="right")
        needed = set(np.unique(file_of).tolist())
        for f in self._open - needed:  # memory holds the files of this batch only
            self.shards[f].close()
        self._open = needed
        n, t, p = len(indices), self.max_seq_length, self.max_predictions_per_seq
        arrays = {"input_ids": np.zeros((n, t), np.int64), "input_mask": np.zeros((n, t), np.int64),
                  "segment_ids": np.zeros((n, t), np.int64), "masked_lm_positions": np.zeros((n, p), np.int64),
                  "masked_lm_ids": np.zeros((n, p), np.int64), "masked_lm_weights": np.zeros((n, p), np.float32),
                  "next_sentence_labels": np.zeros(n, np.int64)}
        for f in sorted(needed):
            rows = np.flatnonzero(file_of == f)
            local = indices[rows] - self._starts[f]
            part = self.shards[f].take(local)
            self._check(part, self.shards[f], local)
            for key, value in part.items():
                arrays[key][rows] = value
        return {"input_ids": torch.from_numpy(arrays["input_ids"]),
                "token_type_ids": torch.from_numpy(arrays["segment_ids"]),
                "attention_mask": torch.from_numpy(arrays["input_mask"]),
                "masked_lm_positions": torch.from_numpy(arrays["masked_lm_positions"]),
                "masked_lm_ids": torch.from_numpy(arrays["masked_lm_ids"]),
                "masked_lm_weights": torch.from_numpy(arrays["masked_lm_weights"]),
                "next_sentence_labels": torch.from_numpy(arrays["next_sentence_labels"])}

    def _check(self, a: dict[str, np.ndarray], shard: Shard, local: np.ndarray) -> None:
        """Refuse a sample the model would misread (or crash on), naming it."""
        mask = a["input_mask"]
        lengths = (mask != 0).sum(axis=1)
        width = np.arange(mask.shape[1])
        real = a["masked_lm_weights"] != 0
        vocab = self.vocab_size
        checks = [
            ((mask == (width < lengths[:, None])).all(axis=1),
             "input_mask must be 1 on the real tokens, which come first, then 0"),
            (lengths > 0, "has no tokens"),
            (np.isin(a["segment_ids"], (0, 1)).all(axis=1), "segment_ids must be 0 or 1"),
            ((a["input_ids"] >= 0).all(axis=1) & ((a["input_ids"] < vocab).all(axis=1) if vocab else True),
             f"input_ids must be in [0, {vocab or 'vocab size'})"),
            ((~real | ((a["masked_lm_positions"] >= 0) & (a["masked_lm_positions"] < lengths[:, None]))).all(axis=1),
             "masked_lm_positions must point at real tokens"),
            ((~real | ((a["masked_lm_ids"] >= 0) & ((a["masked_lm_ids"] < vocab) if vocab else True))).all(axis=1),
             f"masked_lm_ids must be in [0, {vocab or 'vocab size'})"),
            ((np.isfinite(a["masked_lm_weights"]) & (a["masked_lm_weights"] >= 0)).all(axis=1),
             "masked_lm_weights must be finite and >= 0"),
            (np.isin(a["next_sentence_labels"], (0, 1)), "next_sentence_labels must be 0 or 1"),
        ]
        for ok, what in checks:
            if not np.all(ok):
                bad = int(np.flatnonzero(~np.broadcast_to(ok, lengths.shape))[0])
                raise DataError(f"{shard.describe(int(local[bad]))}: {what}")
        # Padding entries (weight 0) point at position 0 with label 0, as in prepared data.
        a["masked_lm_positions"][~real] = 0
        a["masked_lm_ids"][~real] = 0

    def close(self) -> None:
        for f in self._open:
            self.shards[f].close()
        self._open = set()


__all__ = ["Shard", "StaticMaskDataset"]
