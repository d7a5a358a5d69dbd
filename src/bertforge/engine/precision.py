"""Inference precisions of the PyTorch engine beyond autocast: bf16 on the CPU where it has bf16
matrix instructions, and int8 (dynamic quantisation of the linear layers).

- bf16: the linear layers' weights are stored in bf16 once, and the forward runs under
  `torch.autocast(device, torch.bfloat16)` (what `Runtime.autocast` opens): matrix products and
  attention in bf16 through oneDNN, LayerNorm, residual sums and the embeddings in fp32. Without
  the stored copy autocast would cast every weight again on every forward, which at batch 1
  costs about as much as the forward itself. A CPU without AVX512-BF16 or AMX emulates bf16
  products, slower than fp32, so bf16 is refused there.
- int8: every `nn.Linear` becomes torch's dynamically quantised linear layer
  (`torch.ao.quantization.quantize_dynamic`, fbgemm / oneDNN kernels, VNNI where the CPU has
  it): weights int8 with one scale per output channel, activations quantised per call from
  their own range (7 bits in torch's x86 kernels). On the unpadded path a call sees the real
  tokens only, so padding never widens that range. Per-channel weight scales cost nothing in
  speed and move a fine-tuned MiniLM-L6's answers less than one scale per tensor
  (benchmarks/RESULTS.md). The MLM decoder shares its weight
  with the word embeddings and stays fp32. CPU only.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from bertforge.errors import ConfigError
from bertforge.runconfig import Precision

InferencePrecision = Precision
"""fp32, tf32, bf16 and fp16 are the training precisions (autocast); int8 is inference only."""


def cpu_bf16_instructions() -> str | None:
    """The CPU's instructions that multiply bf16 matrices natively, as oneDNN uses them ("AMX" or
    "AVX512-BF16"), or None when bf16 products would be emulated."""
    # torch.cpu's probes are private but stable across releases; a torch without them is
    # treated as a CPU without bf16 (the check then refuses bf16 instead of guessing).
    if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        return "AMX"
    if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
        return "AVX512-BF16"
    return None


def check_precision(precision: str, device: torch.device) -> None:
    """A ConfigError, in one line, for a precision the device cannot run fast (before any work)."""
    if precision == "bf16" and device.type == "cpu" and cpu_bf16_instructions() is None:
        raise ConfigError("--precision bf16: this CPU has neither AVX512-BF16 nor AMX, so bf16 matrix "
                          "products would be emulated, slower than fp32; use --precision fp32 or int8")
    if precision == "int8" and device.type != "cpu":
        raise ConfigError(f"--precision int8 (dynamically quantised linear layers) runs on the CPU only, "
                          f"not {device}; use --precision bf16 or fp16 there")


def prepare_for_inference(model: nn.Module, precision: str) -> nn.Module:
    """The model made ready, in place, to predict in `precision` (see the module docstring); it
    can no longer be trained. fp32, tf32 and fp16 leave it as it is. Returns the model."""
    if precision == "int8":
        return quantize_int8(model)
    if precision == "bf16":
        return store_linear_weights(model, torch.bfloat16)
    return model


def store_linear_weights(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Keep every nn.Linear's weight and bias in `dtype` (the dtype autocast casts them to), in
    place; run the model under autocast to that dtype."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.to(dtype)
    return model


def quantize_int8(model: nn.Module) -> nn.Module:
    """Every nn.Linear replaced, in place, by torch's dynamically quantised int8 linear layer."""
    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to torchao (not a dependency of bertforge);
        # its dynamic quantisation still ships with torch and runs fbgemm/oneDNN int8 kernels.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.ao")
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear: qconfig}, dtype=torch.qint8, inplace=True)


def is_quantized(model: nn.Module) -> bool:
    """Whether quantize_int8 ran on the model."""
    return any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in model.modules())


__all__ = ["InferencePrecision", "check_precision", "cpu_bf16_instructions", "is_quantized",
           "prepare_for_inference", "quantize_int8", "store_linear_weights"]
