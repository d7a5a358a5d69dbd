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
    sampling   EpochCursor: batching, rank sharding and the resumable cursor both readers share

Data other toolkits prepared, read with the masks it holds:

    hdf5          NVIDIA DeepLearningExamples' and Habana's packed HDF5 shards
    tfrecord      Google's and MLPerf's TFRecords of tf.train.Example, without TensorFlow
    static_masks  StaticMaskDataset, the reader over such files (streamed, shuffled by windows)
    sources       open_pretraining_data: which reader a --input_dir / --eval_dir value needs

docs/pretraining_data.md records the design choices and their measurements.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from bertforge.data.pretraining.config import PrepareConfig
from bertforge.data.pretraining.corpus import SPLITS
from bertforge.data.pretraining.prepare import prepare_pretraining_data
from bertforge.data.pretraining.shards import INDEX_DTYPE, MANIFEST, VOCAB, read_manifest

if TYPE_CHECKING:
    from bertforge.data.pretraining.dataset import PretrainingDataset
    from bertforge.data.pretraining.sources import open_pretraining_data
    from bertforge.data.pretraining.static_masks import StaticMaskDataset

__all__ = ["INDEX_DTYPE", "MANIFEST", "SPLITS", "VOCAB", "PrepareConfig", "PretrainingDataset",
           "StaticMaskDataset", "open_pretraining_data", "prepare_pretraining_data", "read_manifest"]

# The readers need torch; the spawned preparation workers import this package (to reach
# `instances`) and should not pay for torch, so the readers are imported on first use.
_LAZY = {"PretrainingDataset": "dataset", "StaticMaskDataset": "static_masks",
         "open_pretraining_data": "sources"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
