"""`bertforge benchmark`: speed and memory of training and inference, side by side with Hugging
Face transformers. `config` (what to measure), `inputs` (batches), `meter` (FLOPs, timers,
memory), `contenders` (the models and their step), `run` (the measurement and its report).
A new benchmark case is a new workload in `inputs` or a flag in `config`.

The GPU suite (benchmarks/run_gpu_suite.py) is built on it: `suite` (its cases, targets and
estimated seconds), `suite_report` (its Markdown report), `sanity` (its first case: do the fast
paths compute the right function, compile once, never make the host wait; `syncs` names host
reads), and `cpu_flash` (a CPU stand-in for FlashAttention's varlen op, for its CPU smoke run).

Only `config` is imported with the package (`bertforge benchmark --help` then imports no torch);
the measuring names below are imported when first used."""

from __future__ import annotations

from typing import Any

from bertforge.bench.config import BenchmarkArgs

__all__ = ["BenchmarkArgs", "measure", "run_benchmark", "format_table", "batch_flops", "matmul_peak",
           "FLOPS_COUNTED"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from bertforge.bench.meter import FLOPS_COUNTED, batch_flops, matmul_peak
    from bertforge.bench.run import format_table, measure, run_benchmark

    exports = {"measure": measure, "run_benchmark": run_benchmark, "format_table": format_table,
               "batch_flops": batch_flops, "matmul_peak": matmul_peak, "FLOPS_COUNTED": FLOPS_COUNTED}
    globals().update(exports)  # later lookups find them without this function
    return exports[name]
