"""`bertforge benchmark`: results carry what they promise, and the FLOP count matches an
independent counter. (The fast paths it measures are tested in tests/model/test_fast_paths.py.)"""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from bertforge.bench import BenchmarkArgs, batch_flops, measure, run_benchmark
from bertforge.runconfig import ModelArgs, RuntimeArgs
from bertforge.cli import main
from bertforge.errors import ConfigError, DataError
from bertforge.model import BertForPreTraining, BertForQuestionAnswering
from conftest import random_batch, tiny_config

COMMON_KEYS = {"seq_per_s", "tokens_per_s", "step_ms_p50", "step_ms_p99", "host_ms_p50", "first_step_s",
               "model_tflops", "mfu", "peak_memory_gb", "compiled", "unpadded"}


def tiny_args(vocab_file: str | None = None, **overrides) -> BenchmarkArgs:
    base = dict(model=ModelArgs(bert_model="tiny", vocab_file=vocab_file), runtime=RuntimeArgs(device="cpu"),
                seq_length=32, batch_size=2, steps=2, warmup=1)
    base.update(overrides)
    return BenchmarkArgs(**base)


def _positive_finite(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


# ---- the command ------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["qa", "pretraining"])
def test_train_mode_reports_speed_flops_memory_and_losses(task):
    r = measure(tiny_args(mode="train", task=task))
    ours = r["bertforge"]
    assert COMMON_KEYS | {"loss_first", "loss_last"} <= set(ours)
    for key in ("seq_per_s", "tokens_per_s", "model_tflops", "mfu", "peak_memory_gb", "step_ms_p50"):
        assert _positive_finite(ours[key]), key
    assert math.isfinite(ours["loss_first"]) and math.isfinite(ours["loss_last"])
    # synthetic data has no padding: every token is real
    assert r["real_token_fraction"] == 1.0
    assert ours["tokens_per_s"] == pytest.approx(32 * ours["seq_per_s"])
    assert r["precision"] == "fp32" and r["device_type"] == "cpu"
    assert _positive_finite(r["matmul_peak_tflops"])
    assert "real tokens only" in r["flops_counted"]
    assert "hf" not in r and "speedup_vs_hf" not in r
    if task == "pretraining":
        assert r["masked_positions"] == 5  # 20 per 128 tokens, at 32


def test_infer_mode_reports_latency():
    r = measure(tiny_args(mode="infer"))
    ours = r["bertforge"]
    assert COMMON_KEYS | {"latency_ms_p50", "latency_ms_p99"} <= set(ours)
    assert "loss_first" not in ours
    assert 0 < ours["latency_ms_p50"] <= ours["latency_ms_p99"]
    # two sequences per step: throughput and latency describe the same steps
    assert ours["seq_per_s"] == pytest.approx(2 / (ours["step_ms_p50"] / 1e3), rel=0.5)


def test_json_flag_prints_one_json_object(capsys):
    assert main(["benchmark", "--bert_model", "tiny", "--seq_length", "16", "--batch_size", "2",
                 "--steps", "1", "--warmup", "0", "--device", "cpu", "--mode", "infer", "--json"]) == 0
    out = capsys.readouterr().out.strip()
    result = json.loads(out)  # the whole of stdout is the one object
    assert result["mode"] == "infer" and result["bertforge"]["seq_per_s"] > 0


def test_table_output_names_the_numbers(capsys):
    run_benchmark(tiny_args(mode="infer"))
    out = capsys.readouterr().out
    for word in ("seq/s", "tokens/s", "MFU", "TFLOP/s", "matmul ceiling", "real tokens"):
        assert word in out


@pytest.mark.parametrize("task", ["qa", "pretraining"])
@pytest.mark.parametrize("mode", ["train", "infer"])
def test_compare_hf_same_weights_same_outputs(mode, task):
    """transformers' BERT, an independent implementation, loaded with our weights: the outputs
    agree (fp32), both sides are measured, and the speedup is their ratio."""
    r = measure(tiny_args(mode=mode, task=task, compare_hf=True))
    assert r["max_abs_diff_vs_hf"] < 1e-4
    assert COMMON_KEYS <= set(r["hf"])
    assert _positive_finite(r["speedup_vs_hf"])
    assert r["speedup_vs_hf"] == pytest.approx(r["bertforge"]["seq_per_s"] / r["hf"]["seq_per_s"])
    assert r["transformers"]
    if mode == "train":
        # same weights, same batch: the first losses differ only by dropout
        assert r["hf"]["loss_first"] == pytest.approx(r["bertforge"]["loss_first"], rel=0.2)


def test_compare_hf_dashed_flag_on_the_command_line(capsys):
    assert main(["benchmark", "--bert_model", "tiny", "--seq_length", "16", "--batch_size", "2",
                 "--steps", "1", "--warmup", "0", "--device", "cpu", "--compare-hf", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["speedup_vs_hf"] > 0


def test_compare_hf_without_transformers_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(ConfigError, match="pip install transformers"):
        measure(tiny_args(compare_hf=True))


def test_profile_writes_a_trace(tmp_path):
    trace = tmp_path / "trace.json"
    r = measure(tiny_args(mode="train", profile=True, compare_hf=True, trace_file=str(trace)))
    events = json.loads(trace.read_text())["traceEvents"]
    assert any("addmm" in e.get("name", "") or "linear" in e.get("name", "") for e in events)
    hf_trace = tmp_path / "trace_hf.json"
    assert json.loads(hf_trace.read_text())["traceEvents"]
    assert r["profile"]["bertforge"]["trace_file"] == str(trace)
    assert "Self CPU" in r["profile"]["bertforge"]["top"]


def test_squad_features_keep_their_padding(squad_dev_file, vocab_file):
    args = tiny_args(mode="infer", data="squad", seq_length=128, batch_size=4, squad_file=str(squad_dev_file),
                     vocab_file=str(vocab_file), compare_hf=True)
    r = measure(args)
    assert 0.2 < r["real_token_fraction"] < 1.0
    assert r["max_abs_diff_vs_hf"] < 1e-4  # real padding, unpadded path vs transformers' padded one
    assert r["bertforge"]["tokens_per_s"] < 128 * r["bertforge"]["seq_per_s"]


def test_missing_squad_file_names_the_path_and_flag(tmp_path, vocab_file):
    missing = tmp_path / "nope.json"
    with pytest.raises(DataError, match="nope.json.*--squad_file"):
        measure(tiny_args(data="squad", seq_length=128, squad_file=str(missing), vocab_file=str(vocab_file)))


@pytest.mark.parametrize("overrides, message", [
    (dict(data="squad", task="pretraining"), "--data squad goes with --task qa"),
    (dict(mode="infer", cuda_graphs=True), "CUDA"),
    (dict(cuda_graphs=True), "--mode infer"),
    (dict(seq_length=4096), "max_position_embeddings"),
    (dict(masked_positions=32), "masked_positions"),
    (dict(steps=0), "--steps"),
])
def test_bad_settings_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        measure(tiny_args(**overrides))


# ---- FLOPs ------------------------------------------------------------------------------------


def _counted_forward_flops(model, **batch) -> int:
    """torch's FLOP counter; SDPA's math backend spells attention out as matmuls it counts."""
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(**batch)
    return counter.get_total_flops()


@pytest.mark.parametrize("seq", [16, 48])
def test_flops_match_torch_flop_counter_qa(seq):
    """batch_flops against torch's own FLOP counter (matmuls and SDPA) on the padded model with
    no padding, where every token is real."""
    cfg = tiny_config(max_position_embeddings=64)
    model = BertForQuestionAnswering(cfg, unpad=False).eval()
    batch = random_batch(cfg, batch=3, seq=seq, min_len=seq)
    args = BenchmarkArgs(model=ModelArgs(bert_model="tiny"), seq_length=seq, task="qa")
    expected = _counted_forward_flops(model, **batch)
    assert batch_flops(cfg, args, [seq] * 3, training=False) == expected
    assert batch_flops(cfg, args, [seq] * 3, training=True) == 3 * expected


def test_flops_match_torch_flop_counter_pretraining():
    cfg = tiny_config()
    model = BertForPreTraining(cfg, unpad=False).eval()
    batch = random_batch(cfg, batch=2, seq=24, min_len=24)
    positions = torch.tensor([[1, 5, 9, 20], [2, 3, 4, 23]])
    args = BenchmarkArgs(model=ModelArgs(bert_model="tiny"), seq_length=24, task="pretraining", masked_positions=4)
    expected = _counted_forward_flops(model, **batch, masked_lm_positions=positions)
    assert batch_flops(cfg, args, [24, 24], training=False) == expected


def test_flops_count_real_tokens_only():
    """Padding adds no FLOPs: a batch of lengths (a, b) counts as sequences of a and b alone."""
    cfg = tiny_config()
    args = BenchmarkArgs(model=ModelArgs(bert_model="tiny"), seq_length=40, task="qa")
    model = BertForQuestionAnswering(cfg, unpad=False).eval()
    alone = sum(_counted_forward_flops(model, **random_batch(cfg, batch=1, seq=n, min_len=n))
                for n in (7, 31))
    assert batch_flops(cfg, args, [7, 31], training=False) == alone


def test_benchmark_flags_and_defaults():
    """The workload flags exist with their documented defaults (BERT-large QA training, seq 384 x
    batch 32, synthetic data)."""
    args = BenchmarkArgs()
    assert (args.model.bert_model, args.seq_length, args.batch_size, args.mode, args.task, args.data) == (
        "large", 384, 32, "train", "qa", "synthetic")
    # the runtime settings are every command's, with the same defaults
    assert args.runtime == RuntimeArgs()
    assert not args.compare_hf and not args.json
    assert BenchmarkArgs(seq_length=128).num_masked == 20
    assert BenchmarkArgs(seq_length=512).num_masked == 80
