"""Inference precisions of the PyTorch engine on the CPU: int8 (dynamically quantised linear
layers, through the unpadded path) and bf16 (where the CPU has bf16 instructions), each within a
stated tolerance of the same model in fp32, through the prediction loop every command uses; and
the one-line refusals."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from bertforge.engine import precision as engine_precision
from bertforge.engine.precision import (
    check_precision, cpu_bf16_instructions, is_quantized, prepare_for_inference,
)
from bertforge.errors import ConfigError
from bertforge.infer import predict
from bertforge.model import attention, build_model
from bertforge.runconfig import RuntimeArgs
from bertforge.train.runtime import Runtime
from conftest import random_batch, tiny_config

# Largest difference from fp32 accepted, relative to the largest fp32 output (measured on these
# models and two other seeds, before SmoothQuant and 8-bit activations: int8 1.7-3.6%;
# bf16 0.3-0.6%).
INT8_RTOL = 0.06
BF16_RTOL = 0.02


def distinct_model(head: str = "qa", unpad: bool = True, seed: int = 0, **config) -> nn.Module:
    """A tiny model whose weights are all distinctive (fresh heads are nearly zero)."""
    torch.manual_seed(seed)
    model = build_model(tiny_config(hidden_size=64, intermediate_size=128, **config), head, unpad=unpad)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def relative_diff(got: torch.Tensor, want: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    got, want = got.float(), want.float()
    if mask is not None:
        got, want = got[mask], want[mask]
    return ((got - want).abs().max() / want.abs().max()).item()


def arrays_of(batch: dict) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in batch.items()}


def qa_forward(model, batch):
    return model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])


def test_int8_replaces_every_linear_and_stays_close_to_fp32():
    model = distinct_model()
    reference = copy.deepcopy(model)
    prepare_for_inference(model, "int8")
    assert is_quantized(model) and not is_quantized(reference)
    assert not any(type(m) is nn.Linear for m in model.modules())
    batch = random_batch(model.config, batch=6, seq=40, seed=1)
    with torch.inference_mode():
        got, want = model(**batch), reference(**batch)
    real = batch["attention_mask"].bool()
    for g, w in zip(got, want):
        assert g.dtype == torch.float32
        assert 0 < relative_diff(g, w, real) <= INT8_RTOL  # quantised (not equal), and close


def test_int8_runs_the_unpadded_path_where_padding_changes_nothing(monkeypatch):
    """Activations are quantised per call from their own range; unpadded, a call sees the real
    tokens only, so a batch with more padding columns gives the very same outputs."""
    model = prepare_for_inference(distinct_model(), "int8")
    calls = []

    def spy(qkv, layout, dropout_p, recompute=False):
        calls.append(qkv.shape[0])
        return real_kernel(qkv, layout, dropout_p, recompute)

    real_kernel = attention.unpadded_attention
    monkeypatch.setattr(attention, "unpadded_attention", spy)
    batch = random_batch(model.config, batch=5, seq=24, seed=2)
    wider = {k: torch.nn.functional.pad(v, (0, 16)) for k, v in batch.items()}  # 16 more padding columns
    with torch.inference_mode():
        start, end = model(**batch)
        start_w, end_w = model(**wider)
    real = int(batch["attention_mask"].sum())
    assert calls == [real] * (2 * model.config.num_hidden_layers)  # (N, ...) real tokens, every layer
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(start_w[:, :24][mask], start[mask], rtol=0, atol=1e-6)
    torch.testing.assert_close(end_w[:, :24][mask], end[mask], rtol=0, atol=1e-6)


@pytest.mark.parametrize("head", ["classification", "base"])
def test_int8_other_heads_stay_close_to_fp32(head):
    model = distinct_model(head)
    reference = copy.deepcopy(model)
    prepare_for_inference(model, "int8")
    batch = random_batch(model.config, batch=4, seq=30, seed=3)
    with torch.inference_mode():
        got, want = model(**batch), reference(**batch)
    if head == "base":
        got, want = got.pooled_output, want.pooled_output
    assert relative_diff(got, want) <= INT8_RTOL


def test_int8_through_the_prediction_loop():
    model = distinct_model()
    reference = copy.deepcopy(model)
    prepare_for_inference(model, "int8")
    batch = random_batch(model.config, batch=11, seq=48, seed=4)
    runtime = Runtime(RuntimeArgs(device="cpu", precision="fp32"))
    got = predict(model, arrays_of(batch), 4, runtime, qa_forward, progress=False, per_token=True)
    want = predict(reference, arrays_of(batch), 4, runtime, qa_forward, progress=False, per_token=True)
    real = batch["attention_mask"].bool().numpy()
    for g, w in zip(got, want):
        assert 0 < relative_diff(torch.from_numpy(g), torch.from_numpy(w), torch.from_numpy(real)) <= INT8_RTOL


needs_bf16 = pytest.mark.skipif(cpu_bf16_instructions() is None, reason="this CPU has no AVX512-BF16 or AMX")


@needs_bf16
def test_bf16_stores_linear_weights_once_and_stays_close_to_fp32():
    model = distinct_model()
    reference = copy.deepcopy(model)
    prepare_for_inference(model, "bf16")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(m.weight.dtype == m.bias.dtype == torch.bfloat16 for m in linears)
    assert model.bert.embeddings.word_embeddings.weight.dtype == torch.float32  # only the matmuls
    assert model.bert.embeddings.norm.weight.dtype == torch.float32
    batch = random_batch(model.config, batch=6, seq=40, seed=5)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = model(**batch)
    with torch.inference_mode():
        want = reference(**batch)
    real = batch["attention_mask"].bool()
    for g, w in zip(got, want):
        assert g.dtype == torch.bfloat16  # the products really ran in bf16
        assert 0 < relative_diff(g, w, real) <= BF16_RTOL


@needs_bf16
def test_bf16_through_the_prediction_loop():
    model = distinct_model()
    reference = copy.deepcopy(model)
    prepare_for_inference(model, "bf16")
    batch = random_batch(model.config, batch=9, seq=48, seed=6)
    got = predict(model, arrays_of(batch), 4, Runtime(RuntimeArgs(device="cpu", precision="bf16")), qa_forward,
                  progress=False, per_token=True)
    want = predict(reference, arrays_of(batch), 4, Runtime(RuntimeArgs(device="cpu")), qa_forward,
                   progress=False, per_token=True)
    real = torch.from_numpy(batch["attention_mask"].bool().numpy())
    for g, w in zip(got, want):
        assert 0 < relative_diff(torch.from_numpy(g), torch.from_numpy(w), real) <= BF16_RTOL


def test_bf16_on_a_cpu_without_bf16_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert engine_precision.cpu_bf16_instructions() is None
    with pytest.raises(ConfigError) as err:
        check_precision("bf16", torch.device("cpu"))
    message = str(err.value)
    assert "\n" not in message and "AVX512-BF16" in message and "--precision fp32" in message
    check_precision("fp32", torch.device("cpu"))
    check_precision("int8", torch.device("cpu"))


def test_instructions_reported_as_torch_detects_them(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert cpu_bf16_instructions() == "AVX512-BF16"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert cpu_bf16_instructions() == "AMX"
    check_precision("bf16", torch.device("cpu"))


def test_int8_off_the_cpu_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^--precision int8 .* CPU only, not cuda:0; use --precision bf16"):
        check_precision("int8", torch.device("cuda", 0))
