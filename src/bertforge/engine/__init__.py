"""How a trained model predicts on a CPU or an accelerator: the engine (PyTorch, or onnxruntime
running an export) and the inference precision (`precision`: bf16 and int8 beyond autocast).

- engine "torch": bertforge's own model, unpadded (no FLOPs on padding), in fp32, bf16 (where
  the CPU has AVX512-BF16 or AMX), int8 (dynamically quantised linear layers), or on
  accelerators tf32/fp16/bf16;
- engine "onnxruntime": the model exported to ONNX (int8: quantised by onnxruntime), run by
  onnxruntime on the CPU on length buckets (`ort.OrtModel`), fp32 or int8.

`inference_model` turns a model loaded for prediction into the one that predicts, for every
entry point (`bertforge predict`, `bertforge.load`, `bertforge serve`); `check_inference` makes
its refusals before anything is loaded. benchmarks/RESULTS.md measures each against Hugging
Face transformers and optimum's onnxruntime int8 recipe; README says which to use when.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch
from torch import nn

from bertforge.engine.ort import OrtModel, is_export_dir
from bertforge.engine.precision import (
    InferencePrecision, check_precision, cpu_bf16_instructions, prepare_for_inference,
)
from bertforge.errors import ConfigError
from bertforge.runconfig import Engine

log = logging.getLogger(__name__)

ENGINES = ("torch", "onnxruntime")
ORT_PRECISIONS = ("fp32", "int8")


def check_engine(engine: str, precision: str, device_type: str) -> None:
    """A one-line ConfigError for an engine that cannot run `precision` on the device."""
    if engine not in ENGINES:
        raise ConfigError(f"--engine {engine!r}: engines are {', '.join(ENGINES)}")
    if engine == "onnxruntime":
        if device_type != "cpu":
            raise ConfigError(f"--engine onnxruntime runs on the CPU here, not {device_type}; use --engine torch")
        if precision not in ORT_PRECISIONS:
            raise ConfigError(f"--engine onnxruntime runs fp32 or int8 exports, not --precision {precision}; "
                              "use --engine torch for bf16")


def check_inference(precision: str, engine: str, device: torch.device, streams: int = 1) -> None:
    """Every refusal of predicting in `precision` with `engine` on `device` in `streams`
    streams, in one line: run it before loading anything."""
    check_engine(engine, precision, device.type)
    check_precision(precision, device)
    if streams > 1 and (device.type != "cpu" or engine != "torch"):
        where = f"the {engine} engine" if engine != "torch" else device.type
        raise ConfigError(f"--streams {streams}: streams share a CPU's threads between forward passes of the "
                          f"torch engine, not on {where}; leave --streams at 1 there")


def inference_model(model: nn.Module, precision: str, engine: str, device: torch.device,
                    threads: int | None = None) -> nn.Module:
    """The model that predicts, made from `model` as `load_model` built it (after any change
    of its own, such as a reordered classifier, and before its first forward): for engine
    torch, `model` itself prepared for `precision` (`prepare_for_inference`: int8 quantised,
    bf16 weights stored in bf16; it can no longer be trained); for engine onnxruntime, an
    OrtModel of `model` exported now (`threads`: its intra-op threads)."""
    check_inference(precision, engine, device)
    model.eval()
    if engine == "onnxruntime":
        return onnxruntime_model(model, precision, threads)
    return prepare_for_inference(model, precision)


def onnxruntime_model(source: str | Path | nn.Module, precision: str = "fp32", threads: int | None = None,
                      bert_config: str | None = None) -> OrtModel:
    """An OrtModel of `source`: a `bertforge export` directory (whose precision must be
    `precision`), a model in memory, or any checkpoint bertforge reads; the last two are
    exported now (into a temporary directory; about as long as loading the model twice) in
    `precision`."""
    check_engine("onnxruntime", precision, "cpu")
    if isinstance(source, nn.Module):
        from bertforge.export import export_for_engine

        with tempfile.TemporaryDirectory(prefix="bertforge-onnx-") as tmp:
            log.info("exporting the %s model to ONNX (%s) for the onnxruntime engine", source.head, precision)
            export_for_engine(source, Path(tmp) / "export", precision)
            return OrtModel(Path(tmp) / "export", threads=threads)  # the session holds the graph in memory
    if is_export_dir(source):
        model = OrtModel(source, threads=threads)
        if model.precision != precision:
            raise ConfigError(f"{source} is a {model.precision} export, not {precision}: pass --precision "
                              f"{model.precision}, or export again with --precision {precision}")
        return model
    from bertforge.export import ExportArgs, export

    with tempfile.TemporaryDirectory(prefix="bertforge-onnx-") as tmp:
        log.info("exporting %s to ONNX (%s) for the onnxruntime engine", source, precision)
        export(ExportArgs(checkpoint=str(source), output_dir=str(Path(tmp) / "export"), precision=precision,
                          bert_model=bert_config))
        return OrtModel(Path(tmp) / "export", threads=threads)  # the session holds the graph in memory


__all__ = ["ENGINES", "Engine", "InferencePrecision", "OrtModel", "check_engine", "check_inference",
           "check_precision", "cpu_bf16_instructions", "inference_model", "is_export_dir", "onnxruntime_model",
           "prepare_for_inference"]
