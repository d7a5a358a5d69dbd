"""onnxruntime as an inference engine: an exported model (`bertforge export`, fp32 or int8) called
like the PyTorch model it came from, fed length buckets so that it does not compute padding.

An ONNX graph runs on the padded grid it is given: on real text (SQuAD windows are about 40%
padding at 384 tokens) most of its work would be padding. `OrtModel` therefore sorts the rows of
every batch by real length and cuts them into buckets that are at most `max_padding` padding,
each trimmed to its longest row, one onnxruntime call per bucket; outputs go back in the
caller's row order and width. Outputs at padding positions mean nothing, as on every path (zeros
past a bucket's width).
Trimming needs real tokens to come first in each row (right padding, as every bertforge feature
builder writes them); a batch with padding elsewhere runs untrimmed, in one call.

int8 ONNX files come from onnxruntime's dynamic quantiser (`quantize_onnx_int8`): MatMul weights
int8, symmetric, one scale per output channel; activations uint8 quantised per call from their
own range (Hugging Face optimum's `avx512_vnni(is_static=False)` settings for the same
quantiser; optimum's documented recipe passes per_channel=False, whose single scale per weight
moves MiniLM's answers more). `bertforge export` smooths the model first (SmoothQuant, as the
PyTorch engine's int8 does: `bertforge.engine.precision`), which is what keeps answers close to fp32.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from bertforge.config import BertConfig
from bertforge.errors import CheckpointError, ConfigError, DataError
from bertforge.model.bert import BertOutput, PreTrainingOutput
from bertforge.model.heads import HEADS
from bertforge.optional import require

log = logging.getLogger(__name__)

INPUTS = ("input_ids", "token_type_ids", "attention_mask")
# A bucket may be this fraction padding: more buckets cost more calls (about 1 ms each on a CPU),
# fewer compute more padding.
MAX_PADDING = 0.1
# The heads' outputs as the PyTorch models return them, from the ONNX outputs in HEADS' order.
WRAP = {"qa": tuple, "classification": lambda outs: outs[0], "base": lambda outs: BertOutput(*outs),
        "pretraining": lambda outs: PreTrainingOutput(*outs)}


def length_buckets(lengths: np.ndarray, max_padding: float = MAX_PADDING) -> list[np.ndarray]:
    """Row indices grouped, longest first, so that each group padded to its longest row is at
    most `max_padding` padding. lengths: (B,) real tokens per row."""
    order = np.argsort(-lengths, kind="stable")
    buckets, start = [], 0
    while start < len(order):
        width = max(int(lengths[order[start]]), 1)
        end, real = start + 1, int(lengths[order[start]])
        while end < len(order) and real + lengths[order[end]] >= (1 - max_padding) * width * (end - start + 1):
            real += int(lengths[order[end]])
            end += 1
        buckets.append(order[start:end])
        start = end
    return buckets


def right_padded(mask: np.ndarray, lengths: np.ndarray) -> bool:
    """Whether every row's real tokens come first. mask: (B, T) of 0/1; lengths: its row sums."""
    return bool((mask.astype(bool) == (np.arange(mask.shape[1])[None, :] < lengths[:, None])).all())


def session_options(threads: int | None = None):
    """onnxruntime's options for one CPU inference session: `threads` intra-op threads (default:
    torch's thread count, which --threads and OMP_NUM_THREADS set), operators one at a time."""
    ort = require("onnxruntime", "export", "the onnxruntime engine")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


class OrtModel(nn.Module):
    """An exported model on onnxruntime's CPU provider, called like bertforge's PyTorch model of
    the same head: `model(input_ids, token_type_ids, attention_mask)` with (B, T) int64 tensors ->
    the head's outputs (a tuple of start and end logits, logits, BertOutput, PreTrainingOutput).

    It has no parameters; `.to`, `.eval` and `compile_layers` are no-ops (onnxruntime optimises
    its own graph when the session starts). An export of the base head is also its own `bert`,
    the encoder that `encode` reads.
    """

    layers_compiled = True

    def __init__(self, export_dir: str | Path, threads: int | None = None, max_padding: float = MAX_PADDING):
        super().__init__()
        ort = require("onnxruntime", "export", "the onnxruntime engine")
        self.export_dir = Path(export_dir)
        self.record = read_export_record(self.export_dir)
        self.head = self.record["head"]
        self.precision = self.record.get("precision", "fp32")
        self.config = BertConfig.from_dict(self.record["config"], source=str(self.export_dir / "export.json"))
        self.max_padding = max_padding
        self.session = ort.InferenceSession(str(self.export_dir / self.record["file"]), session_options(threads),
                                            providers=["CPUExecutionProvider"])
        # The classifier's outputs, from the graph: an export need not name its labels.
        self.num_labels = self.session.get_outputs()[0].shape[1] if self.head == "classification" else None
        self._per_token = [axes[1:2] == ["sequence"] for axes in self.record["outputs"].values()]
        self.calls: list[tuple[int, int]] = []  # (rows, width) of the session calls of the last forward

    def compile_layers(self) -> None:
        """Nothing to compile: onnxruntime optimised the graph when the session started."""

    @property
    def bert(self) -> OrtModel:
        """The encoder (`model.bert` of the PyTorch model, giving a BertOutput): an export of the
        base head is the encoder; the other heads' exports output their head's results only."""
        if self.head != "base":
            raise ConfigError(f"{self.export_dir} is an export of the {self.head} head, which outputs the head's "
                              "results only; the encoder's outputs need an export of the base head")
        return self

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None,
                attention_mask: Tensor | None = None, *, seq_lengths=None, masked_lm_positions=None):
        """input_ids, token_type_ids, attention_mask: (B, T) -> the head's outputs (B, T, ...) per
        token or (B, ...) per sequence, as float32 tensors. seq_lengths is accepted for the
        PyTorch model's signature and not needed (lengths come from the mask)."""
        if masked_lm_positions is not None:
            raise ConfigError("the onnxruntime engine runs the exported graph, which predicts every "
                              "position: masked_lm_positions is for the PyTorch engine")
        ids = input_ids.cpu().numpy().astype(np.int64, copy=False)
        types = (np.zeros_like(ids) if token_type_ids is None
                 else token_type_ids.cpu().numpy().astype(np.int64, copy=False))
        mask = (np.ones_like(ids) if attention_mask is None
                else attention_mask.cpu().numpy().astype(np.int64, copy=False))
        if ids.ndim != 2 or ids.shape != types.shape or ids.shape != mask.shape:
            raise DataError(f"input_ids, token_type_ids and attention_mask must be (batch, sequence) of one "
                            f"shape, got {ids.shape}, {types.shape}, {mask.shape}")
        lengths = mask.sum(axis=1)
        B, T = ids.shape
        trim = right_padded(mask, lengths)
        buckets = length_buckets(lengths, self.max_padding) if trim else [np.arange(B)]
        self.calls = []
        outputs: list[np.ndarray | None] = [None] * len(self._per_token)
        for rows in buckets:
            width = max(int(lengths[rows].max()), 1) if trim else T
            feeds = {name: np.ascontiguousarray(a[rows, :width]) for name, a in zip(INPUTS, (ids, types, mask))}
            self.calls.append((len(rows), width))
            for j, (out, per_token) in enumerate(zip(self.session.run(None, feeds), self._per_token)):
                if outputs[j] is None:
                    shape = (B, T, *out.shape[2:]) if per_token else (B, *out.shape[1:])
                    outputs[j] = np.zeros(shape, dtype=np.float32)
                if per_token:
                    outputs[j][rows, :width] = out
                else:
                    outputs[j][rows] = out
        return WRAP[self.head](tuple(torch.from_numpy(o) for o in outputs))


def read_export_record(export_dir: Path) -> dict:
    """export.json of an ONNX export that the onnxruntime engine can run, or a CheckpointError."""
    path = export_dir / "export.json"
    if not path.is_file():
        raise CheckpointError(f"{export_dir} is not a bertforge export (no export.json): run bertforge export first")
    record = json.loads(path.read_text())
    if record.get("format") != "onnx":
        raise CheckpointError(f"{path}: format {record.get('format')!r}; the onnxruntime engine runs ONNX exports")
    if "config" not in record:
        raise CheckpointError(f"{path} records no model config (an export of an older bertforge): export again")
    if record.get("head") not in WRAP:
        raise CheckpointError(f"{path}: unknown head {record.get('head')!r}; heads: {', '.join(HEADS)}")
    return record


def is_export_dir(path: str | Path) -> bool:
    """Whether `path` is a directory written by `bertforge export`."""
    return (Path(path) / "export.json").is_file()


def quantize_onnx_int8(source: Path, target: Path) -> None:
    """onnxruntime's dynamic int8 quantisation of `source`'s MatMuls with constant weights into
    `target` (see the module docstring). The graph is first pre-processed as onnxruntime
    recommends (shape inference, constant folding), so that every linear layer's weight is an
    initializer the quantiser sees."""
    require("onnxruntime", "export", "int8 ONNX export")
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="bertforge-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=False, op_types_to_quantize=["MatMul"],
                         extra_options={"WeightSymmetric": True, "ActivationSymmetric": False,
                                        "MatMulConstBOnly": True})


__all__ = ["MAX_PADDING", "OrtModel", "is_export_dir", "length_buckets", "quantize_onnx_int8",
           "read_export_record", "right_padded", "session_options"]
