"""CPU streams: several forward passes at once, each on its share of the CPU's threads.

One forward pass on all of a small CPU's threads spends much of its time where its threads wait
for each other: between the many small operations of a BERT layer (LayerNorm, GELU, the
quantisation of each int8 product, attention per sequence) every thread joins the others, and a
thread that the machine's other work delays holds them all up. Two passes at once, each on half
the threads, keep every core busy with no joins between them. Measured on 2 cores
(benchmarks/RESULTS.md, 1,988 SQuAD questions): a fine-tuned MiniLM predicted 1.28x the windows
per second in 2 streams of 1 thread than in 1 stream of 2 threads in int8, 1.11x in bf16, 1.09x
in fp32, and `serve` answered 1.09-1.24x the requests. A single batch is not shared between
streams, so its latency is that of one stream (on fewer threads).

Written here because it is a thread pool whose threads each set their OpenMP thread count (torch
keeps that count per thread: `torch.set_num_threads` in a thread sets it for the parallel
regions that thread opens) and mark themselves, so that work already inside a stream does not
open streams of its own.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch

_thread = threading.local()


def threads_per_stream(streams: int, threads: int | None = None) -> int:
    """Each stream's share of `threads` (default: torch's intra-op threads now), at least one."""
    return max(1, (threads or torch.get_num_threads()) // streams)


def stream_executor(streams: int, name: str = "bertforge-stream", threads: int | None = None
                    ) -> ThreadPoolExecutor:
    """`streams` threads, each running torch on threads_per_stream(streams, threads) threads.
    Setting a thread's count also sets the count torch reports process-wide: a caller that
    goes on computing on its own thread afterwards restores it (`torch.set_num_threads`)."""
    return ThreadPoolExecutor(streams, thread_name_prefix=name, initializer=_enter,
                              initargs=(threads_per_stream(streams, threads),))


def _enter(threads: int) -> None:
    torch.set_num_threads(threads)
    _thread.inside = True


def in_stream() -> bool:
    """Whether this thread is one of a stream_executor's (work here runs inline)."""
    return getattr(_thread, "inside", False)


__all__ = ["in_stream", "stream_executor", "threads_per_stream"]
