"""Writing a loaded checkpoint in bertforge's format or Hugging Face's (the formats with a `save`
in `formats.FORMATS`; the second half of `bertforge convert`), into a directory that holds
nothing else.

A conversion over an earlier one (`overwrite`, `--force`) writes the new checkpoint beside the
old one (in a hidden directory inside it) and only then removes the earlier checkpoint's files,
because one left behind changes how the directory is read, and moves the new ones in: a write
that fails (a full disk) leaves the earlier checkpoint as it was. Any other entry there makes
it refuse, naming it, so a user's own files are never deleted.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from bertforge.checkpoint.common import TMP_PREFIX, Checkpoint
from bertforge.checkpoint.formats import FORMATS, TARGETS
from bertforge.checkpoint.hf import WEIGHT_FILES
from bertforge.checkpoint.native import NATIVE_CONFIG, NATIVE_META, NATIVE_WEIGHTS
from bertforge.errors import ConfigError

# Files of a checkpoint directory in any format bertforge reads or writes (tokenizer files
# included: transformers' save_pretrained writes them beside the weights).
CHECKPOINT_FILES = frozenset({
    NATIVE_META, NATIVE_CONFIG, NATIVE_WEIGHTS, *WEIGHT_FILES, "bert_config.json", "vocab.txt",
    "tokenizer_config.json", "tokenizer.json", "special_tokens_map.json",
})
_SHARD = re.compile(r"(model|pytorch_model)-\d+-of-\d+\.(safetensors|bin)")


def _is_checkpoint_entry(path: Path) -> bool:
    if path.is_symlink() or not path.is_dir():
        return path.name in CHECKPOINT_FILES or _SHARD.fullmatch(path.name) is not None
    return path.name.startswith(TMP_PREFIX)  # left by an interrupted write


def _within(path: Path, directory: Path) -> bool:
    resolved = path.resolve()
    return directory.resolve() in (resolved, *resolved.parents)


def prepare_destination(out_dir: Path, overwrite: bool, needed: tuple[Path | None, ...] = ()) -> list[Path]:
    """The entries an earlier checkpoint left in `out_dir`, to remove before writing there.

    ConfigError when `out_dir` is not empty and `overwrite` is False, when it holds anything
    that is not part of a checkpoint (named in the message), or when it holds one of the
    `needed` paths (the source checkpoint, its vocab file). Removes nothing itself."""
    if not out_dir.exists():
        return []
    if not out_dir.is_dir():
        raise ConfigError(f"{out_dir} exists and is not a directory")
    entries = sorted(out_dir.iterdir())
    if not entries:
        return []
    if not overwrite:
        raise ConfigError(f"{out_dir} exists and is not empty; pass --force to replace the "
                          "checkpoint in it")
    inside = [str(p) for p in needed if p is not None and _within(p, out_dir)]
    if inside:
        raise ConfigError(f"{out_dir} holds what is being converted ({', '.join(inside)}); replacing "
                          "it would delete it: write into another directory")
    foreign = [p.name for p in entries if not _is_checkpoint_entry(p)]
    if foreign:
        raise ConfigError(f"{out_dir} holds entries that are not part of a checkpoint: "
                          f"{', '.join(foreign)}; bertforge does not delete them: move them away "
                          "or choose another destination")
    return entries


def save_checkpoint_as(ckpt: Checkpoint, out_dir: str | Path, to: str = "native",
                       overwrite: bool = False) -> Path:
    """Write a loaded checkpoint in the format `to` (one of TARGETS) into `out_dir`.
    `overwrite` replaces an earlier checkpoint there (see the module docstring)."""
    if to not in TARGETS:
        raise ConfigError(f"--to must be {' or '.join(map(repr, TARGETS))}, got {to!r}")
    out_dir = Path(out_dir)
    earlier = prepare_destination(out_dir, overwrite, needed=(ckpt.source, ckpt.vocab_file))
    if not earlier:
        return FORMATS[to].save(ckpt, out_dir)
    staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=TMP_PREFIX))
    try:
        FORMATS[to].save(ckpt, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for entry in earlier:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    # The file that marks the format (what detection looks for) moves in last.
    for name in sorted((p.name for p in staging.iterdir()), key=lambda n: n == _MARKERS[to]):
        os.replace(staging / name, out_dir / name)
    staging.rmdir()
    return out_dir


_MARKERS = {"native": NATIVE_META, "hf": "model.safetensors"}
