"""The GPU suite's cases (benchmarks/run_gpu_suite.py runs them): what each measures, its target
against Hugging Face transformers, the data it reads, and how long it is expected to take, so
that a run with a time budget takes them in order of value and skips what would not fit.

Estimated seconds on one H100 (`estimate_seconds`). A benchmark case costs its model FLOPs (every
step both models run: warm-up, timed and profiled; bertforge on real tokens, transformers on the
padded grid) at EFFICIENCY of the matmul peak of its precision, plus what does not scale with
FLOPs: PROCESS_S (the case's own process: imports, CUDA context, matmul ceiling, agreement check),
HF_BUILD_S (transformers' model initialised on the CPU, moved, loaded), SQUAD_FEATURES_S, PROFILE_S
and the compilation of bertforge's layer graph: COLD_COMPILE_S where no earlier case compiled
the same graph (training or inference, unpadded varlen or padded), CACHED_COMPILE_S where one did
(dynamo traces again, Inductor's on-disk cache answers; the layers compile with dynamic shapes,
so other lengths and batch sizes reuse a graph). The other kinds have measured-elsewhere or
budgeted figures (SANITY_S, PRETRAINING_WORKS_S, ACCURACY_SQUAD_S). The suite scales every later
estimate by how far the finished cases overran theirs (`overrun`).

The default cases and their estimates (`python benchmarks/run_gpu_suite.py --list` prints them):
sanity 75 s, squad-train 34 s, squad-infer 49 s, dense-train 47 s, pretrain 29 s, dense-infer 46 s:
about 280 s, for a default budget of 300 s of GPU work.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bertforge.bench.config import BenchmarkArgs
from bertforge.runconfig import ModelArgs, RuntimeArgs

# Matmul peak of an H100 SXM per precision (bf16 as measured on random 8192^3 products; tf32 at
# half of it; fp32 without tensor cores, its 67 TFLOP/s less a margin), and the share of it the
# estimates assume a model step reaches.
MATMUL_PEAK = {"bf16": 790e12, "fp16": 790e12, "tf32": 395e12, "fp32": 60e12}
EFFICIENCY = 0.4
PROCESS_S = 6.0
HF_BUILD_S = 4.0
COLD_COMPILE_S = 30.0
CACHED_COMPILE_S = 8.0
HF_COMPILE_S = 90.0  # transformers' whole model under torch.compile, forward and backward
SQUAD_FEATURES_S = 3.0
PROFILE_S = 4.0
PROFILE_STEPS = 3  # per model (bertforge.bench.run profiles three steps)
SQUAD_REAL_FRACTION = 0.42  # real tokens of SQuAD v1.1 dev features at 384 (benchmarks/RESULTS.md)
# sanity: a cold compile of the training layer graph, cached ones for the other checks, ~10 s of steps
SANITY_S = PROCESS_S + COLD_COMPILE_S + 3 * CACHED_COMPILE_S + 15.0
# pretraining-works: 3 minutes of pretraining, six fine-tunes of BERT-mini (~750 steps each)
# sharing one compilation, held-out evaluation
PRETRAINING_WORKS_S = PROCESS_S + 180.0 + 6 * 12.0 + 20.0
# accuracy-squad: MiniLM fine-tuned 2 epochs on ~8,800 features and evaluated, by both libraries
ACCURACY_SQUAD_S = 240.0
SMOKE_CASE_S = 15.0  # --smoke on a CPU: a case's generous figure for the budget guard

# Where the suite reads its data, relative to --data_dir (the layout of ../shared/data, which
# benchmarks/pack_suite.py copies into a bundle).
SQUAD_FILE = "squad/v1.1/dev-v1.1.json"
VOCAB_FILE = "vocab/bert-base-uncased/vocab.txt"
WIKI_FILE = "text/wiki_summaries_en.jsonl"
SST2_DIR = "glue/SST-2"
PRETRAINING_DATA = "pretraining/wiki_seq128"  # `bertforge prepare pretraining` output, seq 128

Kind = Literal["sanity", "bench", "pretraining", "accuracy"]


@dataclass(frozen=True)
class Case:
    """One case of the suite."""

    name: str
    what: str
    kind: Kind = "bench"
    bench: dict = field(default_factory=dict)
    """bench: BenchmarkArgs fields, flat (bert_model and precision are given here too)."""
    min_speedup: float | None = None
    """The target: bertforge's seq/s over transformers' at least this."""
    min_mfu: float | None = None
    """... and bertforge's MFU at least this."""
    needs_cuda: bool = False
    default: bool = False
    """In the run with no --only: the cases that fit the default budget."""
    compile_s: float = 0.0
    """bench: the compilation share of the estimate (COLD_COMPILE_S or CACHED_COMPILE_S)."""
    fixed_s: float = 0.0
    """sanity, pretraining, accuracy: the estimate itself."""
    timeout_s: float | None = None
    """Longer than the suite's --case_timeout_s."""

    @property
    def target(self) -> str:
        if self.min_speedup is None:
            return ""
        text = f">= {self.min_speedup:g}x transformers"
        return text + (f" and >= {100 * self.min_mfu:.0f}% MFU" if self.min_mfu is not None else "")

    def met(self, result: dict) -> bool | None:
        """Whether a result meets the target; None without a target or a comparison."""
        if self.min_speedup is None or "speedup_vs_hf" not in result:
            return None
        ok = result["speedup_vs_hf"] >= self.min_speedup
        return ok and (self.min_mfu is None or result["bertforge"]["mfu"] >= self.min_mfu)


LARGE = dict(bert_model="large", precision="bf16", compare_hf=True, warmup=5, steps=20)
ONLY_OURS = dict(LARGE, compare_hf=False, warmup=3, steps=8)
CASES = (
    Case("sanity", "fast paths: same function, trains, compiles once, no host waits", kind="sanity",
         default=True, fixed_s=SANITY_S),
    Case("squad-train", "BERT-large training on SQuAD v1.1 dev features, seq 384 x 32, profiled",
         bench=dict(LARGE, mode="train", data="squad", seq_length=384, batch_size=32, profile=True),
         min_speedup=2.5, default=True, compile_s=CACHED_COMPILE_S),  # sanity compiled this graph
    Case("squad-infer", "BERT-large inference on SQuAD v1.1 dev features, seq 384 x 128",
         bench=dict(LARGE, mode="infer", data="squad", seq_length=384, batch_size=128),
         min_speedup=2.5, default=True, compile_s=COLD_COMPILE_S),
    Case("dense-train", "BERT-large training, seq 384 x 32, no padding",
         bench=dict(LARGE, mode="train", seq_length=384, batch_size=32),
         min_speedup=1.4, min_mfu=0.5, default=True, compile_s=COLD_COMPILE_S),
    Case("pretrain", "BERT-large phase-1 pretraining step: MLM + NSP, seq 128 x 128, 20 masked, LAMB",
         bench=dict(LARGE, mode="train", task="pretraining", seq_length=128, batch_size=128, optimizer="lamb"),
         min_speedup=1.5, default=True, compile_s=CACHED_COMPILE_S),  # dense-train's graph, other shapes
    Case("dense-infer", "BERT-large inference, seq 384 x 128, no padding",
         bench=dict(LARGE, mode="infer", seq_length=384, batch_size=128),
         min_speedup=1.3, default=True, compile_s=COLD_COMPILE_S),
    Case("graphs-infer", "dense-infer replayed from a CUDA graph",
         bench=dict(LARGE, mode="infer", seq_length=384, batch_size=128, cuda_graphs=True),
         min_speedup=1.3, needs_cuda=True, compile_s=CACHED_COMPILE_S),
    Case("squad-train-fp16", "squad-train in fp16 with loss scaling (bertforge only)",
         bench=dict(ONLY_OURS, mode="train", data="squad", precision="fp16", steps=10), compile_s=COLD_COMPILE_S),
    Case("squad-train-tf32", "squad-train in tf32 (bertforge only)",
         bench=dict(ONLY_OURS, mode="train", data="squad", precision="tf32"), compile_s=COLD_COMPILE_S),
    Case("squad-train-fp32", "squad-train in fp32, padded-grid attention (bertforge only)",
         bench=dict(ONLY_OURS, mode="train", data="squad", precision="fp32"), compile_s=COLD_COMPILE_S),
    Case("pretraining-works", "BERT-mini pretrained ~3 minutes on Wikipedia (bf16, LAMB), then SST-2 fine-tunes "
         "against random init, 3 seeds each", kind="pretraining", fixed_s=PRETRAINING_WORKS_S, timeout_s=420),
    Case("dense-train-hf-compiled", "dense-train against transformers under torch.compile (whole model)",
         bench=dict(LARGE, mode="train", seq_length=384, batch_size=32, hf_compile=True, steps=10),
         compile_s=CACHED_COMPILE_S + HF_COMPILE_S),
    Case("accuracy-squad", "MiniLM SQuAD split fine-tune, bertforge and transformers (benchmarks/accuracy.py)",
         kind="accuracy", needs_cuda=True, fixed_s=ACCURACY_SQUAD_S, timeout_s=420),
)
BY_NAME = {c.name: c for c in CASES}

# --smoke: the same code on the CPU, tiny.
SMOKE = dict(bert_model="tiny", seq_length=64, batch_size=4, steps=2, warmup=1, device="cpu")
SMOKE_COMPILED = {"squad-train"}  # compiled layers in a benchmark case too (sanity compiles anyway)


def flat_bench_args(case: Case, smoke: bool, data_dir: Path) -> dict:
    """The case's benchmark settings, flat as `bertforge benchmark` takes them."""
    flat = {"device": "cuda", **case.bench}
    if smoke:
        flat.update(SMOKE, compile=case.name in SMOKE_COMPILED)
        if flat.get("data") == "squad":  # room for a 64-token question and some context
            flat["seq_length"] = 128
    if flat.get("data") == "squad":
        flat.update(squad_file=str(data_dir / SQUAD_FILE), vocab_file=str(data_dir / VOCAB_FILE))
    return flat


def bench_args(case: Case, smoke: bool, data_dir: Path) -> BenchmarkArgs:
    """The case's BenchmarkArgs (flat settings into the nested ModelArgs / RuntimeArgs)."""
    flat = flat_bench_args(case, smoke, data_dir)
    model = ModelArgs(bert_model=flat.pop("bert_model"), vocab_file=flat.pop("vocab_file", None))
    runtime = RuntimeArgs(device=flat.pop("device"), precision=flat.pop("precision"), compile=flat.pop("compile", None))
    return BenchmarkArgs(model=model, runtime=runtime, trace_file=None, **flat)


def benchmark_command(case: Case, smoke: bool, data_dir: Path) -> str:
    """The `bertforge benchmark` command line that measures what the case measures."""
    flags = []
    for name, value in flat_bench_args(case, smoke, data_dir).items():
        if value is not None:
            flags += [f"--{name}", str(value).lower() if isinstance(value, bool) else str(value)]
    return shlex.join(["bertforge", "benchmark", *flags])


def estimate_seconds(case: Case, smoke: bool = False) -> float:
    """Seconds the case is expected to take on one H100 (see the module docstring)."""
    if smoke:
        return SMOKE_CASE_S
    if case.kind != "bench":
        return case.fixed_s
    from bertforge.bench.meter import batch_flops
    from bertforge.config import resolve_config

    cfg = bench_args(case, False, Path("."))
    config = resolve_config(cfg.model.bert_model)
    training = cfg.mode == "train"
    T, B = cfg.seq_length, cfg.batch_size
    real = round(SQUAD_REAL_FRACTION * T) if cfg.data == "squad" else T
    profiled = cfg.profile or case.min_speedup is not None  # a missed target is profiled
    steps = cfg.warmup + cfg.steps + (PROFILE_STEPS if profiled else 0)
    flops = batch_flops(config, cfg, [real] * B, training)
    if cfg.compare_hf:
        flops += batch_flops(config, cfg, [T] * B, training)  # transformers computes the padded grid
    seconds = steps * flops / (EFFICIENCY * MATMUL_PEAK[cfg.runtime.precision])
    return (PROCESS_S + case.compile_s + seconds + (HF_BUILD_S if cfg.compare_hf else 0.0)
            + (SQUAD_FEATURES_S if cfg.data == "squad" else 0.0) + (PROFILE_S if profiled else 0.0))


def overrun(finished: list[tuple[float, float]]) -> float:
    """How far the finished cases overran their estimates, at least 1: from (estimated, actual)
    seconds, the ratio of the totals."""
    estimated = sum(e for e, _ in finished)
    actual = sum(a for _, a in finished)
    return max(1.0, actual / estimated) if estimated > 0 else 1.0


__all__ = ["Case", "CASES", "BY_NAME", "bench_args", "benchmark_command", "estimate_seconds", "overrun"]
