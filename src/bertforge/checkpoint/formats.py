"""The checkpoint formats, one entry each: how to tell it from what is on disk, how to read it,
and, for the formats bertforge writes, how to write it. A new format is a module that builds a
`common.Checkpoint` and an entry in FORMATS.

`load.detect_format` walks FORMATS in order and takes the first format whose `detect` accepts
the path, so an entry may accept what an earlier one also does: a native directory holds a
model.safetensors, as a Hugging Face directory does, and native comes first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bertforge.checkpoint.common import Checkpoint, CheckpointInfo
from bertforge.checkpoint.google import load_tf_checkpoint, peek_tf_checkpoint
from bertforge.checkpoint.hf import WEIGHT_FILES, find_weights, load_hf, peek_hf, save_hf
from bertforge.checkpoint.native import NATIVE_META, load_native, peek_native, save_native_checkpoint
from bertforge.checkpoint.nvidia import load_nvidia_checkpoint, peek_nvidia_checkpoint
from bertforge.config import BertConfig

ConfigSource = str | Path | BertConfig | None


@dataclass(frozen=True)
class FormatSpec:
    """One checkpoint format."""

    name: str
    """What `Checkpoint.format` records and `--format` (and, with `save`, `--to`) takes."""
    detect: Callable[[Path], bool]
    """Whether the path (a directory, a file, or a TensorFlow prefix that names no file) holds a
    checkpoint of this format."""
    load: Callable[[Path, ConfigSource], Checkpoint]
    """Reads it; the config (a BertConfig, preset or file) serves checkpoints without one beside."""
    peek: Callable[[Path, ConfigSource], CheckpointInfo]
    """Reads what it says about itself (config, vocabulary, casing) but not its weights."""
    in_directory: str
    """What marks a directory of this format, for the error when nothing does."""
    files: str
    """Which single files are of this format ("" when only directories are), for the error."""
    save: Callable[[Checkpoint, Path], Path] | None = None
    """Writes a loaded checkpoint of any format as this one, into a directory."""


def _is_native(path: Path) -> bool:
    return (path / NATIVE_META).is_file()


def _is_hf(path: Path) -> bool:
    if path.is_dir():
        return find_weights(path) is not None
    return path.is_file() and path.name.endswith((".safetensors", ".bin", ".index.json"))


def _is_tf(path: Path) -> bool:
    if path.is_dir():
        return any(path.glob("*.index"))
    if path.exists():  # the index, a data shard, or the prefix where a file has that name
        return path.name.endswith(".index") or ".ckpt" in path.name
    return Path(f"{path}.index").is_file()  # a prefix such as bert_model.ckpt names no file


def _is_nvidia(path: Path) -> bool:
    if path.is_dir():
        return len(list(path.glob("*.pt"))) == 1
    return path.is_file() and path.name.endswith((".pt", ".pth"))


FORMATS: dict[str, FormatSpec] = {spec.name: spec for spec in (
    # A native checkpoint carries its config: a config given for other formats is not used.
    FormatSpec("native", _is_native, lambda path, _config: load_native(path), peek_native,
               in_directory=NATIVE_META, files="", save=save_native_checkpoint),
    FormatSpec("hf", _is_hf, load_hf, peek_hf, in_directory=", ".join(WEIGHT_FILES),
               files="*.safetensors, *.bin (or their *.index.json)", save=save_hf),
    FormatSpec("tf", _is_tf, load_tf_checkpoint, peek_tf_checkpoint, in_directory="a TensorFlow *.ckpt.index",
               files="a TensorFlow *.ckpt prefix / *.ckpt.index"),
    FormatSpec("nvidia", _is_nvidia, load_nvidia_checkpoint, peek_nvidia_checkpoint, in_directory="one DLE *.pt file",
               files="a DLE *.pt / *.pth"),
)}

# The formats bertforge writes (`bertforge convert --to`).
TARGETS = tuple(name for name, spec in FORMATS.items() if spec.save is not None)


__all__ = ["FORMATS", "TARGETS", "FormatSpec"]
