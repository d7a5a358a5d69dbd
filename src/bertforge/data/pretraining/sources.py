"""Which pretraining data a flag names, and the reader for it.

Either a directory `bertforge prepare pretraining` wrote (it has manifest.json; read by
`PretrainingDataset`, masks drawn at load time), or files another toolkit prepared, read by
`StaticMaskDataset` with the masks they hold: NVIDIA/Habana HDF5 or Google/MLPerf TFRecords.
Those are given as a directory (its files, not its subdirectories), a glob, comma-separated
paths, or a list of any of these; the format is detected from the files' first bytes (MLPerf's
files have no extension), and one data set is one format.
"""

from __future__ import annotations

import glob
import logging
import os
from collections import defaultdict
from pathlib import Path

from bertforge.data.pretraining.dataset import PretrainingDataset
from bertforge.data.pretraining.hdf5 import Hdf5Shard, is_hdf5
from bertforge.data.pretraining.shards import MANIFEST
from bertforge.data.pretraining.static_masks import StaticMaskDataset
from bertforge.data.pretraining.tfrecord import (HEADER_BYTES, TFRecordShard, has_damaged_header, looks_like_tfrecord,
                                                 verifies_checksums)
from bertforge.errors import DataError
from bertforge.tfwire import CRC32C_MISSING

log = logging.getLogger(__name__)

SUPPORTED = ("a directory written by `bertforge prepare pretraining` (with manifest.json), "
             "NVIDIA/Habana HDF5 files, or Google/MLPerf TFRecord files of tf.train.Example "
             "(uncompressed)")
_READERS = {"HDF5": Hdf5Shard, "TFRecord": TFRecordShard}
DAMAGED_TFRECORD = "corrupt TFRecord"


def resolve_files(spec: str | list[str], flag: str) -> list[Path]:
    """The files `spec` names, in order: a directory's files (hidden ones skipped) and a glob's
    matches sorted by name, the rest as given; a file named twice is read once."""
    items = [part.strip() for item in ([spec] if isinstance(spec, str) else spec)
             for part in item.split(",") if part.strip()]
    if not items:
        raise DataError(f"{flag}: no paths given")
    files: dict[Path, None] = {}
    for item in items:
        path = Path(item)
        if glob.has_magic(item):
            matches = sorted(Path(m) for m in glob.glob(item) if Path(m).is_file())
            if not matches:
                raise DataError(f"{flag}: no file matches {item}")
            files.update(dict.fromkeys(matches))
        elif path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
            if not inside:
                raise DataError(f"{flag}: {path} holds no files")
            files.update(dict.fromkeys(inside))
        elif path.is_file():
            files[path] = None
        else:
            raise DataError(f"{flag}: {path} does not exist")
    return list(files)


def sniff(path: Path) -> str:
    """What a file is, from its first bytes: HDF5, TFRecord, or a description of something else."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(512)
    if is_hdf5(head):
        return "HDF5"
    if looks_like_tfrecord(head[:HEADER_BYTES + 1], size):
        return "TFRecord"
    if has_damaged_header(head):
        return DAMAGED_TFRECORD
    if not head:
        return "empty"
    if head.startswith(b"\x1f\x8b"):
        return "gzip-compressed"
    if head.startswith(b"\x93NUMPY"):
        return "NumPy .npy"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "unrecognized"
    return "text" if "\x00" not in text else "unrecognized"


def open_pretraining_data(spec: str | list[str], *, flag: str, seed: int, shuffle_window: int = 1,
                          prepared_split: str = "train") -> PretrainingDataset | StaticMaskDataset:
    """The reader for the data `spec` names (see the module docstring). Prepared data reads
    its `prepared_split` with its manifest's seed; other data is ordered by `seed`."""
    single = spec if isinstance(spec, str) else spec[0] if len(spec) == 1 else None
    if single is not None and "," not in single and (Path(single) / MANIFEST).is_file():
        _check_only_prepared(Path(single), flag)
        return PretrainingDataset(single, prepared_split)
    files = resolve_files(spec, flag)
    kinds: dict[str, list[Path]] = defaultdict(list)
    for path in files:
        kinds["prepared data" if path.name == MANIFEST else sniff(path)].append(path)
    if len(kinds) == 1 and next(iter(kinds)) in _READERS:
        kind = next(iter(kinds))
        reader = _READERS[kind]
        data = StaticMaskDataset([reader(p) for p in files], seed=seed, shuffle_window=shuffle_window,
                                 source=f"{flag} {_shown(spec)}")
        log.info("%s: %s", flag, data.describe())
        if kind == "TFRecord" and not verifies_checksums():
            log.info("%s: TFRecord checksums are not verified", CRC32C_MISSING)
        return data
    if DAMAGED_TFRECORD in kinds:
        raise DataError(f"{flag}: {kinds[DAMAGED_TFRECORD][0]}: the first record's length checksum does not "
                        "match: a corrupt TFRecord file (truncated or damaged in a copy); write or copy it again")
    found = "; ".join(f"{len(paths)} {kind} ({_names(paths)})" for kind, paths in sorted(kinds.items()))
    if len(kinds) > 1 and set(kinds) & set(_READERS):
        raise DataError(f"{flag} {_shown(spec)}: files of several kinds: {found}. One data set is one "
                        "format; name its files with a glob or a list")
    hint = ""
    if "prepared data" in kinds:
        hint = f". For prepared data pass its directory ({kinds['prepared data'][0].parent}) alone"
    elif "gzip-compressed" in kinds:
        hint = ". Decompress gzip-compressed files first"
    raise DataError(f"{flag} {_shown(spec)}: no pretraining data bertforge reads. Found: {found}. "
                    f"Supported: {SUPPORTED}{hint}")


def _check_only_prepared(directory: Path, flag: str) -> None:
    """A prepared directory that also holds HDF5 or TFRecord files is two data sets in one
    place; reading only the prepared one would silently leave the others out."""
    others: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")):
        if not path.name.endswith((".npy", ".json", ".txt")):
            kind = sniff(path)
            if kind in _READERS:
                others[kind].append(path)
    if others:
        found = "; ".join(f"{len(paths)} {kind} ({_names(paths)})" for kind, paths in sorted(others.items()))
        raise DataError(f"{flag} {directory}: files of several kinds: prepared data ({MANIFEST}) and {found}. "
                        "One data set is one format; keep the prepared data in a directory of its own, or "
                        "name the other files with a glob or a list")


def _shown(spec: str | list[str]) -> str:
    return spec if isinstance(spec, str) else ",".join(spec)


def _names(paths: list[Path], shown: int = 3) -> str:
    names = ", ".join(p.name for p in paths[:shown])
    return names + (f", ... {len(paths) - shown} more" if len(paths) > shown else "")


__all__ = ["SUPPORTED", "open_pretraining_data", "resolve_files", "sniff"]
