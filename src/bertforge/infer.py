"""Batch prediction over feature arrays, on one device or many.

Features are sorted by length and cut into batches trimmed to their longest sequence
(length-grouped batching: far less padding, same outputs). Under torchrun each rank predicts
every world_size-th batch; the outputs are gathered so that every feature is predicted exactly
once, and put back in the original order. The encoder layers are compiled where the runtime
compiles (CUDA by default), as for training.

`CudaGraphForward` replays a forward from CUDA graphs, for fixed-shape inference on CUDA.
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
from bertforge.train.loop import compile_layers
from bertforge.train.runtime import Runtime

log = logging.getLogger(__name__)

Forward = Callable[[nn.Module, dict[str, Tensor]], Tensor | tuple[Tensor, ...]]


def length_order(attention_mask: np.ndarray) -> np.ndarray:
    """Indices sorted by real length, longest first (a stable sort: ties keep their order)."""
    return np.argsort(-attention_mask.sum(axis=1), kind="stable")


def predict(model: nn.Module, arrays: Mapping[str, np.ndarray], batch_size: int, runtime: Runtime,
            forward: Forward, desc: str = "predict", progress: bool = True) -> tuple[np.ndarray, ...]:
    """Run `forward(model, batch)` over all rows of `arrays`; returns its outputs as float32
    numpy arrays with one row per feature, in the input order, on every rank."""
    n = len(arrays["input_ids"])
    order = length_order(arrays["attention_mask"])
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    mine = batches[runtime.dist.rank::runtime.world_size]
    model.eval()
    # Outside inference mode: parameters moved inside it would become inference tensors,
    # which a later training step cannot use.
    model.to(runtime.device)
    if runtime.compile and not _is_compiled(model):
        compile_layers(model)
    outputs = _predict_batches(model, arrays, mine, runtime, forward, desc, progress)
    gathered = _gather(outputs, runtime)
    return _assemble(gathered, n)


@torch.inference_mode()
def _predict_batches(model: nn.Module, arrays: Mapping[str, np.ndarray], mine: list[np.ndarray],
                     runtime: Runtime, forward: Forward, desc: str, progress: bool
                     ) -> list[tuple[np.ndarray, tuple[np.ndarray, ...]]]:
    outputs = []
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
    return outputs


def _is_compiled(model: nn.Module) -> bool:
    """Whether compile_layers already ran on the model (a trainer compiles it for training)."""
    return any(getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())


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


class CudaGraphForward:
    """`forward(model, batch)` replayed from a CUDA graph, one graph per set of batch shapes.

    Fixed-shape inference spends host time launching hundreds of kernels per batch; a graph
    launches them at once. Capture needs a forward free of host syncs: run the model with its
    padded layout (`unpad=False`), since unpadding reads the sequence lengths on the host, and
    leave out an all-ones attention_mask when the host knows it (SDPA then takes flash attention).
    The outputs are the graph's own buffers, overwritten by the next call: copy what you keep.
    """

    def __init__(self, model: nn.Module, forward: Forward, autocast_dtype: torch.dtype | None,
                 warmup: int = 3):
        self.model = model
        self.forward = forward
        self.autocast_dtype = autocast_dtype
        self.warmup = warmup
        self._graphs: dict[tuple, tuple[dict[str, Tensor], torch.cuda.CUDAGraph, object]] = {}

    def _run(self, batch: dict[str, Tensor]):
        # No autocast cache: cached weight casts would outlive the capture that made them.
        autocast = torch.autocast("cuda", dtype=self.autocast_dtype or torch.float32,
                                  enabled=self.autocast_dtype is not None, cache_enabled=False)
        with autocast:
            return self.forward(self.model, batch)

    def _capture(self, batch: dict[str, Tensor]):
        static = {k: v.clone() for k, v in batch.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up (lazy init, compilation) outside the capture
            for _ in range(self.warmup):
                self._run(static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self._run(static)
        return static, graph, out

    def __call__(self, batch: dict[str, Tensor]):
        key = tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(batch.items()))
        if key not in self._graphs:
            self._graphs[key] = self._capture(batch)
        static, graph, out = self._graphs[key]
        for k, v in batch.items():
            static[k].copy_(v)
        graph.replay()
        return out
