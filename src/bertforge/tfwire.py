"""TensorFlow's on-disk building blocks, read without TensorFlow: the protobuf wire format and
the masked CRC-32C that TensorFlow stores beside what it writes.

Shared by `bertforge.checkpoint.tf_checkpoint` (checkpoint index tables) and
`bertforge.data.pretraining.tfrecord` (TFRecord files of tf.train.Example). Each parser takes
the `BertforgeError` subclass its caller reports bad input with (CheckpointError, DataError)
and `where`, the file the bytes came from, for the message.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bertforge.errors import BertforgeError

_CRC_MASK_DELTA = 0xA282EAD8
_CRC_CHUNK = 1 << 24  # google-crc32c takes bytes only: checksum large buffers in 16 MiB copies


# What readers log when crc32c_extend is None: they read on, unverified.
CRC32C_MISSING = "google-crc32c's C implementation is not installed (pip install 'bertforge[crc32c]')"


def _find_crc32c_extend() -> Callable[[int, bytes], int] | None:
    try:  # the `crc32c` extra: without it TF files are read without verifying checksums
        import google_crc32c
    except ImportError:
        return None
    # Its pure-Python fallback would take minutes on BERT-large; then do without checksums.
    return google_crc32c.extend if google_crc32c.implementation == "c" else None


# `extend(crc, data) -> crc` of CRC-32C (Castagnoli), or None to skip verification. Read at
# each call, so that tests can swap in a reference implementation.
crc32c_extend = _find_crc32c_extend()


def masked_crc32c(data: bytes | bytearray | memoryview) -> int | None:
    """TensorFlow's stored form of a CRC-32C (rotated and offset so that CRCs of data that
    itself holds CRCs stay well distributed); None when no fast crc32c is installed."""
    extend = crc32c_extend
    if extend is None:
        return None
    crc = 0
    view = memoryview(data)
    for start in range(0, len(view), _CRC_CHUNK):
        crc = extend(crc, bytes(view[start:start + _CRC_CHUNK]))
    return ((crc >> 15 | crc << 17) + _CRC_MASK_DELTA) & 0xFFFFFFFF


def varint(buf: bytes, pos: int, where: str, error: type[BertforgeError]) -> tuple[int, int]:
    """Decode a base-128 varint at `pos` -> (value, next position)."""
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise error(f"{where}: malformed varint")
        byte = buf[pos]
        result |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return result, pos
        shift += 7


def proto_fields(buf: bytes, where: str, error: type[BertforgeError]) -> list[tuple[int, int | bytes]]:
    """A protobuf message -> [(field number, value)]: varints and fixed ints as int,
    length-delimited fields as bytes. Groups (wire types 3, 4) are refused: none of the protos
    read here has one."""
    fields: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(buf):
        tag, pos = varint(buf, pos, where, error)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = varint(buf, pos, where, error)
        elif wire == 1:
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == 2:
            length, pos = varint(buf, pos, where, error)
            value, pos = bytes(buf[pos:pos + length]), pos + length
        elif wire == 5:
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise error(f"{where}: unsupported protobuf wire type {wire} (field {number})")
        if pos > len(buf):
            raise error(f"{where}: protobuf field {number} runs past the end of its message")
        fields.append((number, value))
    return fields


def packed_varints(data: bytes, where: str, error: type[BertforgeError]) -> np.ndarray:
    """The varints of a packed repeated field, decoded at once -> (n,) uint64 (view as int64
    for signed fields: negative int64s are stored as their 64-bit two's complement)."""
    b = np.frombuffer(data, dtype=np.uint8)
    last = b < 0x80  # the final byte of each varint
    if last.all():  # token ids below 128, masks, segment ids: one byte each
        return b.astype(np.uint64)
    if not last[-1]:
        raise error(f"{where}: malformed varint (a packed list ends inside a value)")
    ends = np.flatnonzero(last)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > 10:
        raise error(f"{where}: malformed varint (longer than 10 bytes)")
    # Byte j of a varint holds bits [7j, 7j + 7); the 10th byte's bits past 64 wrap away, as
    # in every protobuf decoder.
    shift = ((np.arange(len(b)) - np.repeat(starts, lengths)) * 7).astype(np.uint64)
    return np.add.reduceat((b & 0x7F).astype(np.uint64) << shift, starts)


__all__ = ["CRC32C_MISSING", "crc32c_extend", "masked_crc32c", "packed_varints", "proto_fields", "varint"]
