"""int8's accuracy measures (bertforge.engine.precision): SmoothQuant leaves the fp32 function
unchanged and shrinks int8's error where activations have outlier channels; Int8Linear quantises
activations to 8 bits, checked against the quantised product written out here; quantize_int8
picks it where the CPU has VNNI; the int8 ONNX export carries the same smoothing."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bertforge.engine import precision as engine_precision
from bertforge.engine.precision import (
    Int8Linear, SmoothedInput, activation_ranges, calibration_inputs, quantize_int8, smooth_activations,
)
from conftest import random_batch
from engine.test_cpu_precision import distinct_model, qa_forward, relative_diff


def with_outlier_channels(model: nn.Module, channels=(3, 17), factor: float = 25.0) -> nn.Module:
    """The model with a few hidden channels `factor` times wider after every LayerNorm, as
    pretrained BERTs have (their LayerNorm weights single out a few channels)."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.LayerNorm) and "bert." in name:
                module.weight[list(channels)] *= factor
    return model


def test_smoothing_leaves_the_fp32_function_unchanged():
    model = distinct_model()
    batch = random_batch(model.config, batch=3, seq=24, seed=1)
    with torch.inference_mode():
        want = qa_forward(model, batch)
    smoothed = smooth_activations(copy.deepcopy(model), activation_ranges(model, calibration_inputs(model.config)))
    # Every linear layer smoothed: the attention output projections by their layer's value rows,
    # the others by a multiplication (in place on GELU's output, which only ffn.output reads).
    wrapped = {name: m for name, m in smoothed.named_modules() if isinstance(m, SmoothedInput)}
    layers = model.config.num_hidden_layers
    assert len(wrapped) == sum(type(m) is nn.Linear for m in model.modules()) - layers
    assert not any(name.endswith("attention_output") for name in wrapped)
    assert sorted(name for name, m in wrapped.items() if m.inplace) == [
        f"bert.encoder.layers.{i}.ffn.output" for i in range(layers)]
    with torch.inference_mode():  # (in-place multiplications run only without autograd)
        got = qa_forward(smoothed, batch)
    mask = batch["attention_mask"].bool()
    for g, w in zip(got, want):
        assert relative_diff(g, w, mask) < 1e-5


def mean_error(got, want, mask) -> float:
    """The larger of the two outputs' mean |error| over real tokens, relative to their mean |value|."""
    return max(((g - w)[mask].abs().mean() / w[mask].abs().mean()).item() for g, w in zip(got, want))


def int8_errors(model: nn.Module) -> tuple[float, float]:
    """int8's mean error without and with smoothing, on one random batch."""
    batch = random_batch(model.config, batch=4, seq=32, seed=2)
    mask = batch["attention_mask"].bool()
    with torch.inference_mode():
        want = qa_forward(model, batch)
        plain = qa_forward(quantize_int8(copy.deepcopy(model), smooth=False), batch)
        smoothed = qa_forward(quantize_int8(copy.deepcopy(model)), batch)
    return mean_error(plain, want, mask), mean_error(smoothed, want, mask)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_smoothing_shrinks_int8_error_where_activations_have_outlier_channels(seed):
    # measured: 0.0099 -> 0.0065, 0.0235 -> 0.0061, 0.0216 -> 0.0060
    plain, smoothed = int8_errors(with_outlier_channels(distinct_model(seed=seed), factor=10))
    assert smoothed < 0.75 * plain, (smoothed, plain)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_smoothing_costs_nothing_without_outlier_channels(seed):
    # measured: 0.0122 -> 0.0132, 0.0124 -> 0.0118, 0.0143 -> 0.0142
    plain, smoothed = int8_errors(distinct_model(seed=seed))
    assert smoothed < 1.2 * plain, (smoothed, plain)


def quantised_product(x: torch.Tensor, linear: nn.Linear, activation_levels: int) -> torch.Tensor:
    """x @ W.T + b with W int8, symmetric, one scale per output channel (scale max|W| / 127.5,
    as torch's per-channel observer sets it), and x quantised over [min(x, 0), max(x, 0)] to
    `activation_levels` levels with an integer zero point: the dynamic quantised product."""
    w = linear.weight.detach()
    w_scale = w.abs().amax(1, keepdim=True) / 127.5
    wq = (w / w_scale).round().clamp(-128, 127)
    lo, hi = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
    x_scale = (hi - lo) / (activation_levels - 1)
    zero = round(-lo / x_scale)
    xq = (x / x_scale + zero).round().clamp(0, activation_levels - 1)
    return ((xq - zero) * x_scale) @ (wq * w_scale).T + linear.bias.detach()


def test_int8_linear_quantises_activations_to_8_bits():
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    x = torch.randn(40, 64) * 3
    with torch.no_grad():
        eight = quantize_int8(nn.Sequential(copy.deepcopy(linear)), smooth=False)[0]
    # whichever class the CPU gets, Int8Linear's forward is the one under test
    eight.__class__ = Int8Linear
    with torch.inference_mode():
        got = eight(x)
    reference_8, reference_7 = quantised_product(x, linear, 256), quantised_product(x, linear, 128)
    error_8, error_7 = (got - reference_8).abs().max().item(), (got - reference_7).abs().max().item()
    scale = reference_8.abs().max().item()
    assert error_8 < 2e-3 * scale, (error_8, scale)
    assert error_8 < error_7 / 3, (error_8, error_7)


@pytest.mark.parametrize("vnni", [True, False])
def test_eight_bit_activations_only_where_the_cpu_has_vnni(monkeypatch, vnni):
    monkeypatch.setattr(engine_precision, "cpu_has_vnni", lambda: vnni)
    model = quantize_int8(distinct_model())
    quantised = [m for m in model.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert quantised and all((type(m) is Int8Linear) == vnni for m in quantised)


def test_calibration_inputs_are_seeded_full_windows_in_two_segments():
    config = distinct_model().config
    a, b = calibration_inputs(config), calibration_inputs(config)
    assert torch.equal(a["input_ids"], b["input_ids"])
    length = min(384, config.max_position_embeddings)
    assert a["input_ids"].shape == (engine_precision.CALIBRATION_WINDOWS, length)
    assert int(a["input_ids"].max()) < config.vocab_size and bool(a["attention_mask"].all())
    assert a["token_type_ids"][0, 0] == 0 and a["token_type_ids"][0, -1] == 1
