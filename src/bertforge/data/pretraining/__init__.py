"""BERT pretraining data: text corpus -> shards of unmasked instances -> masked batches.

The library of `bertforge prepare pretraining` and of the data side of `bertforge pretrain`.
It builds the instances of Google's `create_pretraining_data.py`, but streams (any corpus size
in bounded memory, on all cores) and stores them once, unmasked: the masks are drawn when
training reads a batch. One module a stage:

    config     PrepareConfig, the settings (checked when built)
    corpus     input files, documents read in bounded pieces, the held-out choice
    chunks     the document stream cut into units of work
    instances  sentence splitting, WordPiece, Google's pairing (runs in worker processes)
    shards     shard files and the manifest
    prepare    prepare_pretraining_data, the orchestration
    dataset    PretrainingDataset, the reader with dynamic masking

docs/pretraining_data.md records the design choices and their measurements.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bertforge.data.pretraining.config import PrepareConfig
from bertforge.data.pretraining.corpus import SPLITS
from bertforge.data.pretraining.prepare import prepare_pretraining_data
from bertforge.data.pretraining.shards import INDEX_DTYPE, MANIFEST, VOCAB, read_manifest

if TYPE_CHECKING:
    from bertforge.data.pretraining.dataset import PretrainingDataset

__all__ = ["INDEX_DTYPE", "MANIFEST", "SPLITS", "VOCAB", "PrepareConfig", "PretrainingDataset",
           "prepare_pretraining_data", "read_manifest"]


def __getattr__(name: str) -> Any:
    # The reader needs torch; the spawned preparation workers import this package (to reach
    # `instances`) and should not pay for torch, so the reader is imported on first use.
    if name == "PretrainingDataset":
        from bertforge.data.pretraining.dataset import PretrainingDataset
        return PretrainingDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
