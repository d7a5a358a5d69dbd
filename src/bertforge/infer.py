"""Batch prediction over feature arrays, on one device or many.

Features are sorted by length and cut into batches trimmed to their longest sequence
(length-grouped batching: far less padding, same outputs), optionally of a token budget. Under torchrun each rank predicts
every world_size-th batch; the outputs are gathered so that every feature is predicted exactly
once, and put back in the original order. The encoder layers are compiled where the runtime
compiles (CUDA by default), as for training.

`CudaGraphForward` replays a forward from CUDA graphs, for fixed-shape inference on CUDA.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from bertforge.engine.streams import in_stream, stream_executor
from bertforge.train.batching import PAD_MULTIPLE, Prefetcher, make_batch
from bertforge.train.loop import to_device
from bertforge.train.runtime import Runtime

log = logging.getLogger(__name__)

Forward = Callable[[nn.Module, dict[str, Tensor]], Tensor | tuple[Tensor, ...]]


def length_order(attention_mask: np.ndarray) -> np.ndarray:
    """Indices sorted by real length, longest first (a stable sort: ties keep their order)."""
    return np.argsort(-attention_mask.sum(axis=1), kind="stable")


def plan_batches(attention_mask: np.ndarray, batch_size: int, max_tokens: int | None = None
                 ) -> list[np.ndarray]:
    """Length-sorted batches of at most `batch_size` sequences and, with `max_tokens`, at most
    that many tokens of trimmed grid (rows x longest row, rounded up to 8): short sequences then
    go in bigger batches, so every batch costs about the same."""
    order = length_order(attention_mask)
    if max_tokens is None:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    lengths = attention_mask.sum(axis=1)
    batches, start = [], 0
    while start < len(order):
        width = -(-int(lengths[order[start]]) // PAD_MULTIPLE) * PAD_MULTIPLE  # the longest comes first
        rows = max(1, min(batch_size, max_tokens // max(width, 1)))
        batches.append(order[start:start + rows])
        start += rows
    return batches


@dataclass
class InferenceStats:
    """How fast this rank predicted: wall time over its batches, and the latency of each batch
    from host batch to outputs on the host (what NVIDIA's and Intel's benchmark modes report)."""

    sequences: int  # sequences this rank predicted
    batches: int
    seconds: float  # wall time of this rank's prediction loop
    latencies_ms: list[float]  # per batch

    def as_dict(self) -> dict:
        lat = np.asarray(self.latencies_ms or [0.0])
        return {"sequences": self.sequences, "batches": self.batches, "seconds": self.seconds,
                "sequences_per_second": self.sequences / self.seconds if self.seconds > 0 else None,
                "latency_ms_p50": float(np.percentile(lat, 50)), "latency_ms_p90": float(np.percentile(lat, 90)),
                "latency_ms_p99": float(np.percentile(lat, 99)), "latency_ms_mean": float(lat.mean())}


def predict(model: nn.Module, arrays: Mapping[str, np.ndarray], batch_size: int, runtime: Runtime,
            forward: Forward, desc: str = "predict", progress: bool = True,
            max_tokens: int | None = None, per_token: bool = False,
            fill: float = float("-inf")) -> tuple[np.ndarray, ...]:
    """`predict_timed` without the timings."""
    return predict_timed(model, arrays, batch_size, runtime, forward, desc, progress, max_tokens, per_token,
                         fill)[0]


def predict_timed(model: nn.Module, arrays: Mapping[str, np.ndarray], batch_size: int, runtime: Runtime,
                  forward: Forward, desc: str = "predict", progress: bool = True,
                  max_tokens: int | None = None, per_token: bool = False,
                  fill: float = float("-inf")) -> tuple[tuple[np.ndarray, ...], InferenceStats]:
    """Run `forward(model, batch)` over all rows of `arrays`; returns its outputs as float32
    numpy arrays with one row per feature, in the input order, on every rank, and this rank's
    InferenceStats.

    With `per_token`, outputs are (B, W, ...) per token of batches trimmed to their own width W;
    they come back as (N, T, ...), T the features' width, with `fill` (default -inf: "never an
    answer") in the columns a batch did not have. Otherwise outputs are per sequence: (B, ...)."""
    n = len(arrays["input_ids"])
    width = arrays["input_ids"].shape[1]
    batches = plan_batches(arrays["attention_mask"], batch_size, max_tokens)
    mine = batches[runtime.dist.rank::runtime.world_size]
    model.eval()
    # Outside inference mode: parameters moved inside it would become inference tensors,
    # which a later training step cannot use.
    model.to(runtime.device)
    if runtime.compile:
        model.compile_layers()
    t0 = time.perf_counter()
    outputs, latencies = _predict_batches(model, arrays, mine, runtime, forward, desc, progress)
    stats = InferenceStats(sum(len(idx) for idx in mine), len(mine), time.perf_counter() - t0, latencies)
    gathered = _gather(outputs, runtime)
    return _assemble(gathered, n, width if per_token else None, fill), stats


def _predict_batches(model: nn.Module, arrays: Mapping[str, np.ndarray], mine: list[np.ndarray],
                     runtime: Runtime, forward: Forward, desc: str, progress: bool
                     ) -> tuple[list[tuple[np.ndarray, tuple[np.ndarray, ...]]], list[float]]:
    bar = tqdm(total=len(mine), desc=desc, unit="batch", disable=not (progress and runtime.is_main),
               dynamic_ncols=True)
    if runtime.streams > 1 and len(mine) > 1 and not in_stream():
        done = _predict_in_streams(model, arrays, mine, runtime, forward)
    else:
        pin = runtime.device.type != "cpu"
        batches = Prefetcher(((idx, make_batch(arrays, idx)) for idx in mine), runtime.num_workers, pin)
        done = (_predict_batch(model, idx, batch, runtime, forward) for idx, batch in batches)
    outputs, latencies = [], []
    for idx, out, latency in done:
        outputs.append((idx, out))
        latencies.append(latency)
        bar.update(1)
    bar.close()
    return outputs, latencies


@torch.inference_mode()
def _predict_batch(model: nn.Module, idx: np.ndarray, batch: dict[str, Tensor], runtime: Runtime,
                   forward: Forward) -> tuple[np.ndarray, tuple[np.ndarray, ...], float]:
    """(idx, the outputs as float32 numpy arrays, the latency in ms) of one batch."""
    start = time.perf_counter()
    with runtime.autocast():
        out = forward(model, to_device(batch, runtime.device))
    out = out if isinstance(out, tuple) else (out,)
    # .cpu() waits for the device: the latency covers the whole batch
    outputs = tuple(o.float().cpu().numpy() for o in out)
    return idx, outputs, 1000.0 * (time.perf_counter() - start)


def _predict_in_streams(model: nn.Module, arrays: Mapping[str, np.ndarray], mine: list[np.ndarray],
                        runtime: Runtime, forward: Forward):
    """The batches' results in order, each computed on one of runtime.streams CPU streams; at
    most two per stream are queued at a time (their inputs and outputs are all that is held)."""
    threads = torch.get_num_threads()
    pool = stream_executor(runtime.streams, threads=threads)
    pending: deque = deque()
    try:
        for idx in mine:
            if len(pending) >= 2 * runtime.streams:
                yield pending.popleft().result()
            pending.append(pool.submit(lambda i: _predict_batch(model, i, make_batch(arrays, i), runtime, forward),
                                       idx))
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(threads)  # the streams' threads set the count torch reports


def _gather(outputs, runtime: Runtime):
    if not runtime.dist.enabled:
        return outputs
    everything: list = [None] * runtime.world_size
    dist.all_gather_object(everything, outputs)
    return [item for part in everything for item in part]


def _assemble(parts, n: int, width: int | None, fill: float) -> tuple[np.ndarray, ...]:
    """Rows back in feature order; per-token outputs (width given) widened to `width`."""
    seen = np.zeros(n, dtype=np.int64)
    n_out = len(parts[0][1])
    result: list[np.ndarray | None] = [None] * n_out
    for idx, outs in parts:
        seen[idx] += 1
        for j, o in enumerate(outs):
            if result[j] is None:
                shape = (n, *o.shape[1:]) if width is None else (n, width, *o.shape[2:])
                result[j] = np.full(shape, fill, dtype=np.float32)
            if width is None:
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
