"""Order, sharding and resume, shared by the pretraining readers (`PretrainingDataset` for
prepared data, `StaticMaskDataset` for NVIDIA/Habana HDF5 and Google/MLPerf TFRecords).

A reader numbers its samples 0..N-1 in stored order and says which sample is at each position
of an epoch (`epoch_indices`, drawn from (seed, epoch) alone). Global batch k of an epoch is
positions [k*G, (k+1)*G); rank r of w takes rows [r*B, (r+1)*B) with B = G / w, so two ranks
at B see exactly the rows one rank at 2B sees. The incomplete last global batch of an epoch is
dropped (every step has the same shape). The cursor (epoch, position in samples) is advanced
before a batch is handed out, so `state_dict()` taken after a step names the next batch, for
any world size with the same global batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from bertforge.errors import CheckpointError, ConfigError

Batch = dict[str, torch.Tensor]


class EpochCursor:
    """The batching shared by the readers. A subclass sets `num_samples` and `source` (what to
    name in messages), calls `_init_cursor()`, and supplies `epoch_indices`, `collate` and
    `identity`."""

    num_samples: int
    source: str

    def _init_cursor(self) -> None:
        self._epoch = 0
        self._position = 0

    def epoch_indices(self, epoch: int, lo: int, hi: int) -> np.ndarray:
        """The samples at positions [lo, hi) of epoch `epoch`."""
        raise NotImplementedError

    def collate(self, indices: np.ndarray, epoch: int) -> Batch:
        """The batch of samples `indices` (B,), as epoch `epoch` reads them."""
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """What a saved cursor must agree with to continue on this data (JSON values)."""
        raise NotImplementedError

    def __len__(self) -> int:
        return self.num_samples

    def batches(self, global_batch_size: int, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        """Training batches from the cursor on, epoch after epoch, without end: this rank's
        B = global_batch_size / world_size rows of each global batch (see the module docstring).
        Advances the cursor; make a new iterator after `load_state_dict`."""
        per_rank = per_rank_rows(global_batch_size, rank, world_size)
        if global_batch_size > self.num_samples:
            raise ConfigError(f"global batch size {global_batch_size} exceeds the "
                              f"{self.num_samples} samples of {self.source}")
        while True:
            while self._position + global_batch_size <= self.num_samples:
                first = self._position + rank * per_rank
                epoch = self._epoch
                indices = self.epoch_indices(epoch, first, first + per_rank)
                self._position += global_batch_size
                yield self.collate(indices, epoch)
            self._epoch, self._position = self._epoch + 1, 0

    def eval_batches(self, global_batch_size: int, rank: int = 0, world_size: int = 1,
                     max_samples: int | None = None) -> Iterator[Batch]:
        """Every sample once (the first `max_samples` if given), in stored order, as epoch 0
        reads them: rows [r*B, (r+1)*B) of each global batch; the last global batch may be
        short, so a rank can get a short batch or none (reduce sums, not per-batch means,
        across ranks). Leaves the cursor alone."""
        per_rank = per_rank_rows(global_batch_size, rank, world_size)
        total = self.num_samples if max_samples is None else min(max_samples, self.num_samples)
        for first in range(0, total, global_batch_size):
            lo = first + rank * per_rank
            hi = min(lo + per_rank, total)
            if lo < hi:
                yield self.collate(np.arange(lo, hi), 0)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "position": self._position, **self.identity()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in self.identity().items():
            if state.get(key) != value:
                raise CheckpointError(
                    f"data state has {key}={state.get(key)!r} but {self.source} has {value!r}; "
                    "resume needs the same data")
        if not 0 <= state["position"] <= self.num_samples or state["epoch"] < 0:
            raise CheckpointError(f"data state out of range: epoch {state['epoch']}, "
                                  f"position {state['position']} of {self.num_samples}")
        self._epoch, self._position = int(state["epoch"]), int(state["position"])


def per_rank_rows(global_batch_size: int, rank: int, world_size: int) -> int:
    """B, the rows of each global batch that one rank takes."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is not in [0, world_size={world_size})")
    if global_batch_size < 1 or global_batch_size % world_size:
        raise ConfigError(f"global batch size {global_batch_size} must be a positive multiple "
                          f"of the world size {world_size}")
    return global_batch_size // world_size
