"""The GPU suite's case table: its order of value, the default run's estimated seconds (model
FLOPs written out here, independently of bertforge's counter), the budget guard's scaling, the
data it reads, and that each case's `bertforge benchmark` command measures the same thing."""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

import pytest

from bertforge.bench import BenchmarkArgs
from bertforge.bench import suite
from bertforge.bench.suite import BY_NAME, CASES, bench_args, benchmark_command, estimate_seconds, overrun
from bertforge.cli import find_command, parse_command


def test_cases_in_order_of_value():
    names = [c.name for c in CASES]
    assert [c.name for c in CASES if c.default] == ["sanity", "squad-train", "squad-infer", "dense-train", "pretrain",
                                                   "dense-infer"]
    assert names[:6] == [c.name for c in CASES if c.default]  # the default ones first
    precisions = [names.index(n) for n in ("squad-train-fp16", "squad-train-tf32", "squad-train-fp32")]
    assert max(precisions) < names.index("pretraining-works")  # the speed cases, then the pretraining check
    assert names[-2:] == ["dense-train-hf-compiled", "accuracy-squad"]  # compiled transformers and accuracy last


def test_targets():
    assert {n: (BY_NAME[n].min_speedup, BY_NAME[n].min_mfu) for n in
            ("squad-train", "squad-infer", "dense-train", "pretrain", "dense-infer")} == {
        "squad-train": (2.5, None), "squad-infer": (2.5, None), "dense-train": (1.4, 0.5), "pretrain": (1.5, None),
        "dense-infer": (1.3, None)}
    dense = BY_NAME["dense-train"]
    assert dense.met({"speedup_vs_hf": 1.5, "bertforge": {"mfu": 0.55}}) is True
    assert dense.met({"speedup_vs_hf": 1.5, "bertforge": {"mfu": 0.45}}) is False
    assert dense.met({"bertforge": {"mfu": 0.55}}) is None  # no comparison, no verdict


def test_pretrain_case_measures_lamb():
    args = bench_args(BY_NAME["pretrain"], False, Path("data"))
    assert (args.optimizer, args.task, args.seq_length, args.batch_size, args.runtime.precision) == (
        "lamb", "pretraining", 128, 128, "bf16")


def bert_large_train_flops(tokens_per_sequence: int, seq: int, batch: int, head_flops_per_token: float) -> float:
    """Model FLOPs of one training step of BERT-large: per layer and token, the Q/K/V/output
    projections 4 * 2H^2, the FFN 2 * 2HI, attention scores and values 2 * 2nH; times 3 for the
    backward; plus the head."""
    H, I, L = 1024, 4096, 24
    n = tokens_per_sequence
    per_token = L * (4 * 2 * H * H + 2 * 2 * H * I + 2 * 2 * n * H) + head_flops_per_token
    return 3 * per_token * n * batch


def test_dense_train_estimate_from_flops():
    """Both models on the full grid, 5 + 20 steps and 3 profiled (the target may be missed),
    at 40% of 790 TFLOP/s, plus the fixed costs."""
    flops = bert_large_train_flops(384, 384, 32, head_flops_per_token=2 * 1024 * 2)  # QA: start/end logits
    compute = 2 * (5 + 20 + 3) * flops / (0.4 * 790e12)
    fixed = suite.PROCESS_S + suite.COLD_COMPILE_S + suite.HF_BUILD_S + suite.PROFILE_S
    assert estimate_seconds(BY_NAME["dense-train"]) == pytest.approx(fixed + compute, rel=1e-6)
    assert 3.0 < compute < 5.0  # a few seconds of GPU work: what dominates is process start and compilation


def test_squad_train_estimate_counts_real_tokens_for_bertforge_and_the_grid_for_transformers():
    real = round(0.42 * 384)
    qa = 2 * 1024 * 2
    compute = (5 + 20 + 3) * (bert_large_train_flops(real, 384, 32, qa) + bert_large_train_flops(384, 384, 32, qa))
    fixed = (suite.PROCESS_S + suite.CACHED_COMPILE_S + suite.HF_BUILD_S + suite.PROFILE_S
             + suite.SQUAD_FEATURES_S)
    assert estimate_seconds(BY_NAME["squad-train"]) == pytest.approx(fixed + compute / (0.4 * 790e12), rel=1e-6)


def test_default_run_fits_300_seconds():
    total = sum(estimate_seconds(c) for c in CASES if c.default)
    assert 200 < total <= 300
    assert all(estimate_seconds(c, smoke=True) == suite.SMOKE_CASE_S for c in CASES)


def test_overrun_scales_later_estimates_up_never_down():
    assert overrun([]) == 1.0
    assert overrun([(10.0, 20.0), (30.0, 40.0)]) == pytest.approx(1.5)
    assert overrun([(10.0, 5.0)]) == 1.0


def test_data_comes_from_the_data_dir(tmp_path):
    args = bench_args(BY_NAME["squad-train"], False, tmp_path)
    assert args.squad_file == str(tmp_path / "squad/v1.1/dev-v1.1.json")
    assert args.model.vocab_file == str(tmp_path / "vocab/bert-base-uncased/vocab.txt")
    assert BenchmarkArgs().squad_file is None  # no default path beside any checkout


@pytest.mark.parametrize("name", ["squad-train", "pretrain", "dense-infer"])
@pytest.mark.parametrize("smoke", [False, True])
def test_benchmark_command_measures_what_the_case_measures(name, smoke, tmp_path):
    """The row's `bertforge benchmark` command, read by the CLI's parser, is the case's settings."""
    argv = shlex.split(benchmark_command(BY_NAME[name], smoke, tmp_path))
    assert argv[:2] == ["bertforge", "benchmark"]
    command, rest = find_command(argv[1:])
    parsed, _, _ = parse_command(command, rest)
    expected = bench_args(BY_NAME[name], smoke, tmp_path)
    assert dataclasses.replace(parsed, trace_file=None) == expected
