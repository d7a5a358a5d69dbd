"""TensorFlow's wire pieces written out from their definitions, independently of
`bertforge.tfwire`: CRC-32C (Castagnoli) and its masked form, and protobuf encoding. The tests
use them to write TensorFlow checkpoints and TFRecord files bertforge must read."""

from __future__ import annotations

import struct


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        c = byte
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc_table()


def crc32c_extend(crc: int, data: bytes) -> int:
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = crc32c_extend(0, data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def varint(n: int) -> bytes:
    """Base-128 varint; a negative n as its 64-bit two's complement (10 bytes), as protobuf
    stores a negative int64."""
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def pb_int(number: int, value: int) -> bytes:
    """Field `number` as a varint (wire type 0)."""
    return varint(number << 3) + varint(value)


def pb_bytes(number: int, value: bytes) -> bytes:
    """Field `number` length-delimited (wire type 2)."""
    return varint(number << 3 | 2) + varint(len(value)) + value


def pb_fixed32(number: int, value: bytes) -> bytes:
    """Field `number` as 4 raw bytes (wire type 5)."""
    assert len(value) == 4
    return varint(number << 3 | 5) + value


def tfrecord(data: bytes) -> bytes:
    """One TFRecord: length, masked CRC of the length, data, masked CRC of the data."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))
