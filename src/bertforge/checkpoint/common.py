"""What every checkpoint format shares: the `Checkpoint` each reader returns, the readers of weight
files with their clear errors, what is looked up beside a checkpoint (config, vocabulary, casing),
and the atomic directory write both writers use.

The format modules (`native`, `hf`, `google`, `nvidia`) import from here and from nowhere else
in this package, except that formats read through Hugging Face names use `hf`'s name map.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from bertforge.config import BertConfig, find_config_file, resolve_config
from bertforge.errors import CheckpointError
from bertforge.fileio import (WRITE_FAILURES, check_free_space, default_file_mode, describe_os_error,
                              fsync_directory, write_error)
from bertforge.model.heads import heads_in, num_labels_in

log = logging.getLogger(__name__)


@dataclass
class Checkpoint:
    """Weights in bertforge names with what is known about them."""

    config: BertConfig
    """The architecture the weights belong to."""
    state: dict[str, Tensor]
    """Tensors by bertforge parameter name (`bert.encoder.layers.0.attention.qkv.weight`, ...)."""
    source: Path
    """Where the checkpoint was read from (a directory, a weights file or a TF prefix)."""
    format: str
    """The format it was read as: a name in `bertforge.checkpoint.formats.FORMATS`."""
    labels: list[str] | None = None
    """Class names of a classification head, in output order, when the checkpoint records them."""
    vocab_file: Path | None = None
    """The vocab.txt beside the checkpoint, if there is one."""
    do_lower_case: bool | None = None
    """Whether the model is uncased; None when nothing says."""
    meta: dict = field(default_factory=dict)
    """The bertforge.json of a native checkpoint; for other formats, what their files record of
    it (`CARRIED_META`)."""

    @property
    def heads(self) -> set[str]:
        """Which heads the weights include trained (see `bertforge.model.heads.HEADS`)."""
        return heads_in(self.state)

    @property
    def head(self) -> str:
        """The one head to record when writing: the only head present, else pretraining when
        present (a pretraining checkpoint fine-tuned in place keeps its MLM head), else base."""
        heads = self.heads
        if len(heads) == 1:
            return next(iter(heads))
        return "pretraining" if "pretraining" in heads else "base"

    @property
    def num_labels(self) -> int | None:
        return num_labels_in(self.state)


@dataclass
class CheckpointInfo:
    """What a checkpoint says about itself before its weights are read: enough to check the
    flags and data of a run against it before any work (`load.peek_checkpoint`)."""

    format: str
    config: BertConfig
    """The architecture (a DLE-padded vocabulary shows only in the weights, not here)."""
    vocab_file: Path | None = None
    do_lower_case: bool | None = None
    labels: list[str] | None = None
    meta: dict = field(default_factory=dict)


# What a fine-tuned checkpoint records besides its weights that changes how it is used (SQuAD
# v2.0 models answer "" when the null answer wins): carried through every conversion.
CARRIED_META = ("task", "version_2_with_negative")


# ---- reading weight files ----------------------------------------------------------------


def read_safetensors(path: Path) -> dict[str, Tensor]:
    # safetensors reports every failure to open a file as "No such file or directory": open it
    # here first, so that a file without read permission says so.
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read safetensors file: {describe_os_error(e)}") from None
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read safetensors file ({e}); is it truncated or "
                              "not a safetensors file?") from None


def read_torch_file(path: Path) -> object:
    """The unpickled object of a PyTorch file (`pytorch_model.bin`, DLE `.pt`), loaded with
    weights_only=True so that a malicious file cannot run code."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: cannot read PyTorch checkpoint ({msg}); is it truncated, "
                              "or not a PyTorch checkpoint?") from None


def state_dict_of(obj: object, path: Path) -> dict[str, Tensor]:
    """The model's state dict in an unpickled PyTorch file: the object itself, or its `model`
    entry (`{'model': state_dict, ...}`, as NVIDIA's and many other training scripts save)."""
    wrapped = isinstance(obj, dict) and "model" in obj
    state = obj["model"] if wrapped else obj
    if not isinstance(state, dict) or not state or (
            not wrapped and not all(isinstance(v, Tensor) for v in state.values())):
        if isinstance(obj, dict):
            found = f"keys {', '.join(map(str, obj))}" if obj else "an empty dict"
        else:
            found = f"a {type(obj).__name__}"
        raise CheckpointError(f"{path}: expected a state dict or {{'model': state_dict, ...}}; "
                              f"found {found}")
    bad = [str(k) for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: the model state holds non-tensor entries: {', '.join(bad[:8])}")
    return state


# ---- what lies beside a checkpoint -------------------------------------------------------


def _directory(path: Path) -> Path:
    return path if path.is_dir() else path.parent


def config_beside(path: Path, config: str | Path | BertConfig | None, what: str) -> BertConfig:
    """The config given explicitly (a BertConfig, preset or file), else the one in the
    checkpoint's directory; `what` names the format in the error when there is none."""
    if isinstance(config, BertConfig):
        return config
    if config is not None:
        return resolve_config(config)
    found = find_config_file(_directory(path))
    if found is None:
        raise CheckpointError(f"{path}: {what} checkpoint has no bert_config.json/config.json beside it; "
                              "pass one with --bert_config_file")
    return BertConfig.from_json(found)


def vocab_beside(path: Path) -> Path | None:
    vocab = _directory(path) / "vocab.txt"
    return vocab if vocab.is_file() else None


def infer_do_lower_case(path: Path) -> bool | None:
    """Casing from Google's release names (`uncased_L-12_H-768_A-12`, `multi_cased_L-12_...`,
    `wwm_uncased_...`) in the checkpoint's directory or file name; None when neither says.
    Parent directories are not read: their names describe the user's layout, not the model."""
    for name in (_directory(path).name, path.name):
        words = set(re.split(r"[^a-z0-9]+", name.lower()))
        if ("uncased" in words) != ("cased" in words):
            return "uncased" in words
    return None


VOCAB_PAD_MULTIPLE = 8  # NVIDIA DLE's scripts pad the vocabulary to a multiple of this


def adopt_padded_vocab(config: BertConfig, state: dict[str, Tensor], source: str) -> BertConfig:
    """`config` with vocab_size set to the word embeddings' row count when the checkpoint is
    DLE-padded (rows = vocab_size rounded up to a multiple of 8); unchanged otherwise.

    The rows are kept, not cut: the model is then exactly the one that was trained, MLM softmax
    included, and the extra rows are never looked up (the tokenizer's ids stay below the vocab
    file's size)."""
    embeddings = state.get("bert.embeddings.word_embeddings.weight")
    if embeddings is None or embeddings.shape[0] == config.vocab_size:
        return config
    rows = int(embeddings.shape[0])
    padded = -(-config.vocab_size // VOCAB_PAD_MULTIPLE) * VOCAB_PAD_MULTIPLE
    if rows != padded:
        return config  # not DLE's padding: load_into reports the mismatch
    log.info("%s: vocabulary padded to a multiple of %d (%d rows for vocab_size %d); using "
             "vocab_size=%d. Ids from %d up are never produced by the tokenizer",
             source, VOCAB_PAD_MULTIPLE, rows, config.vocab_size, rows, config.vocab_size)
    return dataclasses.replace(config, vocab_size=rows)


# ---- writing -----------------------------------------------------------------------------

TMP_PREFIX = ".tmp-"  # the temporary directory of a write in progress (or interrupted)


def atomic_dir_write(out_dir: Path, write: Callable[[Path], None], last: str | None = None,
                     needed: int | None = None) -> None:
    """Call `write(tmp)` on a temporary directory inside `out_dir`, fsync what it wrote, then
    move each file into `out_dir` with os.replace, `last` (the file that marks the checkpoint
    complete) last: a crash never leaves a half-written weights file under its final name.

    `needed` is what the files take (bytes), when known: less free space than that fails before
    anything is written. A failed write removes its temporary directory (and `out_dir`, when
    this call created it and it is still empty) and raises `WriteError` naming `out_dir`."""
    created = not out_dir.exists()
    if needed is not None:
        check_free_space(out_dir, needed, "the files")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=TMP_PREFIX) as tmp:
            tmp_path = Path(tmp)
            write(tmp_path)
            names = sorted(p.name for p in tmp_path.iterdir())
            names.sort(key=lambda n: n == last)
            for name in names:
                if (tmp_path / name).is_file():
                    os.chmod(tmp_path / name, default_file_mode())  # some writers (safetensors) make 0600
                    _fsync_file(tmp_path / name)
            for name in names:
                os.replace(tmp_path / name, out_dir / name)
        fsync_directory(out_dir)
    except WRITE_FAILURES as e:
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise write_error(out_dir, e, needed) from None


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def state_bytes(state: dict[str, Tensor]) -> int:
    """What a state dict's tensors take on disk (safetensors adds a small header)."""
    return sum(t.numel() * t.element_size() for t in state.values())
