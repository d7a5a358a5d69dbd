"""HDF5 pretraining shards: NVIDIA DeepLearningExamples' layout, and Habana's packed sequences.

NVIDIA (`create_pretraining_data.py` of DeepLearningExamples, also MLPerf's PyTorch reference):
one row per sequence,

    input_ids, input_mask, segment_ids (N, T)     masked_lm_positions, masked_lm_ids (N, P)
    next_sentence_labels (N,)

with the masked-LM entries padded with 0. Position 0 is [CLS], which is never masked, so the
entries before the first 0 position are the real ones (NVIDIA's `pretraining_dataset` reads
them so).

Habana (`pack_pretraining_data_pytorch.py`, after Graphcore): up to k sequences per row, one
after the other, then padding:

    input_mask (N, T): 1 on the first sequence's tokens, 2 on the second's, ..., 0 on padding
    positions (N, T): 0, 1, ... restarting at each sequence
    masked_lm_positions, masked_lm_ids (N, P + k): offsets into the row, padded with 0
    next_sentence_positions, next_sentence_labels, next_sentence_weights (N, k): each
    sequence's [CLS] offset, its NSP label, 1 for a sequence that is there

Packed rows need a block-diagonal attention mask; here each row is split back into its
sequences, and each sequence is one sample (padded like an NVIDIA row). Run with `--unpad`
(the varlen attention path) to spend no compute on the padding that packing removed.

Reading needs h5py (`pip install 'bertforge[hdf5]'`). A file is read whole when first used
(NVIDIA's files are gzip-compressed in chunks, which random row reads would decompress again
and again) and dropped by `close()`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bertforge.errors import DataError

MAGIC = b"\x89HDF\r\n\x1a\n"
NVIDIA_FIELDS = ("input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids",
                 "next_sentence_labels")
PACKED_FIELDS = NVIDIA_FIELDS + ("positions", "next_sentence_positions", "next_sentence_weights")


def is_hdf5(head: bytes) -> bool:
    """Whether a file starting with `head` is HDF5 (its signature at byte 0; files with a user
    block have it at 512, 1024, ... and are found by h5py, not here)."""
    return head.startswith(MAGIC)


def _h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise DataError("reading HDF5 pretraining data needs h5py: pip install 'bertforge[hdf5]'") from None
    return h5py


def first_masked_zero(positions: np.ndarray) -> np.ndarray:
    """(n, P) masked_lm_positions -> (n, P) bool: the real entries, those before the first 0."""
    return np.logical_and.accumulate(positions != 0, axis=1)


class Hdf5Shard:
    """One HDF5 file of NVIDIA rows or Habana packed rows; `layout` says which."""

    def __init__(self, path: Path):
        self.path = Path(path)
        h5py = _h5py()
        try:
            f = h5py.File(self.path, "r")
        except OSError as e:
            raise DataError(f"{self.path}: cannot be read as HDF5 ({e})") from None
        with f:
            keys = set(f.keys())
            if "input_ids" in keys and h5py.check_vlen_dtype(f["input_ids"].dtype) is not None:
                raise DataError(f"{self.path}: variable-length HDF5 (NVIDIA's MLPerf submissions, "
                                "hdf5_*_varlength / eval_varlength) is not supported; use the fixed-length "
                                "files MLPerf's reference trains on (hdf5_*_shards_uncompressed)")
            if set(PACKED_FIELDS) <= keys:
                self.layout = "Habana packed HDF5"
                fields = PACKED_FIELDS
            elif set(NVIDIA_FIELDS) <= keys:
                self.layout = "NVIDIA HDF5"
                fields = NVIDIA_FIELDS
            else:
                missing = [k for k in NVIDIA_FIELDS if k not in keys]
                raise DataError(f"{self.path}: not BERT pretraining data in NVIDIA's or Habana's layout: "
                                f"no {', '.join(missing)} (it has: {', '.join(sorted(keys)) or 'nothing'})")
            shapes = {k: f[k].shape for k in fields}
            for k in fields:
                if f[k].dtype.kind not in "iub":
                    raise DataError(f"{self.path}: {k} holds {f[k].dtype}; integers expected")
            self.packed = fields is PACKED_FIELDS
            self._check_shapes(shapes)
            self.seq_length = shapes["input_ids"][1]
            self.max_predictions = shapes["masked_lm_positions"][1]
            if self.packed:
                weights = self._read(f, "next_sentence_weights")
                self._check_weights(weights)
                self.num_samples = int(weights.sum())
            else:
                self.num_samples = shapes["input_ids"][0]
        self._fields = fields
        self._arrays: dict[str, np.ndarray] | None = None
        self._row_ends: np.ndarray | None = None  # packed: samples in rows [0, r]

    def _check_shapes(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Every field's shape against input_ids (N, T), masked_lm_positions (N, P) and, when
        packed, next_sentence_labels (N, k)."""
        def width(key: str) -> int:
            if len(shapes[key]) != 2 or shapes[key][0] != shapes["input_ids"][0]:
                raise DataError(f"{self.path}: {key} has shape {shapes[key]}; (rows, width) expected, "
                                f"with the rows of input_ids {shapes['input_ids']}")
            return shapes[key][1]

        n, t, p = shapes["input_ids"][0], width("input_ids"), width("masked_lm_positions")
        want = {"input_mask": (n, t), "segment_ids": (n, t), "masked_lm_ids": (n, p),
                "next_sentence_labels": (n,)}
        if self.packed:
            k = width("next_sentence_labels")
            want |= {"next_sentence_labels": (n, k), "positions": (n, t),
                     "next_sentence_positions": (n, k), "next_sentence_weights": (n, k)}
        for key, shape in want.items():
            if shapes[key] != shape:
                raise DataError(f"{self.path}: {key} has shape {shapes[key]}, expected {shape} to "
                                f"match input_ids {shapes['input_ids']} and masked_lm_positions "
                                f"{shapes['masked_lm_positions']}")

    def _check_weights(self, weights: np.ndarray) -> None:
        """next_sentence_weights: 1s then 0s, at least one sequence a row."""
        ok = np.isin(weights, (0, 1)).all(axis=1) & (np.diff(weights, axis=1) <= 0).all(axis=1) & (weights[:, 0] == 1)
        if not ok.all():
            row = int(np.flatnonzero(~ok)[0])
            raise DataError(f"{self.path}: row {row}: next_sentence_weights {weights[row].tolist()} "
                            "should be 1 for each packed sequence, then 0")

    def _load(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            try:
                with _h5py().File(self.path, "r") as f:
                    self._arrays = {k: self._read(f, k) for k in self._fields}
            except OSError as e:  # the file went away, or lost its permissions, since it was opened
                raise DataError(f"{self.path}: cannot be read as HDF5 ({str(e).splitlines()[0]})") from None
            if self.packed:
                self._row_ends = np.cumsum(self._arrays["next_sentence_weights"].sum(axis=1), dtype=np.int64)
        return self._arrays

    def _read(self, f: Any, key: str) -> np.ndarray:
        """One field in full; a damaged chunk (h5py's OSError "Can't read data", a failed
        decompression or checksum) as one line naming the file and the field."""
        try:
            return f[key][()]
        except (OSError, ValueError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise DataError(f"{self.path}: field {key} cannot be read ({first}); the file is damaged "
                            "(truncated or corrupt): prepare or copy it again") from None

    def take(self, local: np.ndarray) -> dict[str, np.ndarray]:
        """Samples `local` as arrays: input_ids, input_mask, segment_ids (n, T),
        masked_lm_positions, masked_lm_ids, masked_lm_weights (n, P) (padding entries 0),
        next_sentence_labels (n,)."""
        a = self._load()
        if self.packed:
            return self._take_packed(a, local)
        real = first_masked_zero(a["masked_lm_positions"][local])
        return {"input_ids": a["input_ids"][local], "input_mask": a["input_mask"][local],
                "segment_ids": a["segment_ids"][local],
                "masked_lm_positions": np.where(real, a["masked_lm_positions"][local], 0),
                "masked_lm_ids": np.where(real, a["masked_lm_ids"][local], 0),
                "masked_lm_weights": real.astype(np.float32),
                "next_sentence_labels": a["next_sentence_labels"][local]}

    def _row_of(self, local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sample numbers -> (packed row, sequence number in the row, 0-based)."""
        ends = self._row_ends
        rows = np.searchsorted(ends, local, side="right")
        counts = np.diff(ends, prepend=0)
        return rows, local - (ends[rows] - counts[rows])

    def _take_packed(self, a: dict[str, np.ndarray], local: np.ndarray) -> dict[str, np.ndarray]:
        n, t, p = len(local), self.seq_length, self.max_predictions
        out = {"input_ids": np.zeros((n, t), np.int64), "input_mask": np.zeros((n, t), np.int64),
               "segment_ids": np.zeros((n, t), np.int64), "masked_lm_positions": np.zeros((n, p), np.int64),
               "masked_lm_ids": np.zeros((n, p), np.int64), "masked_lm_weights": np.zeros((n, p), np.float32),
               "next_sentence_labels": np.zeros(n, np.int64)}
        rows, seqs = self._row_of(local)
        for i, (r, s) in enumerate(zip(rows.tolist(), seqs.tolist())):
            where = f"{self.path}: row {r}, sequence {s + 1}"
            start = int(a["next_sentence_positions"][r, s])
            tokens = np.flatnonzero(a["input_mask"][r] == s + 1)
            length = len(tokens)
            if length == 0 or tokens[0] != start or tokens[-1] != start + length - 1:
                raise DataError(f"{where}: its tokens (input_mask == {s + 1}) are not one run starting "
                                f"at next_sentence_positions = {start}")
            if not np.array_equal(a["positions"][r, start:start + length], np.arange(length)):
                raise DataError(f"{where}: positions do not count 0, 1, ... over the sequence")
            out["input_ids"][i, :length] = a["input_ids"][r, start:start + length]
            out["segment_ids"][i, :length] = a["segment_ids"][r, start:start + length]
            out["input_mask"][i, :length] = 1
            positions = a["masked_lm_positions"][r]
            mine = first_masked_zero(positions[None])[0] & (positions >= start) & (positions < start + length)
            m = int(mine.sum())
            out["masked_lm_positions"][i, :m] = positions[mine] - start
            out["masked_lm_ids"][i, :m] = a["masked_lm_ids"][r][mine]
            out["masked_lm_weights"][i, :m] = 1.0
            out["next_sentence_labels"][i] = a["next_sentence_labels"][r, s]
        return out

    def describe(self, local: int) -> str:
        if not self.packed:
            return f"{self.path}: row {local}"
        self._load()
        rows, seqs = self._row_of(np.array([local]))
        return f"{self.path}: row {int(rows[0])}, sequence {int(seqs[0]) + 1}"

    def close(self) -> None:
        self._arrays = None
        self._row_ends = None


__all__ = ["Hdf5Shard", "MAGIC", "NVIDIA_FIELDS", "PACKED_FIELDS", "first_masked_zero", "is_hdf5"]
