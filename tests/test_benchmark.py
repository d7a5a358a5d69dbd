"""`bertforge benchmark` and the fast paths it measures: results carry what they promise, the
FLOP count matches an independent counter, and every fast path computes the same function as
a plain reference (padded vs unpadded vs per-sequence vs jagged attention, grouped CPU
inference, compiled layers, and transformers' BERT with the same weights)."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from bertforge.benchmark import BenchmarkArgs, batch_flops, measure, run_benchmark
from bertforge.cli import main
from bertforge.errors import ConfigError, DataError
from bertforge.model import BertForPreTraining, BertForQuestionAnswering
from bertforge.model import bert as bert_module
from helpers import random_batch, tiny_config

COMMON_KEYS = {"seq_per_s", "tokens_per_s", "step_ms_p50", "step_ms_p99", "model_tflops", "mfu",
               "peak_memory_gb", "compiled", "unpadded"}


def tiny_args(**overrides) -> BenchmarkArgs:
    base = dict(bert_model="tiny", seq_length=32, batch_size=2, steps=2, warmup=1, device="cpu")
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
    args = BenchmarkArgs(bert_model="tiny", seq_length=seq, task="qa")
    expected = _counted_forward_flops(model, **batch)
    assert batch_flops(cfg, args, [seq] * 3, training=False) == expected
    assert batch_flops(cfg, args, [seq] * 3, training=True) == 3 * expected


def test_flops_match_torch_flop_counter_pretraining():
    cfg = tiny_config()
    model = BertForPreTraining(cfg, unpad=False).eval()
    batch = random_batch(cfg, batch=2, seq=24, min_len=24)
    positions = torch.tensor([[1, 5, 9, 20], [2, 3, 4, 23]])
    args = BenchmarkArgs(bert_model="tiny", seq_length=24, task="pretraining", masked_positions=4)
    expected = _counted_forward_flops(model, **batch, masked_lm_positions=positions)
    assert batch_flops(cfg, args, [24, 24], training=False) == expected


def test_flops_count_real_tokens_only():
    """Padding adds no FLOPs: a batch of lengths (a, b) counts as sequences of a and b alone."""
    cfg = tiny_config()
    args = BenchmarkArgs(bert_model="tiny", seq_length=40, task="qa")
    model = BertForQuestionAnswering(cfg, unpad=False).eval()
    alone = sum(_counted_forward_flops(model, **random_batch(cfg, batch=1, seq=n, min_len=n))
                for n in (7, 31))
    assert batch_flops(cfg, args, [7, 31], training=False) == alone


# ---- fast paths compute the same function -----------------------------------------------------


def _reference_attention(qkv, lengths):
    """Softmax attention written out per sequence, in float64: (N, 3, nh, hd) -> (N, nh, hd)."""
    out, start = [], 0
    for n in lengths:
        q, k, v = qkv[start:start + n].double().unbind(1)  # each (n, nh, hd)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(q.shape[-1])
        out.append(torch.einsum("hqk,khd->qhd", scores.softmax(-1), v))
        start += n
    return torch.cat(out).float()


@pytest.mark.parametrize("path", ["per_sequence", "padded_grid", "jagged"])
def test_unpadded_attention_kernels_match_reference(path):
    torch.manual_seed(1)
    lengths, T = [5, 13, 1, 9], 13
    mask = (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).long()
    layout = bert_module.Unpadded.from_mask(mask)
    qkv = torch.randn(sum(lengths), 3, 4, 8)
    q, k, v = qkv.unbind(1)
    if path == "per_sequence":
        out = bert_module._per_sequence_attention(q, k, v, layout.lengths, 0.0)
    elif path == "padded_grid":
        out = bert_module._padded_grid_attention(qkv, layout, 0.0)
    else:  # the CUDA path for attention dropout / fp32, run here on the CPU
        out = bert_module._jagged_attention(q, k, v, layout, 0.0)
    torch.testing.assert_close(out, _reference_attention(qkv, lengths), rtol=1e-5, atol=1e-5)


def test_unpadded_layout_without_padding_is_the_padded_layout():
    assert bert_module.Unpadded.from_mask(torch.ones(3, 7, dtype=torch.long)) is None


@pytest.mark.parametrize("unpad", [False, True])
def test_grouped_cpu_inference_equals_one_pass(monkeypatch, unpad):
    """CPU inference encodes groups of sequences (allocator-friendly); with gradients on it
    encodes the batch in one pass. Both give the same outputs."""
    cfg = tiny_config(max_position_embeddings=64)
    model = BertForQuestionAnswering(cfg, unpad=unpad).eval()
    batch = random_batch(cfg, batch=7, seq=20, seed=4)
    monkeypatch.setattr(bert_module, "CPU_GROUP_TOKENS", 40)
    real = batch["attention_mask"] if unpad else None
    assert len(bert_module._cpu_inference_groups(batch["input_ids"], real)) == 1  # gradients on
    with torch.inference_mode():
        groups = bert_module._cpu_inference_groups(batch["input_ids"], real)
        grouped = model(**batch)
    assert len(groups) > 2 and groups[0].start == 0 and groups[-1].stop == 7
    assert all(a.stop == b.start for a, b in zip(groups, groups[1:]))  # consecutive, all covered
    with torch.enable_grad():
        one_pass = model(**batch)
    mask = batch["attention_mask"].bool()
    for a, b in zip(grouped, one_pass):
        torch.testing.assert_close(a[mask], b.detach()[mask], rtol=1e-5, atol=1e-6)


def test_cpu_inference_groups_count_real_tokens_when_unpadding():
    ids = torch.zeros(6, 100, dtype=torch.long)
    mask = (torch.arange(100)[None] < torch.tensor([30, 30, 30, 30, 100, 10])[:, None]).long()
    with torch.inference_mode():
        padded = bert_module._cpu_inference_groups(ids, None)
        real = bert_module._cpu_inference_groups(ids, mask)
    assert len(padded) == 1  # 600 tokens: one group
    assert len(real) == 1
    with torch.inference_mode(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(bert_module, "CPU_GROUP_TOKENS", 100)
        groups = bert_module._cpu_inference_groups(ids, mask)
        assert groups == [slice(0, 3), slice(3, 4), slice(4, 5), slice(5, 6)]
        assert len(bert_module._cpu_inference_groups(ids, None)) == 6


def test_padded_unpadded_and_hf_agree_on_varied_lengths():
    import transformers
    from bertforge.checkpoint import native_to_hf
    from helpers import hf_config

    cfg = tiny_config()
    padded = BertForQuestionAnswering(cfg, unpad=False).eval()
    unpadded = BertForQuestionAnswering(cfg, unpad=True).eval()
    unpadded.load_state_dict(padded.state_dict())
    theirs = transformers.BertForQuestionAnswering(hf_config(cfg)).eval()
    theirs.load_state_dict(native_to_hf(padded.state_dict()))
    batch = random_batch(cfg, batch=6, seq=17, seed=5)
    mask = batch["attention_mask"].bool()
    with torch.inference_mode():
        ref = theirs(**batch).start_logits[mask]
        for model in (padded, unpadded):
            torch.testing.assert_close(model(**batch)[0][mask], ref, rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("unpad", [False, True])
def test_compiled_layers_match_eager(unpad):
    """torch.compile'd encoder layers (as training and CUDA inference run them) compute what the
    eager layers compute, forward and backward."""
    from bertforge.train.loop import compile_layers

    cfg = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    eager = BertForQuestionAnswering(cfg, unpad=unpad)
    compiled = BertForQuestionAnswering(cfg, unpad=unpad)
    compiled.load_state_dict(eager.state_dict())
    compile_layers(compiled)
    batch = random_batch(cfg, batch=4, seq=12, seed=6)
    mask = batch["attention_mask"].bool()
    for model in (eager, compiled):
        start, end = model(**batch)
        (start[mask].sum() + (end[mask] ** 2).sum()).backward()
    with torch.no_grad():
        torch.testing.assert_close(compiled(**batch)[0][mask], eager(**batch)[0][mask], rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_benchmark_flags_cover_the_issue():
    """Flag names the issue asks for exist, with the defaults it names."""
    args = BenchmarkArgs()
    assert (args.bert_model, args.seq_length, args.batch_size, args.mode, args.task, args.data) == (
        "large", 384, 32, "train", "qa", "synthetic")
    assert args.compile is None and args.unpad and not args.compare_hf and not args.json
    assert BenchmarkArgs(seq_length=128).num_masked == 20
    assert BenchmarkArgs(seq_length=512).num_masked == 80
