"""Batches for training and prediction, deterministic and resumable.

Each optimizer step consumes one *global batch*: samples [k*G, (k+1)*G) of the epoch's
permutation (drawn from (seed, epoch) alone), G = per-device batch x devices x accumulation.
Rank r takes its contiguous share and cuts it into micro-batches. Which rank or micro-batch a
sample lands in never changes which samples make up a step, so 1 device x batch 2B, 2 devices x
batch B and 1 device x B x 2 accumulation steps see the same data; a resumed run continues at
the same step of the same permutation.

A batch is made on the host: rows indexed out of compact feature arrays, widened to int64, its
real lengths read (`seq_lengths`, a list, so the model can unpad without asking the device), and
trimmed to its longest sequence rounded up to a multiple of 8 (padding does not change BERT's
outputs, so this saves work without changing the math). `Prefetcher` makes the next batches on
background threads, in pinned memory when they go to an accelerator.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping

import numpy as np
import torch

from bertforge.errors import ConfigError

PAD_MULTIPLE = 8
# Arrays of shape (N, T) that are cut to the batch's length; everything else is per sample.
SEQUENCE_KEYS = ("input_ids", "token_type_ids", "attention_mask")


def trim_padding(batch: dict, multiple: int = PAD_MULTIPLE) -> dict:
    """Add `seq_lengths` (the real lengths, host ints) and cut (B, T) sequence tensors to the
    longest real sequence, rounded up to `multiple`."""
    mask = batch["attention_mask"]
    lengths = mask.sum(dim=1).tolist()
    T = mask.shape[1]
    keep = min(T, -(-max(lengths, default=T) // multiple) * multiple)
    out = {k: (v[:, :keep] if k in SEQUENCE_KEYS and keep < T else v) for k, v in batch.items()}
    out["seq_lengths"] = lengths
    return out


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


def make_batch(arrays: Mapping[str, np.ndarray], index: np.ndarray, trim: bool = True) -> dict:
    """One host batch of rows `index` (see the module docstring)."""
    batch = to_tensors(arrays, index)
    if trim:
        return trim_padding(batch)
    return {**batch, "seq_lengths": batch["attention_mask"].sum(dim=1).tolist()}


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
    of this rank's micro-batches. The last incomplete global batch of an epoch is dropped, so
    every rank always has full micro-batches."""

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

    def step_indices(self, step: int) -> list[np.ndarray]:
        """This rank's micro-batch indices of optimizer step `step` (0-based)."""
        epoch, k = divmod(step, self.steps_per_epoch)
        G, share = self.plan.global_batch, self.plan.per_device * self.plan.accumulation
        mine = self._permutation(epoch)[k * G + self.rank * share: k * G + (self.rank + 1) * share]
        B = self.plan.per_device
        return [mine[m * B:(m + 1) * B] for m in range(self.plan.accumulation)]

    def __iter__(self) -> Iterator[list[dict]]:
        while True:
            micro = [make_batch(self.arrays, idx, self.trim) for idx in self.step_indices(self.step)]
            self.step += 1
            yield micro


class Prefetcher:
    """Iterate `source` (batches, possibly inside lists, tuples or dicts) `depth` items ahead on a
    background thread, pinning tensors when they go to an accelerator. Items come out in the
    same order; an exception in the thread is raised in the consumer. `depth` 0 iterates inline.

    One thread keeps the order trivially and is enough: indexing, widening and trimming a batch
    release the GIL in numpy/torch and take far less time than the step they overlap with."""

    _DONE = object()

    def __init__(self, source: Iterable, depth: int, pin: bool):
        self.source = source
        self.depth = depth
        self.pin = pin

    def _pinned(self, item):
        if isinstance(item, torch.Tensor):
            return item.pin_memory()
        if isinstance(item, (list, tuple)):
            return type(item)(self._pinned(x) for x in item)
        if isinstance(item, dict):
            return {k: self._pinned(v) for k, v in item.items()}
        return item

    def __iter__(self):
        if self.depth <= 0:
            for item in self.source:
                yield self._pinned(item) if self.pin else item
            return
        q: queue.Queue = queue.Queue(maxsize=self.depth)
        stop = threading.Event()

        def work() -> None:
            try:
                for item in self.source:
                    item = self._pinned(item) if self.pin else item
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                q.put(self._DONE)
            except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
                q.put(e)

        thread = threading.Thread(target=work, name="bertforge-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is self._DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
