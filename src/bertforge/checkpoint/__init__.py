"""Checkpoints in every format bertforge reads, and its own.

Layout (each format module imports only `common`, and `hf`'s name map where it maps through
Hugging Face names):
- `common`:        the `Checkpoint` dataclass, weight-file readers, config/vocab/casing lookup.
- `native`, `hf`, `google` (+ `tf_checkpoint`, the TF bundle reader), `nvidia`: one per format.
- `hub`:           Hugging Face Hub model ids as sources, through huggingface_hub.
- `formats`:       the table of formats (`FORMATS`: detect, load, save), one entry each.
- `load`:          format detection, `load_checkpoint`, `load_into`.
- `save`:          `save_checkpoint_as` (native or Hugging Face) into a clean directory.
- `args`:          the flags of `convert` and `info` (no torch: `--help` reads them alone).
- `commands`:      the `convert` and `info` commands.
Design notes: docs/checkpoints.md.

The names below are imported when first used, not with the package, so that importing
`bertforge.checkpoint.args` imports no torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Checkpoint", "LoadReport", "detect_format", "hf_to_native", "load_checkpoint", "load_into",
           "native_to_hf", "save_checkpoint_as", "save_native"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from bertforge.checkpoint.common import Checkpoint
    from bertforge.checkpoint.hf import hf_to_native, native_to_hf
    from bertforge.checkpoint.load import LoadReport, detect_format, load_checkpoint, load_into
    from bertforge.checkpoint.native import save_native
    from bertforge.checkpoint.save import save_checkpoint_as

    exports = {"Checkpoint": Checkpoint, "LoadReport": LoadReport, "detect_format": detect_format,
               "hf_to_native": hf_to_native, "load_checkpoint": load_checkpoint, "load_into": load_into,
               "native_to_hf": native_to_hf, "save_checkpoint_as": save_checkpoint_as, "save_native": save_native}
    globals().update(exports)  # later lookups find them without this function
    return exports[name]
