"""TFRecord files of tf.train.Example, read without TensorFlow: what Google's and MLPerf's
`create_pretraining_data.py` write.

A TFRecord file is records back to back, each: uint64 length (little-endian), masked CRC-32C of
those 8 bytes, the data, masked CRC-32C of the data. Each record here is a tf.train.Example:

    Example   { Features features = 1; }
    Features  { map<string, Feature> feature = 1; }      a map entry is { key = 1; value = 2; }
    Feature   { oneof { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
    Int64List { repeated int64 value = 1; }              FloatList { repeated float value = 1; }

Writers store repeated numbers packed (one length-delimited field; what TensorFlow writes) or as
one field per value; both are read. A file carries no record count, so counting its records
reads every record header (`record_offsets`).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from bertforge import tfwire
from bertforge.errors import DataError
from bertforge.tfwire import masked_crc32c, packed_varints, proto_fields

HEADER_BYTES = 12  # uint64 length + masked CRC-32C of it
FOOTER_BYTES = 4  # masked CRC-32C of the data

# The features of a pretraining example (Google's `write_instance_to_example_files`).
FEATURES = ("input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids",
            "masked_lm_weights", "next_sentence_labels")
# Features only packed-sequence examples have (Habana's packed TFRecords).
PACKED_FEATURES = ("positions", "next_sentence_positions", "next_sentence_weights")


# ---- framing ---------------------------------------------------------------------------------


def looks_like_tfrecord(head: bytes, file_size: int) -> bool:
    """Whether a file that starts with `head` (at least its first HEADER_BYTES + 1 bytes) and
    has `file_size` bytes is framed as TFRecords: the first length fits the file and, where
    CRC-32C is available, its checksum matches."""
    if len(head) < HEADER_BYTES or file_size < HEADER_BYTES + FOOTER_BYTES:
        return False
    length, crc = struct.unpack("<QI", head[:HEADER_BYTES])
    if HEADER_BYTES + length + FOOTER_BYTES > file_size:
        return False
    expected = masked_crc32c(head[:8])
    if expected is not None:
        return expected == crc
    # No fast CRC-32C: an Example starts with its field 1 (features), length-delimited.
    return length == 0 or head[HEADER_BYTES:HEADER_BYTES + 1] == b"\x0a"


def has_damaged_header(head: bytes) -> bool:
    """Whether a file that starts with `head` looks like a TFRecord file whose first record
    header is damaged: its length checksum does not match, yet a tf.train.Example (field 1,
    length-delimited) starts right after the 12-byte header."""
    if len(head) <= HEADER_BYTES:
        return False
    expected = masked_crc32c(head[:8])
    return (expected is not None and expected != struct.unpack("<I", head[8:HEADER_BYTES])[0]
            and head[HEADER_BYTES:HEADER_BYTES + 1] == b"\x0a")


def record_offsets(path: Path) -> np.ndarray:
    """The offset of every record of a TFRecord file (its header), each header's checksum
    verified -> (records,) int64. Reads 12 bytes a record."""
    offsets = []
    size = os.path.getsize(path)
    pos = 0
    # A large buffer: seeking to the next header inside it costs no system call.
    with open(path, "rb", buffering=1 << 20) as f:
        while pos < size:
            f.seek(pos)
            header = f.read(HEADER_BYTES)
            if len(header) < HEADER_BYTES:
                raise DataError(f"{path}: truncated: a record header at byte {pos} has "
                                f"{len(header)} of {HEADER_BYTES} bytes")
            length, crc = struct.unpack("<QI", header)
            expected = masked_crc32c(header[:8])
            if expected is not None and expected != crc:
                raise DataError(f"{path}: record {len(offsets)} at byte {pos}: the length's checksum "
                                "does not match; not a TFRecord file, or a corrupt one")
            offsets.append(pos)
            pos += HEADER_BYTES + length + FOOTER_BYTES
    if pos != size:
        raise DataError(f"{path}: truncated: its last record (number {len(offsets) - 1}) needs "
                        f"{pos} bytes, the file has {size}")
    return np.array(offsets, dtype=np.int64)


class TFRecordFile:
    """One TFRecord file open for reading records by number."""

    def __init__(self, path: Path):
        self.path = path
        self.offsets = record_offsets(path)
        self._file = open(path, "rb")  # noqa: SIM115 - held open while the file is in use

    def __len__(self) -> int:
        return len(self.offsets)

    def read(self, i: int) -> bytes:
        """Record i's data, its checksum verified."""
        self._file.seek(int(self.offsets[i]))
        header = self._file.read(HEADER_BYTES)
        (length,) = struct.unpack("<Q", header[:8])
        data = self._file.read(length)
        footer = self._file.read(FOOTER_BYTES)
        if len(data) != length or len(footer) != FOOTER_BYTES:
            raise DataError(f"{self.path}: record {i} is truncated (the file changed while open?)")
        expected = masked_crc32c(data)
        if expected is not None and expected != struct.unpack("<I", footer)[0]:
            raise DataError(f"{self.path}: record {i}: checksum mismatch; the file is corrupt")
        return data

    def close(self) -> None:
        self._file.close()


def verifies_checksums() -> bool:
    return tfwire.crc32c_extend is not None


# ---- tf.train.Example --------------------------------------------------------------------------


def parse_example(buf: bytes, where: str) -> dict[str, np.ndarray | list[bytes]]:
    """A serialized tf.train.Example -> {feature name: int64 (n,) | float32 (n,) | [bytes]}."""
    features: dict[str, np.ndarray | list[bytes]] = {}
    for number, value in proto_fields(buf, where, DataError):
        if number != 1 or not isinstance(value, bytes):
            continue
        for entry_number, entry in proto_fields(value, where, DataError):
            if entry_number != 1 or not isinstance(entry, bytes):
                continue
            key, feature = "", b""
            for n, v in proto_fields(entry, where, DataError):
                if n == 1 and isinstance(v, bytes):
                    key = v.decode("utf-8", errors="replace")
                elif n == 2 and isinstance(v, bytes):
                    feature = v
            features[key] = _parse_feature(feature, f"{where}: feature {key!r}")
    return features


def _parse_feature(buf: bytes, where: str) -> np.ndarray | list[bytes]:
    kind, payload = 0, b""
    for number, value in proto_fields(buf, where, DataError):
        if number in (1, 2, 3) and isinstance(value, bytes):
            kind, payload = number, value  # a oneof: the last one set wins
    if kind == 1:
        return [v for n, v in proto_fields(payload, where, DataError) if n == 1 and isinstance(v, bytes)]
    parts: list[np.ndarray] = []
    for number, value in proto_fields(payload, where, DataError):
        if number != 1:
            continue
        if kind == 3:  # Int64List: a packed run of varints, or one varint
            parts.append(packed_varints(value, where, DataError).view(np.int64) if isinstance(value, bytes)
                         else np.array([value], dtype=np.uint64).view(np.int64))
        elif isinstance(value, bytes):  # FloatList, packed: little-endian float32s
            if len(value) % 4:
                raise DataError(f"{where}: a packed float list of {len(value)} bytes")
            parts.append(np.frombuffer(value, dtype="<f4"))
        else:  # FloatList, one fixed32 per value
            parts.append(np.array([value], dtype="<u4").view("<f4"))
    dtype = np.int64 if kind == 3 else np.float32
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype=dtype)


# ---- pretraining examples ------------------------------------------------------------------------


class TFRecordShard:
    """A TFRecord file of Google/MLPerf pretraining examples. Records are read on demand
    through an index of their offsets, built when the file is first used and dropped by
    `close()`."""

    layout = "TFRecord"

    def __init__(self, path: Path):
        self.path = Path(path)
        records = TFRecordFile(self.path)
        try:
            self.num_samples = len(records)
            first = self._example(records, 0) if len(records) else None
        finally:
            records.close()
        self.seq_length = len(first["input_ids"]) if first else 0
        self.max_predictions = len(first["masked_lm_positions"]) if first else 0
        self._records: TFRecordFile | None = None

    def _example(self, records: TFRecordFile, i: int) -> dict[str, np.ndarray]:
        where = f"{self.path}: record {i}"
        example = parse_example(records.read(i), where)
        packed = [k for k in PACKED_FEATURES if k in example]
        if packed:
            raise DataError(f"{where}: a packed-sequence example (features {', '.join(packed)}); "
                            "packed TFRecords are not supported. Use the unpacked TFRecords, or "
                            "Habana's packed HDF5 files, which bertforge splits into their sequences")
        missing = [k for k in FEATURES if k not in example]
        if missing:
            raise DataError(f"{where}: not a BERT pretraining example: no {', '.join(missing)} "
                            f"(it has: {', '.join(sorted(example)) or 'no features'})")
        for name in FEATURES:
            if isinstance(example[name], list):
                raise DataError(f"{where}: feature {name!r} is a bytes list; numbers expected")
        return example

    def take(self, local: np.ndarray) -> dict[str, np.ndarray]:
        """Records `local` as arrays in NVIDIA's field names: input_ids, input_mask,
        segment_ids (n, T), masked_lm_positions, masked_lm_ids, masked_lm_weights (n, P),
        next_sentence_labels (n,)."""
        if self._records is None:
            self._records = TFRecordFile(self.path)
        rows = {name: [] for name in FEATURES}
        widths = {"input_ids": self.seq_length, "input_mask": self.seq_length,
                  "segment_ids": self.seq_length, "masked_lm_positions": self.max_predictions,
                  "masked_lm_ids": self.max_predictions, "masked_lm_weights": self.max_predictions,
                  "next_sentence_labels": 1}
        for i in local:
            example = self._example(self._records, int(i))
            for name in FEATURES:
                if len(example[name]) != widths[name]:
                    raise DataError(f"{self.path}: record {int(i)}: {name} has {len(example[name])} "
                                    f"values; the data set's first record has {widths[name]}")
                rows[name].append(example[name])
        arrays = {name: np.stack(rows[name]) if len(local) else
                  np.zeros((0, widths[name]), np.float32 if name == "masked_lm_weights" else np.int64)
                  for name in FEATURES}
        arrays["next_sentence_labels"] = arrays["next_sentence_labels"].reshape(-1)
        return arrays

    def describe(self, local: int) -> str:
        return f"{self.path}: record {local}"

    def close(self) -> None:
        if self._records is not None:
            self._records.close()
            self._records = None


__all__ = ["FEATURES", "TFRecordFile", "TFRecordShard", "has_damaged_header", "looks_like_tfrecord", "parse_example",
           "record_offsets", "verifies_checksums"]
