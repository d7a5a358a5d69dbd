"""Batches for the training loop, deterministic and resumable.

Each optimizer step consumes one *global batch*: samples [k*G, (k+1)*G) of the epoch's
permutation (drawn from (seed, epoch) alone), G = per-device batch x devices x accumulation.
Rank r takes its contiguous share and cuts it into micro-batches. Which rank or micro-batch a
sample lands in never changes which samples make up a step, so 1 device x batch 2B, 2 devices x
batch B and 1 device x B x 2 accumulation steps see the same data; a resumed run continues at
the same step of the same permutation.

Micro-batches are trimmed to their longest sequence (rounded up to a multiple of 8): padding
does not change BERT's outputs, so this saves work without changing the math.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Mapping

import numpy as np
import torch

from bertforge.errors import ConfigError

PAD_MULTIPLE = 8
# Arrays of shape (N, T) that are cut to the batch's length; everything else is per sample.
SEQUENCE_KEYS = ("input_ids", "token_type_ids", "attention_mask")


def trim_padding(batch: dict[str, torch.Tensor], multiple: int = PAD_MULTIPLE) -> dict[str, torch.Tensor]:
    """Cut (B, T) sequence tensors to the longest real sequence, rounded up to `multiple`."""
    mask = batch["attention_mask"]
    T = mask.shape[1]
    longest = int(mask.sum(dim=1).max().item()) if mask.numel() else T
    keep = min(T, -(-longest // multiple) * multiple)
    if keep == T:
        return batch
    return {k: (v[:, :keep] if k in SEQUENCE_KEYS else v) for k, v in batch.items()}


def to_tensors(arrays: Mapping[str, np.ndarray], index: np.ndarray) -> dict[str, torch.Tensor]:
    """Rows `index` of each array; compactly stored integers (int8/int32 features) become int64,
    the index type embeddings and losses take."""
    out = {}
    for k, v in arrays.items():
        rows = np.ascontiguousarray(v[index])
        if rows.dtype.kind in "iu" and rows.dtype != np.int64:
            rows = rows.astype(np.int64)
        out[k] = torch.from_numpy(rows)
    return out


@dataclass
class StepPlan:
    """How one optimizer step's samples are split."""

    per_device: int
    accumulation: int
    world_size: int

    @property
    def global_batch(self) -> int:
        return self.per_device * self.accumulation * self.world_size


class ArrayStepLoader:
    """Steps over in-memory feature arrays (SQuAD, GLUE): yields, per optimizer step, the list
    of this rank's micro-batches (dicts of tensors). The last incomplete global batch of an
    epoch is dropped, so every rank always has full micro-batches."""

    def __init__(self, arrays: Mapping[str, np.ndarray], plan: StepPlan, rank: int, seed: int,
                 trim: bool = True):
        self.arrays = dict(arrays)
        sizes = {len(v) for v in self.arrays.values()}
        if len(sizes) != 1:
            raise ValueError(f"feature arrays differ in length: {sizes}")
        self.num_samples = sizes.pop()
        self.plan = plan
        self.rank = rank
        self.seed = seed
        self.trim = trim
        self.steps_per_epoch = self.num_samples // plan.global_batch
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"{self.num_samples} training samples are fewer than one global batch of "
                f"{plan.global_batch} ({plan.per_device} per device x {plan.world_size} device(s) x "
                f"{plan.accumulation} accumulation); use a smaller batch")
        self.step = 0  # optimizer steps consumed since the start of training

    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed, "num_samples": self.num_samples,
                "global_batch": self.plan.global_batch}

    def load_state_dict(self, state: dict) -> None:
        if (state["num_samples"], state["global_batch"]) != (self.num_samples, self.plan.global_batch):
            raise ConfigError(
                f"cannot resume: the checkpoint was written with {state['num_samples']} samples and "
                f"global batch {state['global_batch']}, this run has {self.num_samples} and "
                f"{self.plan.global_batch}")
        self.step = state["step"]

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)

    def __iter__(self) -> Iterator[list[dict[str, torch.Tensor]]]:
        perm_epoch, perm = -1, None
        while True:
            epoch, k = divmod(self.step, self.steps_per_epoch)
            if epoch != perm_epoch:
                perm, perm_epoch = self._permutation(epoch), epoch
            G, share = self.plan.global_batch, self.plan.per_device * self.plan.accumulation
            mine = perm[k * G + self.rank * share: k * G + (self.rank + 1) * share]
            micro = []
            for m in range(self.plan.accumulation):
                batch = to_tensors(self.arrays, mine[m * self.plan.per_device:(m + 1) * self.plan.per_device])
                micro.append(trim_padding(batch) if self.trim else batch)
            self.step += 1
            yield micro


def eval_batches(arrays: Mapping[str, np.ndarray], indices: np.ndarray, batch_size: int,
                 trim: bool = True) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """(indices, batch) pairs in order, for prediction. Sorting `indices` by length beforehand
    (length-grouped batching) cuts padding further; outputs are placed back by index."""
    for start in range(0, len(indices), batch_size):
        idx = indices[start:start + batch_size]
        batch = to_tensors(arrays, idx)
        yield idx, (trim_padding(batch) if trim else batch)
