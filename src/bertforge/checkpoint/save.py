"""Writing a loaded checkpoint in bertforge's format or Hugging Face's (the second half of
`bertforge convert`)."""

from __future__ import annotations

from pathlib import Path

from bertforge.checkpoint.common import Checkpoint
from bertforge.checkpoint.hf import save_hf
from bertforge.checkpoint.native import save_native_checkpoint
from bertforge.errors import ConfigError

TARGETS = ("native", "hf")


def save_checkpoint_as(ckpt: Checkpoint, out_dir: str | Path, to: str = "native") -> Path:
    """Write a loaded checkpoint in bertforge's format or Hugging Face's."""
    if to not in TARGETS:
        raise ConfigError(f"--to must be 'native' or 'hf', got {to!r}")
    out_dir = Path(out_dir)
    if to == "native":
        return save_native_checkpoint(ckpt, out_dir)
    return save_hf(ckpt, out_dir)
