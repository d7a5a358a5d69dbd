"""Batch prediction over feature arrays, on one device or many.

Features are sorted by length and cut into batches trimmed to their longest sequence
(length-grouped batching: far less padding, same outputs). Under torchrun each rank predicts
every world_size-th batch; the outputs are gathered so that every feature is predicted exactly
once, and put back in the original order.
"""

from __future__ import annotations

import logging
from typing import Callable, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from bertforge.train.batching import eval_batches
from bertforge.train.runtime import Runtime

log = logging.getLogger(__name__)

Forward = Callable[[nn.Module, dict[str, Tensor]], Tensor | tuple[Tensor, ...]]


def length_order(attention_mask: np.ndarray) -> np.ndarray:
    """Indices sorted by real length, longest first (a stable sort: ties keep their order)."""
    return np.argsort(-attention_mask.sum(axis=1), kind="stable")


@torch.no_grad()
def predict(model: nn.Module, arrays: Mapping[str, np.ndarray], batch_size: int, runtime: Runtime,
            forward: Forward, desc: str = "predict", progress: bool = True) -> tuple[np.ndarray, ...]:
    """Run `forward(model, batch)` over all rows of `arrays`; returns its outputs as float32
    numpy arrays with one row per feature, in the input order, on every rank."""
    n = len(arrays["input_ids"])
    order = length_order(arrays["attention_mask"])
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    mine = batches[runtime.dist.rank::runtime.world_size]
    model.eval()
    model.to(runtime.device)
    outputs: list[tuple[np.ndarray, tuple[np.ndarray, ...]]] = []
    bar = tqdm(total=len(mine), desc=desc, unit="batch", disable=not (progress and runtime.is_main),
               dynamic_ncols=True)
    for idx in mine:
        _, batch = next(eval_batches(arrays, idx, len(idx)))
        batch = {k: v.to(runtime.device, non_blocking=True) for k, v in batch.items()}
        with runtime.autocast():
            out = forward(model, batch)
        out = out if isinstance(out, tuple) else (out,)
        outputs.append((idx, tuple(o.float().cpu().numpy() for o in out)))
        bar.update(1)
    bar.close()
    gathered = _gather(outputs, runtime)
    return _assemble(gathered, n)


def _gather(outputs, runtime: Runtime):
    if not runtime.dist.enabled:
        return outputs
    everything: list = [None] * runtime.world_size
    dist.all_gather_object(everything, outputs)
    return [item for part in everything for item in part]


def _assemble(parts, n: int) -> tuple[np.ndarray, ...]:
    seen = np.zeros(n, dtype=np.int64)
    n_out = len(parts[0][1])
    result: list[np.ndarray | None] = [None] * n_out
    for idx, outs in parts:
        seen[idx] += 1
        for j, o in enumerate(outs):
            if result[j] is None:
                width = max(p[1][j].shape[1] if p[1][j].ndim > 1 else 0 for p in parts)
                shape = (n,) if o.ndim == 1 else (n, width, *o.shape[2:])
                result[j] = np.zeros(shape, dtype=np.float32)
            if o.ndim == 1:
                result[j][idx] = o
            else:
                result[j][idx, : o.shape[1]] = o
    if not (seen == 1).all():
        raise RuntimeError(f"prediction gather is inconsistent: {int((seen == 0).sum())} features "
                           f"never predicted, {int((seen > 1).sum())} predicted twice")
    return tuple(result)
