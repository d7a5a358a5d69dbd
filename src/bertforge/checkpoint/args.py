"""The flags of `bertforge convert` and `bertforge info`.

This module imports no torch (nor the format modules, which do): the CLI builds the commands'
`--help` from it alone. It therefore names the formats itself; tests/checkpoint/test_formats.py
checks that the names agree with `formats.FORMATS` and `formats.TARGETS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# The formats bertforge reads (formats.FORMATS, in detection order) and writes (formats.TARGETS).
FORMAT_NAMES = ("native", "hf", "tf", "nvidia")
TARGET_NAMES = ("native", "hf")


@dataclass
class ConvertArgs:
    """Convert a checkpoint (format detected: bertforge, Hugging Face, Google TF, NVIDIA DLE)."""

    src: str
    """The checkpoint: a directory, a weights file, a TF checkpoint prefix (bert_model.ckpt), or a
    Hugging Face Hub model id (bert-base-uncased, user/model)."""
    dst: str
    """The output directory."""
    to: Literal[TARGET_NAMES] = "native"
    """native (bertforge: safetensors + config.json + bertforge.json) or hf (transformers' layout)."""
    bert_model: str | None = None
    """The source's bert_config.json when it is not beside the checkpoint (also --bert_config_file)."""
    vocab_file: str | None = None
    """A vocab.txt to ship with the result when the source has none beside it."""
    do_lower_case: bool | None = None
    """Record the casing when the source does not (Google TF checkpoints rarely do)."""
    format: Literal[("auto", *FORMAT_NAMES)] = "auto"
    """Force the source format instead of detecting it."""
    force: bool = False
    """Replace the checkpoint in a non-empty destination (its checkpoint files are removed first;
    any other file there is an error, never deleted)."""


@dataclass
class InfoArgs:
    """Print what a checkpoint holds."""

    checkpoint: str
    """A checkpoint directory, weights file, TF checkpoint prefix, or Hugging Face Hub model id."""
    bert_model: str | None = None
    """The bert_config.json when it is not beside the checkpoint (also --bert_config_file)."""
    json: bool = False
    """Print one JSON object instead of text."""
