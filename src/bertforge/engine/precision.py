"""Inference precisions of the PyTorch engine beyond autocast: bf16 on the CPU where it has bf16
matrix instructions, and int8 (dynamic quantisation of the linear layers).

- bf16: the linear layers' weights are stored in bf16 once, and the forward runs under
  `torch.autocast(device, torch.bfloat16)` (what `Runtime.autocast` opens): matrix products and
  attention in bf16 through oneDNN, LayerNorm, residual sums and the embeddings in fp32. Without
  the stored copy autocast would cast every weight again on every forward, which at batch 1
  costs about as much as the forward itself. A CPU without AVX512-BF16 or AMX emulates bf16
  products, slower than fp32, so bf16 is refused there.
- int8: every `nn.Linear` becomes torch's dynamically quantised linear layer
  (`torch.ao.quantization.quantize_dynamic`, fbgemm kernels): weights int8 with one scale per
  output channel, activations quantised per call from their own range. On the unpadded path a
  call sees the real tokens only, so padding never widens that range. Two things keep answers
  where fp32 puts them (benchmarks/RESULTS.md: a fine-tuned MiniLM-L6's SQuAD F1 moves by -3.55
  without them, by +0.25 to -0.27 with them):
  * SmoothQuant (Xiao et al. 2023, "SmoothQuant: accurate and efficient post-training
    quantization for large language models"): BERT's activations have a few channels 5-15x
    wider than the rest (FFN inputs reach 28 where 99.9% of values lie below 6), and one
    activation scale per call spends its 256 levels on them. Each linear layer's input is
    divided per channel by s = max|X|^a / max|W|^(1-a) and its weight's columns multiplied by s
    (exact in real arithmetic), moving the width into the weights, which have a scale per
    channel. max|X| is measured once, when the model is quantised, on seeded random token ids
    (`activation_ranges`): BERT's outlier channels are properties of the weights (its
    LayerNorms), not of the text, so random ids find them with no data at hand (SQuAD text
    found them a little better: benchmarks/RESULTS.md).
    Written here because it is a dozen lines of arithmetic over torch's own quantised layer;
    the libraries that ship it (Intel Neural Compressor, torchao) would be a large dependency.
    Where the input is attention's output the division is folded into the value projection
    (attention mixes tokens, not channels, so scaling V's output channels scales the context's).
    Post-LayerNorm BERT feeds each LayerNorm's output to the residual too, so there the division
    cannot be folded into LayerNorm's weights: it is a multiplication before the layer
    (`SmoothedInput`), a few percent of the layer's time, done in place on GELU's output, which
    nothing else reads.
  * 8-bit activations where the CPU has VNNI: torch's layer quantises activations to 7 bits by
    default, so that AVX2's 16-bit intermediate sums cannot saturate; VNNI's instructions sum
    into 32 bits, and there the full 8 bits are exact.
  The MLM decoder shares its weight with the word embeddings and stays fp32. CPU only.
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

from bertforge.errors import ConfigError
from bertforge.runconfig import Precision

log = logging.getLogger(__name__)

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


SMOOTHING_ALPHA = 0.6
"""SmoothQuant's migration strength a (0: no smoothing, 1: all of the activations' width moved into
the weights). Chosen without answers (benchmarks/int8_recipe.py): on windows of the training
articles of a MiniLM-L6 fine-tuned on SQuAD, the int8 start/end logits' mean difference from fp32
was 0.116 unsmoothed, 0.137-0.146 at a = 0.5, 0.095-0.102 at 0.6, 0.117-0.125 at 0.7 and
0.149-0.156 at 0.8 (16, 32 or 64 calibration windows alike)."""

CALIBRATION_WINDOWS = 16
"""How many random windows (of up to 384 tokens) `activation_ranges` runs through the model: a
one-off cost when the model is quantised (BERT-large: 29 s on 2 CPU cores; MiniLM: under 1 s).
The measured results use 16; 4 and 8 windows gave the same logit error (0.091 and 0.093)."""

CALIBRATION_CHUNK = 4
"""Windows per forward pass while measuring ranges (a pretraining head's logits over the whole
vocabulary for 4 windows of 384 tokens take 190 MB)."""


class SmoothedInput(nn.Module):
    """A linear layer whose input is first divided per channel (SmoothQuant): linear(x * inverse_scale).
    `inplace`: the input is a temporary nobody else reads, so the multiplication may overwrite it
    (no second buffer of the input's size) when autograd is off."""

    def __init__(self, linear: nn.Module, inverse_scale: torch.Tensor, inplace: bool = False):
        super().__init__()
        self.linear = linear
        self.inplace = inplace
        self.register_buffer("inverse_scale", inverse_scale)  # (in_features,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_features) -> (..., out_features)"""
        inverse_scale = self.inverse_scale.to(x.dtype)
        if self.inplace and not torch.is_grad_enabled():
            return self.linear(x.mul_(inverse_scale))
        return self.linear(x * inverse_scale)


SMOOTHED_IN_PLACE = ("ffn.output",)
"""The linear layers whose input is a temporary that only they read (FeedForward's GELU output),
so SmoothedInput multiplies it in place."""

FOLDED_INTO_VALUES = ("attention_output",)
"""The linear layers whose input is attention's output: their smoothing is folded into the value
rows of the sibling `attention.qkv` (see fold_into_values)."""


class Int8Linear(torch.ao.nn.quantized.dynamic.Linear):
    """torch's dynamically quantised linear layer with 8-bit activations (its own forward passes
    reduce_range=True, 7 bits, for CPUs without VNNI)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params,
                                                  reduce_range=False).to(x.dtype)


def calibration_inputs(config, windows: int = CALIBRATION_WINDOWS, seed: int = 0) -> dict[str, torch.Tensor]:
    """`windows` full windows of seeded random token ids over the whole vocabulary, the first
    eighth in segment A and the rest in segment B (as a question and its paragraph)."""
    length = min(384, config.max_position_embeddings)
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, config.vocab_size, (windows, length), generator=generator)
    token_type_ids = torch.zeros_like(input_ids)
    if config.type_vocab_size > 1:
        token_type_ids[:, length // 8:] = 1
    return {"input_ids": input_ids, "token_type_ids": token_type_ids,
            "attention_mask": torch.ones_like(input_ids)}


def activation_ranges(model: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each nn.Linear's (by module name) largest input magnitude per input channel over `inputs`
    (on the model's path, in fp32)."""
    ranges: dict[str, torch.Tensor] = {}

    def record(name):
        def hook(module, args):
            seen = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0).float()
            ranges[name] = torch.maximum(ranges[name], seen) if name in ranges else seen
        return hook

    hooks = [m.register_forward_pre_hook(record(n)) for n, m in model.named_modules() if type(m) is nn.Linear]
    try:
        with torch.inference_mode():
            for start in range(0, len(inputs["input_ids"]), CALIBRATION_CHUNK):
                model(**{k: v[start:start + CALIBRATION_CHUNK] for k, v in inputs.items()})
    finally:
        for h in hooks:
            h.remove()
    return ranges


def smooth_activations(model: nn.Module, ranges: dict[str, torch.Tensor],
                       alpha: float = SMOOTHING_ALPHA) -> nn.Module:
    """SmoothQuant, in place: every nn.Linear named in `ranges` gets its weight's columns
    multiplied by s = range^alpha / max|W|^(1-alpha) and becomes SmoothedInput(linear, 1/s).
    The model computes the same function (up to rounding). Returns the model."""
    for name, linear in list(model.named_modules()):
        if type(linear) is not nn.Linear or name not in ranges:
            continue
        with torch.no_grad():
            weight_range = linear.weight.abs().amax(0).float().clamp(min=1e-5)  # (in_features,)
            s = (ranges[name].clamp(min=1e-5) ** alpha / weight_range ** (1 - alpha)).clamp(min=1e-5)
            linear.weight.mul_(s.to(linear.weight.dtype))
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        if child in FOLDED_INTO_VALUES and fold_into_values(owner, 1 / s):
            continue
        inplace = any(f".{name}".endswith(f".{site}") for site in SMOOTHED_IN_PLACE)
        setattr(owner, child, SmoothedInput(linear, 1 / s, inplace=inplace))
    return model


def fold_into_values(layer: nn.Module, inverse_scale: torch.Tensor) -> bool:
    """Multiply the value rows of layer.attention.qkv (weight and bias) by inverse_scale (H,), so
    that attention's output arrives already divided: softmax(q k^T) (v * d) = (softmax(q k^T) v) * d.
    False, changing nothing, when the layer has no such projection."""
    try:
        qkv = layer.get_submodule("attention.qkv")
    except AttributeError:
        return False
    qkv = qkv.linear if isinstance(qkv, SmoothedInput) else qkv
    hidden = inverse_scale.numel()
    if type(qkv) is not nn.Linear or qkv.out_features != 3 * hidden:
        return False
    with torch.no_grad():  # rows are (q, k, v) x (heads, head_dim): the last H are v's channels
        qkv.weight[2 * hidden:].mul_(inverse_scale[:, None].to(qkv.weight.dtype))
        if qkv.bias is not None:
            qkv.bias[2 * hidden:].mul_(inverse_scale.to(qkv.bias.dtype))
    return True


def smooth_for_int8(model: nn.Module) -> nn.Module:
    """SmoothQuant as int8 applies it, in place (the PyTorch engine and the int8 ONNX export):
    ranges from CALIBRATION_WINDOWS random windows, SMOOTHING_ALPHA. Returns the model."""
    log.info("int8: measuring the linear layers' input ranges on %d random windows (SmoothQuant)",
             CALIBRATION_WINDOWS)
    return smooth_activations(model, activation_ranges(model.eval(), calibration_inputs(model.config)))


def quantize_int8(model: nn.Module, smooth: bool = True) -> nn.Module:
    """The model, in place, with every nn.Linear replaced by torch's dynamically quantised int8
    linear layer, its input smoothed first (`smooth`; see the module docstring)."""
    if smooth:
        smooth_for_int8(model)
    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to torchao (not a dependency of bertforge);
        # its dynamic quantisation still ships with torch and runs fbgemm/oneDNN int8 kernels.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.ao")
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
        mapping = {nn.Linear: Int8Linear if cpu_has_vnni() else torch.ao.nn.quantized.dynamic.Linear}
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear: qconfig}, dtype=torch.qint8,
                                                      mapping=mapping, inplace=True)


def cpu_has_vnni() -> bool:
    """Whether the CPU has AVX512-VNNI (int8 products summed into 32 bits)."""
    return bool(getattr(torch.cpu, "_is_vnni_supported", lambda: False)())


def is_quantized(model: nn.Module) -> bool:
    """Whether quantize_int8 ran on the model."""
    return any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in model.modules())


__all__ = ["CALIBRATION_WINDOWS", "FOLDED_INTO_VALUES", "SMOOTHED_IN_PLACE", "SMOOTHING_ALPHA",
           "InferencePrecision", "Int8Linear", "SmoothedInput", "activation_ranges", "calibration_inputs",
           "check_precision", "cpu_bf16_instructions", "cpu_has_vnni", "fold_into_values", "is_quantized",
           "prepare_for_inference", "quantize_int8", "smooth_activations", "smooth_for_int8",
           "store_linear_weights"]
