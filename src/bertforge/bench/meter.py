"""How the benchmark counts: model FLOPs on real tokens, the measured matmul ceiling (MFU's
denominator), per-step device time (CUDA events) and host time (what the Python side spends
issuing a step), peak memory, and torch.compile's graph counters."""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bertforge.bench.config import BenchmarkArgs
from bertforge.config import BertConfig
from bertforge.model import model_flops_per_token
from bertforge.train.hostmem import reset_peak, rss_bytes, trim_heap

FLOPS_COUNTED = ("model FLOPs on real tokens only (padding excluded): encoder matmuls + attention "
                 "scores and values (2 per multiply-add, x3 for training) + head matmuls")


def batch_flops(config: BertConfig, cfg: BenchmarkArgs, lengths: list[int], training: bool) -> float:
    """Model FLOPs of one batch on its real tokens (see FLOPS_COUNTED)."""
    H, V = config.hidden_size, config.vocab_size
    encoder = sum(n * model_flops_per_token(config, n, training) for n in lengths)
    if cfg.task == "qa":
        heads = sum(lengths) * 2 * H * 2  # start/end logits
    else:
        mlm = cfg.num_masked * 2 * (H * H + H * V)  # transform + tied decoder, masked positions only
        heads = len(lengths) * (mlm + 2 * (H * H + 2 * H))  # + pooler and NSP
    return encoder + (3.0 if training else 1.0) * heads


MATMUL_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def matmul_peak(device: torch.device, precision: str, size: int | None = None, reps: int = 10) -> dict:
    """Median rate of a size^3 matrix product in the run's precision on random data (zeros can run
    faster than real data). TF32 follows the matmul settings the Runtime made. CPUs without fp16
    matrix units run fp16 products in a slow fallback (seconds for one 1024^3), hence 256 there."""
    size = size or (8192 if device.type == "cuda" else 256 if precision == "fp16" else 1024)
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=MATMUL_DTYPES[precision], generator=g)
    b = torch.randn(size, size, device=device, dtype=MATMUL_DTYPES[precision], generator=g)
    timer = StepTimer(device)
    for i in range(3 + reps):
        with timer.step(record=i >= 3):
            a @ b
    seconds = statistics.median(timer.seconds())
    dtype = str(MATMUL_DTYPES[precision]).replace("torch.", "") + (" (tf32)" if precision == "tf32" else "")
    return {"tflops": 2 * size ** 3 / seconds / 1e12, "shape": f"{size}^3", "dtype": dtype}


class StepTimer:
    """Per-step time. Device time: CUDA events around each step (no host sync between steps; read
    once at the end), elsewhere a host clock after synchronising. Host time: what issuing the step
    cost the Python side (no sync); on CUDA, host time near device time means host-bound."""

    def __init__(self, device: torch.device):
        self.device = device
        self._events: list[tuple[Any, Any]] = []
        self._seconds: list[float] = []
        self.host_seconds: list[float] = []

    def _sync(self) -> None:
        if self.device.type != "cpu":
            torch.accelerator.synchronize(self.device)

    def step(self, record: bool = True):
        return _TimedStep(self, record)

    def seconds(self) -> list[float]:
        if self._events:
            self._sync()
            self._seconds += [start.elapsed_time(end) / 1e3 for start, end in self._events]
            self._events = []
        return list(self._seconds)


class _TimedStep:
    def __init__(self, timer: StepTimer, record: bool):
        self.timer, self.record = timer, record

    def __enter__(self):
        if self.timer.device.type == "cuda":
            self.start = torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.timer._sync()
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        if exc[0] is not None:
            return False
        host = time.perf_counter() - self.t0
        if self.timer.device.type == "cuda":
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            if self.record:
                self.timer._events.append((self.start, end))
        else:
            self.timer._sync()
            if self.record:
                self.timer._seconds.append(time.perf_counter() - self.t0)
        if self.record:
            self.timer.host_seconds.append(host)
        return False


class MemoryMeter:
    """Peak memory of one model's steps: on an accelerator, the allocator's peak of live tensors;
    on the CPU, the process's peak resident set (Linux's resettable high-water mark). Both as
    (peak during the steps) - (in use before them) + (the model's own weights), so that another
    model resident at the same time is not counted."""

    def __init__(self, device: torch.device):
        self.device = device
        acc = torch.accelerator
        self._api = acc if hasattr(acc, "max_memory_allocated") else getattr(torch, device.type, None)
        self.kind = ("max memory allocated" if device.type != "cpu"
                     else "peak resident set size (process, Linux VmHWM)")

    def _index(self):
        return self.device.index if self.device.index is not None else 0

    def start(self) -> None:
        if self.device.type == "cpu":
            # Freed heap memory back to the OS first, so the resident set holds live memory only
            # and the next model cannot reuse what the previous one freed without it counting.
            trim_heap()
            reset_peak()
            self.before = rss_bytes("VmRSS") or 0
        else:
            self._api.reset_peak_memory_stats(self._index())
            self.before = self._api.memory_allocated(self._index())

    def extra_since_start(self) -> float:
        """GB: the peak since start() above what was in use then (what a piece of work added)."""
        if self.device.type == "cpu":
            peak = rss_bytes("VmHWM") or 0
        else:
            peak = self._api.max_memory_allocated(self._index())
        return (peak - self.before) / 1e9

    def peak_since_start(self, model: nn.Module) -> float:
        """GB."""
        weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
        return self.extra_since_start() + weights / 1e9


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        name = platform.processor() or "cpu"
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        return f"{name}, {torch.get_num_threads()} threads"
    return str(device)


def compile_counters() -> dict[str, int]:
    """torch.compile's running totals: frames compiled, graphs, graph breaks, and recompilations
    (compilations of a frame after its first: new guards failed, e.g. a shape or a constant)."""
    try:
        from torch._dynamo.convert_frame import FRAME_COMPILE_COUNTER
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover - torch builds without dynamo
        return {}
    return {"compiled_frames": int(counters["frames"].get("total", 0)),
            "graphs": int(counters["stats"].get("unique_graphs", 0)),
            "graph_breaks": int(sum(counters["graph_break"].values())),
            "recompiles": int(sum(n - 1 for n in FRAME_COMPILE_COUNTER.values() if n > 1))}
