"""The flags of `bertforge export`.

This module imports no torch (nor the model, which does): the CLI builds the command's `--help`
from it alone. It therefore names the heads itself; tests/test_export.py checks that the names
agree with `model.HEADS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bertforge.errors import ConfigError

ExportFormat = Literal["onnx", "torch_export"]
ExportPrecision = Literal["fp32", "int8"]
HEAD_NAMES = ("base", "pretraining", "qa", "classification")  # model.HEADS' names, in its order


@dataclass
class ExportArgs:
    """Export a trained model to ONNX or a torch.export program for serving."""

    checkpoint: str
    """The model: a bertforge run directory, a Hugging Face directory or Hub id, a Google TF or
    NVIDIA DLE checkpoint."""
    output_dir: str
    """Where model.onnx (or model.pt2), export.json and vocab.txt go."""
    format: ExportFormat = "onnx"
    """onnx (onnxruntime, TensorRT, OpenVINO) or torch_export (model.pt2, torch.export.load)."""
    head: Literal[("auto", *HEAD_NAMES)] = "auto"
    """Which head to export; auto: the checkpoint's (the encoder alone when it has none)."""
    bert_model: str | None = None
    """The bert_config.json when it is not beside the checkpoint (also --bert_config_file)."""
    opset: int | None = None
    """ONNX opset version (default: the exporter's, 20 with torch 2.13)."""
    precision: ExportPrecision = "fp32"
    """fp32, or int8 (onnx only): linear layers dynamically quantised by onnxruntime, a quarter of
    the size and faster on CPUs with VNNI; it moves some answers, so score it on held-out data
    before serving it."""
    verify: bool = True
    """Run the exported file once on a ragged padded batch and compare it with PyTorch."""
    force: bool = False
    """Replace an earlier export in output_dir (other files there are never deleted)."""
    verbose: bool = False
    """Also show the exporter's and the quantiser's own progress logs (onnxscript, onnx_ir,
    onnxruntime.quantization: about a hundred INFO lines); their warnings always show."""

    def __post_init__(self) -> None:
        if self.precision == "int8" and self.format != "onnx":
            raise ConfigError("--precision int8 exports ONNX only (onnxruntime quantises it): drop "
                              "--format torch_export or use --precision fp32")
