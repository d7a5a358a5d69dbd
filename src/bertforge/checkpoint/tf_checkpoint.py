"""Read TensorFlow checkpoints (the V2 "tensor bundle" format) without TensorFlow.

A checkpoint `<prefix>` is `<prefix>.index`, a LevelDB-style sorted table from variable name to
BundleEntryProto (dtype, shape, shard, offset, size, crc32c), and `<prefix>.data-*-of-*`, the
raw little-endian bytes. Checksums are verified when google-crc32c's C implementation is
installed (the `crc32c` extra). The table layout, what is supported and what is refused:
docs/checkpoints.md.
"""

from __future__ import annotations

import ast
import itertools
import logging
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bertforge import tfwire
from bertforge.errors import CheckpointError
from bertforge.tfwire import masked_crc32c, proto_fields, varint

log = logging.getLogger(__name__)

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48
_TRAILER_SIZE = 5

# TensorFlow DataType enum (types.proto) -> (name, numpy dtype). bfloat16 is kept as its bits.
_DTYPES: dict[int, tuple[str, np.dtype | None]] = {
    1: ("float32", np.dtype("<f4")), 2: ("float64", np.dtype("<f8")),
    3: ("int32", np.dtype("<i4")), 4: ("uint8", np.dtype("u1")), 5: ("int16", np.dtype("<i2")),
    6: ("int8", np.dtype("i1")), 7: ("string", None), 9: ("int64", np.dtype("<i8")),
    10: ("bool", np.dtype("?")), 14: ("bfloat16", np.dtype("<u2")),
    17: ("uint16", np.dtype("<u2")), 19: ("float16", np.dtype("<f2")),
    22: ("uint32", np.dtype("<u4")), 23: ("uint64", np.dtype("<u8")),
}
_DTYPES_BY_NAME = dict(_DTYPES.values())


@dataclass(frozen=True)
class TFVariable:
    """One BundleEntryProto: where a tensor's bytes are and what they are."""

    name: str
    dtype: str  # TensorFlow's dtype name: float32, bfloat16, string, ...
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc32c: int | None  # masked, as stored; None when the entry has none
    num_slices: int  # > 0: a partitioned variable, saved in slices under other keys


# ---- the bundle protos (wire format: bertforge.tfwire) --------------------------------------


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _parse_shape(buf: bytes, where: str) -> tuple[int, ...]:
    """TensorShapeProto: repeated Dim dim = 2 (Dim: int64 size = 1); bool unknown_rank = 3."""
    dims = []
    for number, value in proto_fields(buf, where, CheckpointError):
        if number == 2:
            size = 0
            for dim_number, dim_value in proto_fields(value, where, CheckpointError):
                if dim_number == 1:
                    size = _signed64(dim_value)
            if size < 0:
                raise CheckpointError(f"{where}: shape has an unknown dimension ({size})")
            dims.append(size)
        elif number == 3 and value:
            raise CheckpointError(f"{where}: shape of unknown rank")
    return tuple(dims)


def _parse_entry(name: str, buf: bytes, where: str) -> TFVariable:
    """BundleEntryProto: dtype = 1, shape = 2, shard_id = 3, offset = 4, size = 5,
    fixed32 crc32c = 6, repeated TensorSliceProto slices = 7."""
    dtype_enum, shape, shard, offset, size, crc, slices = 0, (), 0, 0, 0, None, 0
    for number, value in proto_fields(buf, where, CheckpointError):
        if number == 1:
            dtype_enum = value
        elif number == 2:
            shape = _parse_shape(value, where)
        elif number == 3:
            shard = value
        elif number == 4:
            offset = _signed64(value)
        elif number == 5:
            size = _signed64(value)
        elif number == 6:
            crc = value
        elif number == 7:
            slices += 1
    if dtype_enum not in _DTYPES:
        raise CheckpointError(f"{where}: variable {name!r} has TensorFlow dtype enum {dtype_enum}, "
                              f"which bertforge cannot read (known: "
                              f"{', '.join(n for n, _ in _DTYPES.values())})")
    if offset < 0 or size < 0:
        raise CheckpointError(f"{where}: variable {name!r} has a negative offset or size")
    return TFVariable(name, _DTYPES[dtype_enum][0], shape, shard, offset, size, crc, slices)


@dataclass(frozen=True)
class _Header:
    num_shards: int
    big_endian: bool
    min_consumer: int


def _parse_header(buf: bytes, where: str) -> _Header:
    """BundleHeaderProto: int32 num_shards = 1; Endianness endianness = 2 (LITTLE = 0);
    VersionDef version = 3 (producer = 1, min_consumer = 2)."""
    num_shards, endianness, min_consumer = 0, 0, 0
    for number, value in proto_fields(buf, where, CheckpointError):
        if number == 1:
            num_shards = value
        elif number == 2:
            endianness = value
        elif number == 3:
            for v_number, v_value in proto_fields(value, where, CheckpointError):
                if v_number == 2:
                    min_consumer = v_value
    return _Header(num_shards, endianness == 1, min_consumer)


# ---- the index table -----------------------------------------------------------------------


def _block_handle(buf: bytes, pos: int, where: str) -> tuple[int, int, int]:
    """BlockHandle: varint64 offset, varint64 size -> (offset, size, next position)."""
    offset, pos = varint(buf, pos, where, CheckpointError)
    size, pos = varint(buf, pos, where, CheckpointError)
    return offset, size, pos


def _read_block(table: bytes, offset: int, size: int, where: str) -> bytes:
    """A block's contents, its trailer checked."""
    end = offset + size
    if end + _TRAILER_SIZE > len(table) - _FOOTER_SIZE:
        raise CheckpointError(f"{where}: block at offset {offset} (size {size}) runs past the end "
                              f"of the file ({len(table)} bytes); the index is truncated or corrupt")
    block = table[offset:end]
    compression = table[end]
    stored_crc = int.from_bytes(table[end + 1:end + _TRAILER_SIZE], "little")
    actual = masked_crc32c(table[offset:end + 1])
    if actual is not None and actual != stored_crc:
        raise CheckpointError(f"{where}: checksum mismatch in the block at offset {offset}; "
                              "the index file is corrupt")
    if compression == 1:
        raise CheckpointError(f"{where}: block at offset {offset} is snappy-compressed; bertforge "
                              "reads uncompressed bundles (what TensorFlow writes). Re-save the "
                              "checkpoint with TensorFlow, or convert it where TensorFlow is installed")
    if compression != 0:
        raise CheckpointError(f"{where}: block at offset {offset} has unknown compression type "
                              f"{compression}; the index file is corrupt")
    return block


def _block_entries(block: bytes, where: str) -> list[tuple[bytes, bytes]]:
    """All (key, value) pairs of a block, keys rebuilt from their shared prefixes."""
    if len(block) < 4:
        raise CheckpointError(f"{where}: block of {len(block)} bytes is too short")
    num_restarts = int.from_bytes(block[-4:], "little")
    restarts_at = len(block) - 4 * (num_restarts + 1)
    if num_restarts == 0 or restarts_at < 0:
        raise CheckpointError(f"{where}: block has an invalid restart count {num_restarts}")
    restarts = set(struct.unpack_from(f"<{num_restarts}I", block, restarts_at))
    if max(restarts) >= max(restarts_at, 1):
        raise CheckpointError(f"{where}: block has a restart point past its entries")
    entries: list[tuple[bytes, bytes]] = []
    key = b""
    pos = 0
    while pos < restarts_at:
        entry_at = pos
        shared, pos = varint(block, pos, where, CheckpointError)
        unshared, pos = varint(block, pos, where, CheckpointError)
        value_len, pos = varint(block, pos, where, CheckpointError)
        if shared > len(key) or (entry_at in restarts and shared):
            raise CheckpointError(f"{where}: block entry at {entry_at} shares {shared} bytes "
                                  f"with a key of {len(key)}; the index is corrupt")
        if pos + unshared + value_len > restarts_at:
            raise CheckpointError(f"{where}: block entry at {entry_at} runs past its block")
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        entries.append((key, block[pos:pos + value_len]))
        pos += value_len
    return entries


def _table_entries(table: bytes, where: str) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of an SSTable, in key order."""
    if len(table) < _FOOTER_SIZE:
        raise CheckpointError(f"{where}: {len(table)} bytes is too short for a TensorFlow "
                              "checkpoint index (footer alone is 48)")
    footer = table[-_FOOTER_SIZE:]
    if int.from_bytes(footer[-8:], "little") != _TABLE_MAGIC:
        raise CheckpointError(f"{where}: bad magic number; not a TensorFlow checkpoint index "
                              "(or a truncated/corrupt one)")
    _, _, pos = _block_handle(footer, 0, where)  # the metaindex block: unused by bundles
    index_offset, index_size, _ = _block_handle(footer, pos, where)
    entries: list[tuple[bytes, bytes]] = []
    for _, handle in _block_entries(_read_block(table, index_offset, index_size, where), where):
        offset, size, _ = _block_handle(handle, 0, where)
        entries.extend(_block_entries(_read_block(table, offset, size, where), where))
    keys = [k for k, _ in entries]
    if any(a >= b for a, b in itertools.pairwise(keys)):
        raise CheckpointError(f"{where}: index keys are not in order; the index is corrupt")
    return entries


# ---- finding the checkpoint ----------------------------------------------------------------

_DATA_SUFFIX = re.compile(r"\.data-\d{5}-of-\d{5}$")


def resolve_prefix(path: str | Path) -> Path:
    """The checkpoint prefix for `bert_model.ckpt`, `bert_model.ckpt.index`, a data shard, or a
    directory holding one checkpoint (or a `checkpoint` state file naming one)."""
    path = Path(path)
    if path.is_dir():
        return _prefix_in_directory(path)
    name = path.name
    for suffix in (".index", ".meta"):
        if name.endswith(suffix):
            return path.with_name(name[: -len(suffix)])
    if _DATA_SUFFIX.search(name):
        return path.with_name(_DATA_SUFFIX.sub("", name))
    if Path(f"{path}.index").is_file():
        return path
    raise CheckpointError(f"TensorFlow checkpoint not found: no {path}.index")


def _unescape_text_proto(text: str, source: Path) -> str:
    """A text-format protobuf string: C escapes, non-ASCII as UTF-8 or octal-escaped bytes."""
    escaped = text.encode("utf-8").decode("ascii", "backslashreplace")
    try:
        return ast.literal_eval(f'b"{escaped}"').decode("utf-8", errors="replace")
    except (SyntaxError, ValueError):
        raise CheckpointError(f"{source}: cannot parse the path {text!r}") from None


def _prefix_in_directory(directory: Path) -> Path:
    state = directory / "checkpoint"
    if state.is_file():
        text = state.read_text(encoding="utf-8", errors="replace")
        m = re.search(r'^model_checkpoint_path:\s*"((?:[^"\\]|\\.)*)"', text, re.MULTILINE)
        if m is None:
            raise CheckpointError(f"{state}: no model_checkpoint_path line in this state file")
        named = Path(_unescape_text_proto(m.group(1), state))
        prefix = named if named.is_absolute() else directory / named
        # A state file written on another machine names that machine's absolute path.
        if not Path(f"{prefix}.index").is_file() and Path(f"{directory / named.name}.index").is_file():
            prefix = directory / named.name
        if not Path(f"{prefix}.index").is_file():
            raise CheckpointError(f"{state} names checkpoint {named}, but {prefix}.index does not exist")
        return prefix
    indexes = sorted(directory.glob("*.index"))
    if len(indexes) == 1:
        return indexes[0].with_suffix("")
    if not indexes:
        raise CheckpointError(f"{directory}: no TensorFlow checkpoint here (no *.index file and "
                              "no `checkpoint` state file)")
    raise CheckpointError(f"{directory}: holds {len(indexes)} TensorFlow checkpoints "
                          f"({', '.join(p.name for p in indexes)}); pass the one to read, "
                          "e.g. .../model.ckpt-1000")


# ---- reading -------------------------------------------------------------------------------


class TFCheckpointReader:
    """The variables of one TensorFlow checkpoint; tensors read on demand, one at a time."""

    def __init__(self, path: str | Path):
        self.prefix = resolve_prefix(path)
        self.index_file = Path(f"{self.prefix}.index")
        if not self.index_file.is_file():
            raise CheckpointError(f"TensorFlow checkpoint not found: {self.index_file}")
        where = str(self.index_file)
        entries = _table_entries(self.index_file.read_bytes(), where)
        if not entries or entries[0][0] != b"":
            raise CheckpointError(f"{where}: no bundle header (key \"\"); not a TensorFlow V2 checkpoint")
        header = _parse_header(entries[0][1], where)
        if header.big_endian:
            raise CheckpointError(f"{where}: big-endian bundle; bertforge reads little-endian ones only")
        if header.min_consumer > 1:
            raise CheckpointError(f"{where}: bundle format needs a reader of version "
                                  f">= {header.min_consumer}; bertforge reads version 1")
        if header.num_shards < 1:
            raise CheckpointError(f"{where}: header says {header.num_shards} data shards")
        self.num_shards = header.num_shards
        self.verifies_checksums = tfwire.crc32c_extend is not None
        if not self.verifies_checksums:
            log.info("%s: reading %s without verifying checksums", tfwire.CRC32C_MISSING, self.prefix)
        # Keys starting with a 0 byte are the slices of partitioned variables (TensorFlow's
        # OrderedCode encoding of name + extent); the full variable has its own entry.
        self.variables: dict[str, TFVariable] = {}
        for key, value in entries[1:]:
            if key.startswith(b"\x00"):
                continue
            name = key.decode("utf-8", errors="replace")
            self.variables[name] = _parse_entry(name, value, where)

    def data_file(self, shard: int) -> Path:
        return Path(f"{self.prefix}.data-{shard:05d}-of-{self.num_shards:05d}")

    def list_variables(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """{name: (dtype name, shape)} of every variable, strings and partitioned ones included."""
        return {name: (v.dtype, v.shape) for name, v in self.variables.items()}

    def check_data_files(self, names: list[str] | None = None) -> None:
        """Fail early, naming them, if data shards that `names` (default: all) need are missing."""
        shards = {self.variables[n].shard for n in (self.variables if names is None else names)}
        missing = [self.data_file(s).name for s in sorted(shards)
                   if s < self.num_shards and not self.data_file(s).is_file()]
        if missing:
            raise CheckpointError(f"{self.prefix}: data shard(s) missing: {', '.join(missing)}")

    def read(self, name: str) -> np.ndarray:
        """One tensor as numpy, bytes exactly as stored (bfloat16 as uint16 bits)."""
        var = self._entry(name)
        np_dtype = _DTYPES_BY_NAME[var.dtype]
        if np_dtype is None:
            raise CheckpointError(f"{self.index_file}: variable {name!r} is a string tensor; "
                                  "only numeric tensors can be read")
        count = int(np.prod(var.shape, dtype=np.int64))
        if var.size != count * np_dtype.itemsize:
            raise CheckpointError(f"{self.index_file}: variable {name!r} ({var.dtype}{list(var.shape)}) "
                                  f"should take {count * np_dtype.itemsize} bytes, the index says {var.size}")
        buf = self._read_bytes(var)
        return np.frombuffer(buf, dtype=np_dtype).reshape(var.shape)

    def read_torch(self, name: str) -> torch.Tensor:
        """One tensor as torch, bfloat16 as torch.bfloat16."""
        tensor = torch.from_numpy(self.read(name))
        return tensor.view(torch.bfloat16) if self.variables[name].dtype == "bfloat16" else tensor

    def _entry(self, name: str) -> TFVariable:
        var = self.variables.get(name)
        if var is None:
            raise CheckpointError(f"{self.index_file}: no variable {name!r}")
        if var.num_slices:
            raise CheckpointError(
                f"{self.index_file}: variable {name!r} is saved in {var.num_slices} slices (a "
                "partitioned variable); bertforge reads whole tensors only. Re-save it "
                "unpartitioned with TensorFlow")
        if not 0 <= var.shard < self.num_shards:
            raise CheckpointError(f"{self.index_file}: variable {name!r} is in shard {var.shard}, "
                                  f"out of range for a {self.num_shards}-shard checkpoint")
        return var

    def _read_bytes(self, var: TFVariable) -> bytearray:
        path = self.data_file(var.shard)
        if not path.is_file():
            raise CheckpointError(f"{self.prefix}: data shard {path.name} is missing "
                                  f"(needed for {var.name!r})")
        file_size = os.path.getsize(path)
        if var.offset + var.size > file_size:
            raise CheckpointError(f"{path}: truncated: {var.name!r} needs bytes "
                                  f"[{var.offset}, {var.offset + var.size}), the file has {file_size}")
        # A writable buffer filled in place: one copy of the tensor in memory, never the file.
        buf = bytearray(var.size)
        with open(path, "rb") as f:
            f.seek(var.offset)
            got = f.readinto(buf)
        if got != var.size:
            raise CheckpointError(f"{path}: truncated while reading {var.name!r}")
        if var.crc32c is not None:
            actual = masked_crc32c(buf)
            if actual is not None and actual != var.crc32c:
                raise CheckpointError(f"{path}: checksum mismatch for {var.name!r}; the data file "
                                      "is corrupt")
        return buf



def list_variables(path: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{name: (dtype name, shape)} without reading any tensor data."""
    return TFCheckpointReader(path).list_variables()


def read_tf_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """Every numeric tensor of a checkpoint, by variable name (bfloat16 as raw uint16 bits; use
    `TFCheckpointReader.read_torch` for torch.bfloat16). String tensors are skipped.

    `path`: the prefix (`bert_model.ckpt`), its `.index`, a data shard, or a directory."""
    reader = TFCheckpointReader(path)
    names = [n for n, v in reader.variables.items() if v.dtype != "string"]
    skipped = len(reader.variables) - len(names)
    if skipped:
        log.info("%s: skipped %d string tensor(s)", reader.prefix, skipped)
    reader.check_data_files(names)
    return {name: reader.read(name) for name in names}


__all__ = ["TFCheckpointReader", "TFVariable", "list_variables", "read_tf_checkpoint",
           "resolve_prefix"]
