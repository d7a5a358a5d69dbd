"""`bertforge export`: a trained model as a file a serving stack runs without bertforge.

Two formats, both traced from the same module (`ServingModel`) with dynamic batch and sequence
axes:
- onnx: through torch's dynamo-based exporter (`torch.onnx.export(..., dynamo=True)`, which
  needs `onnxscript`), for onnxruntime, TensorRT, OpenVINO, Triton;
- torch_export: a `torch.export` program (`model.pt2`, `torch.export.load`), for AOTInductor,
  ExecuTorch or plain PyTorch serving.

`--precision int8` writes the ONNX file quantised by onnxruntime's dynamic quantiser (MatMul
weights int8, activations quantised per call; `bertforge.engine.ort.quantize_onnx_int8`) after
the smoothing the PyTorch engine's int8 applies (SmoothQuant: `bertforge.engine.precision`), for
CPUs: it is the file the onnxruntime engine (`bertforge predict/serve --engine onnxruntime`) runs
on length buckets. The fp32 graph is verified first; the int8 file's difference from it is
logged (and recorded in export.json), with a warning above INT8_WARN_DIFF: how far int8 moves
a model's outputs depends on the model (outlier activations), so only scores on held-out data
(`bertforge predict`) tell whether it is good enough.

The model is exported on its padded path (`unpad=False`): unpadding gathers a number of real
tokens only the data knows, which `torch.export` cannot trace (a data-dependent guard). Outputs
at padding positions are meaningless on that path; mask them with attention_mask.

Beside the model file the output directory holds `vocab.txt` and `export.json` (format, head,
precision, input and output names with their axes, labels, casing, the model's config), all a
server needs to tokenize and to read the outputs. After writing, the file is run once on a
ragged batch and compared with the PyTorch model (`--verify`, on by default).

The onnxruntime engine exports a model it has loaded the same way (`export_for_engine`). The
exporter and the quantiser log each of their passes; an export shows only its own lines and
their warnings unless `--verbose`.
"""

from __future__ import annotations

import copy
import logging
import math
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from bertforge.checkpoint import load_checkpoint, load_into
from bertforge.checkpoint.common import atomic_dir_write
from bertforge.config import BertConfig
from bertforge.engine.ort import quantize_onnx_int8
from bertforge.engine.precision import CALIBRATION_WINDOWS, SMOOTHING_ALPHA, smooth_for_int8
from bertforge.errors import CheckpointError, ConfigError
from bertforge.export_args import ExportArgs
from bertforge.fileio import atomic_write_json
from bertforge.model import HEADS, build_model
from bertforge.optional import require

log = logging.getLogger(__name__)

INPUTS = ("input_ids", "token_type_ids", "attention_mask")  # each (batch, sequence) int64
OUTPUTS = {name: spec.outputs for name, spec in HEADS.items()}  # per head, output names and axes
MODEL_FILES = {"onnx": "model.onnx", "torch_export": "model.pt2"}
EXPORT_FILES = ("model.onnx", "model.onnx.data", "model.pt2", "export.json", "vocab.txt")
# Largest difference from the PyTorch model that verification accepts, relative to the outputs'
# magnitude where that exceeds 1 (fp32 throughout).
VERIFY_ATOL = 1e-4
# Above this difference (relative, as VERIFY_ATOL) between an int8 file and PyTorch in fp32, the
# export warns. Measured: tiny random models 1-3%; MiniLM-L6, whose activations have outliers
# 5x their 99.9th percentile, 33% on random token ids, 15% after SmoothQuant.
INT8_WARN_DIFF = 0.1
# What export.json records of an int8 file's quantisation (see bertforge.engine.ort).
INT8_RECIPE = {"tool": "onnxruntime.quantization.quantize_dynamic", "operators": ["MatMul"],
               "weights": "int8, symmetric, per output channel", "activations": "uint8, asymmetric, per call",
               "smoothing": f"SmoothQuant, alpha {SMOOTHING_ALPHA}, input ranges from {CALIBRATION_WINDOWS} "
                            "windows of seeded random token ids; attention's output through the value rows"}
# protobuf files stop at 2 GiB: larger ONNX models keep their weights in model.onnx.data.
ONNX_INLINE_LIMIT = 1_800_000_000


class ServingModel(nn.Module):
    """A BERT model with the three input tensors as positional arguments and a tuple of tensors
    out, as exporters want: outputs in the order OUTPUTS[head] names them."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, token_type_ids: Tensor, attention_mask: Tensor
                ) -> tuple[Tensor, ...]:
        """Each input (B, T) int64; outputs as OUTPUTS[head] lists them."""
        out = self.model(input_ids, token_type_ids, attention_mask)
        if isinstance(out, Tensor):
            return (out,)
        if isinstance(out, tuple):
            return out
        return tuple(getattr(out, name) for name in OUTPUTS[self.model.head])  # an output dataclass


def example_inputs(config: BertConfig, batch: int = 3, seq: int = 12, seed: int = 0
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """A ragged batch as BERT feeds look: [CLS]-like first token, two segments, right padding.
    Batch and length are above 1 so the exporter does not take them for constants."""
    seq = min(seq, config.max_position_embeddings)
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, seq + 1, (batch,), generator=g)
    lengths[0] = seq
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()  # (B, T)
    ids = torch.randint(1, config.vocab_size, (batch, seq), generator=g) * mask
    types = ((torch.arange(seq)[None, :] >= (lengths[:, None] // 2)).long() * mask).clamp(
        max=config.type_vocab_size - 1)
    return ids, types, mask


def dynamic_shapes(config: BertConfig) -> dict[str, dict[int, torch.export.Dim]]:
    batch = torch.export.Dim("batch", min=1)
    sequence = torch.export.Dim("sequence", min=1, max=config.max_position_embeddings)
    return {name: {0: batch, 1: sequence} for name in INPUTS}


def _check_destination(out: Path, force: bool, source: Path) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"{out} exists and is not a directory")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    if source.resolve() == out.resolve():
        raise ConfigError(f"{out} is the checkpoint being exported: write the export elsewhere")
    if not force:
        raise ConfigError(f"{out} exists and is not empty; pass --force to replace the export in it")
    foreign = [name for name in entries if name not in EXPORT_FILES]
    if foreign:
        raise ConfigError(f"{out} holds files that are not part of an export: {', '.join(foreign)}; "
                          "bertforge does not delete them: move them away or choose another directory")


def load_for_export(args: ExportArgs) -> tuple[nn.Module, str, dict]:
    """The model on its padded path, in eval mode, the head, and what export.json records."""
    ckpt = load_checkpoint(args.checkpoint, config=args.bert_model)
    head = ckpt.head if args.head == "auto" else args.head
    if head not in HEADS:
        raise ConfigError(f"cannot export head {head!r}; heads: {', '.join(HEADS)}")
    trained = bool(HEADS[head].markers)  # the bare encoder has no weights of its own to train
    if trained and head not in ckpt.heads:
        raise CheckpointError(f"{args.checkpoint} has no trained {head} head (it has: "
                              f"{', '.join(sorted(ckpt.heads)) or 'none, the encoder only'}); "
                              f"pass --head base to export the encoder")
    model = build_model(ckpt.config, head, num_labels=ckpt.num_labels or 2, unpad=False)
    report = load_into(model, ckpt, require_head=trained)
    model.eval()
    # head_trained: the base head's pooler came from the checkpoint (the other heads must have);
    # version_2_with_negative: how the QA head's answers are decoded, as the checkpoint records it.
    meta = {"head": head, "labels": ckpt.labels if HEADS[head].label_weight else None,
            "do_lower_case": ckpt.do_lower_case, "task": ckpt.meta.get("task"),
            "max_seq_length": ckpt.config.max_position_embeddings, "source": str(args.checkpoint),
            "head_trained": report.head_loaded, "vocab_file": ckpt.vocab_file}
    if head == "qa":
        meta["version_2_with_negative"] = bool(ckpt.meta.get("version_2_with_negative", False))
    return model, head, meta


def export(args: ExportArgs) -> Path:
    """Write the export into args.output_dir; returns the model file's path."""
    out = Path(args.output_dir)
    _check_destination(out, args.force, Path(args.checkpoint))
    _require_exporter(args.format, args.precision, args.verify)  # before the (slow) load
    model, _, meta = load_for_export(args)
    vocab = meta.pop("vocab_file")
    path = write_export(model, out, meta, vocab, fmt=args.format, precision=args.precision, opset=args.opset,
                        check=args.verify, verbose=args.verbose)
    if vocab is None:
        log.warning("%s has no vocab.txt beside it: the export has none either", args.checkpoint)
    return path


def export_for_engine(model: nn.Module, out: Path, precision: str) -> Path:
    """`model`, as loaded for prediction (any layout), written to `out` as the ONNX export the
    onnxruntime engine runs (fp32 or int8, verified, quietly); returns the model file's path.
    The model is traced on its padded path and left on the path it had."""
    _require_exporter("onnx", precision, verify=True)
    meta = {"head": model.head, "labels": None, "head_trained": True}
    unpad = model.bert.unpad
    model.bert.unpad = False
    try:
        return write_export(model.eval(), out, meta, None, fmt="onnx", precision=precision, opset=None,
                            check=True, verbose=False)
    finally:
        model.bert.unpad = unpad


def _require_exporter(fmt: str, precision: str, verify: bool) -> None:
    """A missing package of the export extra, named before any work."""
    if fmt == "onnx":
        require("onnxscript", "export", "ONNX export")
        require("onnx", "export", "ONNX export")
    if verify and fmt == "onnx":
        require("onnxruntime", "export", "verifying an ONNX export (or pass --noverify)")
    if precision == "int8":
        require("onnxruntime", "export", "int8 ONNX export")


def write_export(model: nn.Module, out: Path, meta: dict, vocab: str | Path | None, *, fmt: str,
                 precision: str, opset: int | None, check: bool, verbose: bool) -> Path:
    """Write `model` (on its padded path, in eval mode) into `out` with export.json, which records
    `meta` (head, labels, ...) besides what the export itself says, and `vocab` as vocab.txt;
    returns the model file's path. `check`: run the file once and compare it with PyTorch
    (`verify`); `verbose`: the exporter's and quantiser's own INFO logs too."""
    head = meta["head"]
    if precision == "int8":  # the same smoothing as the PyTorch engine's int8, on a copy
        model = smooth_for_int8(copy.deepcopy(model))
    serving = ServingModel(model).eval()
    config = model.config
    name = MODEL_FILES[fmt]
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    external = fmt == "onnx" and size > ONNX_INLINE_LIMIT
    opset_used, diff = None, None

    def write(tmp: Path) -> None:
        nonlocal opset_used, diff
        with torch.no_grad(), quiet_exporters(verbose):
            if fmt == "onnx" and precision == "int8":
                fp32 = tmp / "fp32" / name
                fp32.parent.mkdir()
                opset_used = _write_onnx(serving, config, fp32, head, opset, external)
                if check:
                    diff = verify(fp32, fmt, serving, config)
                quantize_onnx_int8(fp32, tmp / name)
                shutil.rmtree(fp32.parent)
            elif fmt == "onnx":
                opset_used = _write_onnx(serving, config, tmp / name, head, opset, external)
            else:
                _write_torch_export(serving, config, tmp / name)
        if vocab is not None:
            shutil.copyfile(vocab, tmp / "vocab.txt")

    atomic_dir_write(out, write, last=name, needed=size)
    outputs = OUTPUTS[head]
    # an int8 file is a quarter of the size: its weights stay inline
    written = {name, "export.json"} | ({f"{name}.data"} if external and precision == "fp32" else set()) | (
        {"vocab.txt"} if vocab is not None else set())
    for stale in set(EXPORT_FILES) - written:  # left by an earlier export (--force) of another format
        (out / stale).unlink(missing_ok=True)
    record = {"format": fmt, "file": name, **meta, "precision": precision,
              "inputs": {k: ["batch", "sequence"] for k in INPUTS},
              "outputs": {k: list(axes) for k, axes in outputs.items()}, "padded": True, "opset": opset_used,
              "config": config.to_dict(), "torch": torch.__version__}
    if precision == "int8":
        record["quantization"] = dict(INT8_RECIPE)
    atomic_write_json(out / "export.json", record)
    if check and precision == "int8":
        log.info("verified: the fp32 graph matches PyTorch within %.2g (max abs diff)", diff)
        with quiet_exporters(verbose):
            diff = verify(out / name, fmt, serving, config, atol=math.inf)
        record["quantization"]["max_diff_from_fp32"] = diff
        atomic_write_json(out / "export.json", record)
        (log.warning if diff > INT8_WARN_DIFF else log.info)(
            "the int8 file's outputs differ from PyTorch's fp32 ones by up to %.2g of their range on random "
            "tokens; check its scores on held-out data (bertforge predict) before serving it", diff)
    elif check:
        diff = verify(out / name, fmt, serving, config)
        log.info("verified: the export matches PyTorch within %.2g (max abs diff)", diff)
    log.info(f"exported {head} model {meta.get('source', 'in memory')} -> {out / name} ({fmt}, {precision}; inputs "
             f"{', '.join(INPUTS)}; outputs {', '.join(outputs)})")
    return out / name


# The exporter's and quantiser's loggers, which report each of their passes at INFO: about a
# hundred lines for one export.
EXPORTER_LOGGERS = ("onnx_ir", "onnxscript", "onnx", "torch.onnx", "torch.export", "torch._export")


def _warnings_and_above(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


@contextmanager
def quiet_exporters(verbose: bool) -> Iterator[None]:
    """Unless `verbose`, the exporter's and quantiser's INFO logs are left out (their warnings
    still show). onnxruntime's quantiser logs on the root logger itself: a filter there drops
    the records logged on it directly, not those of other loggers that pass through it."""
    if verbose:
        yield
        return
    loggers = [logging.getLogger(name) for name in EXPORTER_LOGGERS]
    levels = [logger.level for logger in loggers]
    root = logging.getLogger()
    for logger in loggers:
        logger.setLevel(max(logger.level, logging.WARNING))
    root.addFilter(_warnings_and_above)
    try:
        yield
    finally:
        root.removeFilter(_warnings_and_above)
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _write_onnx(serving: ServingModel, config: BertConfig, path: Path, head: str, opset: int | None,
                external: bool) -> int:
    """Writes path (and, `external`, the weights into path.data); returns the opset used."""
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_log.level
    with warnings.catch_warnings():
        # The exporter warns that two inputs share each axis name (that is what is meant), and
        # that torchvision's operators cannot be registered (BERT uses none); torch's own pytree
        # code warns about its own deprecation.
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        registry_log.setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(
                serving, example_inputs(config), dynamo=True, input_names=list(INPUTS),
                output_names=list(OUTPUTS[head]), dynamic_shapes=dynamic_shapes(config),
                opset_version=opset, external_data=external, verbose=False)
        finally:
            registry_log.setLevel(level)
    program.save(str(path), external_data=external)
    return next(o.version for o in program.model_proto.opset_import if o.domain == "")


def _write_torch_export(serving: ServingModel, config: BertConfig, path: Path) -> None:
    program = torch.export.export(serving, example_inputs(config), dynamic_shapes=dynamic_shapes(config))
    torch.export.save(program, path)


def run_onnx(path: Path, inputs: dict[str, Tensor]) -> list:
    """The ONNX file's outputs (numpy arrays) for `inputs` on onnxruntime's CPU provider."""
    ort = require("onnxruntime", "export", "running an ONNX export")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {k: v.numpy() for k, v in inputs.items()})


def verify(path: Path, fmt: str, serving: ServingModel, config: BertConfig, atol: float = VERIFY_ATOL) -> float:
    """The largest difference between the export and the PyTorch model, relative to the size of
    the outputs (at least 1), on a ragged batch of another shape than the one traced; a
    CheckpointError when above `atol`."""
    inputs = example_inputs(config, batch=5, seq=min(23, config.max_position_embeddings), seed=1)
    with torch.no_grad():
        expected = serving(*inputs)
        if fmt == "onnx":
            got = [torch.from_numpy(a) for a in run_onnx(path, dict(zip(INPUTS, inputs)))]
        else:
            got = torch.export.load(path).module()(*inputs)
    diff = 0.0
    for name, want, have in zip(OUTPUTS[serving.model.head], expected, got):
        if have.shape != want.shape:
            raise CheckpointError(f"{path}: output {name} has shape {tuple(have.shape)}, PyTorch gives "
                                  f"{tuple(want.shape)}")
        scale = max(1.0, want.abs().max().item())
        diff = max(diff, (have.float() - want.float()).abs().max().item() / scale)
    if not diff <= atol:
        raise CheckpointError(f"{path}: the exported model differs from PyTorch by {diff:.3g} (more than "
                              f"{atol}); please report this with the checkpoint's config")
    return diff


__all__ = ["ExportArgs", "ServingModel", "export", "export_for_engine", "load_for_export", "quiet_exporters",
           "run_onnx", "verify", "write_export", "INPUTS",
           "OUTPUTS"]
