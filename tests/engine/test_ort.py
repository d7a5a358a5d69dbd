"""The onnxruntime engine: an export (fp32 or int8) called like the PyTorch model, on length
buckets that compute (almost) no padding, with outputs in the caller's order and width."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bertforge.checkpoint import save_native
from bertforge.engine import check_engine, onnxruntime_model
from bertforge.engine.ort import OrtModel, length_buckets
from bertforge.errors import CheckpointError, ConfigError
from bertforge.export import ExportArgs, export
from bertforge.model import build_model
from bertforge.model.bert import BertOutput
from conftest import random_batch, tiny_config

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

# int8 against fp32, relative to the largest fp32 output (measured here: 1-3%).
INT8_RTOL = 0.08


def tiny_run(tmp_path, head: str = "qa", labels=None, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(tiny_config(hidden_size=64, intermediate_size=128), head,
                        num_labels=len(labels) if labels else 2)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    run = tmp_path / f"run_{head}"
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(94)]) + "\n")
    save_native(run, model, model.config, vocab_file=vocab, do_lower_case=True, labels=labels)
    return run, model.eval()


def ragged(config, lengths: list[int], width: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    ids = torch.randint(5, config.vocab_size, (len(lengths), width), generator=g) * mask
    types = (torch.arange(width)[None, :] >= torch.tensor(lengths)[:, None] // 2).long() * mask
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


@pytest.fixture(scope="module")
def qa_exports(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ort")
    run, model = tiny_run(tmp)
    for precision in ("fp32", "int8"):
        export(ExportArgs(str(run), str(tmp / precision), precision=precision))
    return tmp, run, model


def brute_force_ok(lengths: np.ndarray, buckets: list[np.ndarray], max_padding: float) -> None:
    assert sorted(np.concatenate(buckets).tolist()) == list(range(len(lengths)))  # every row once
    for rows in buckets:
        grid = len(rows) * max(lengths[rows].max(), 1)
        assert lengths[rows].sum() >= (1 - max_padding) * grid


@pytest.mark.parametrize("seed", range(5))
def test_length_buckets_cover_every_row_once_with_little_padding(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 385, size=int(rng.integers(1, 80)))
    for max_padding in (0.0, 0.1, 0.5):
        buckets = length_buckets(lengths, max_padding)
        brute_force_ok(lengths, buckets, max_padding)
    assert len(length_buckets(np.full(32, 200), 0.0)) == 1  # equal lengths: one call


def test_fp32_engine_matches_pytorch_on_buckets(qa_exports):
    tmp, _, model = qa_exports
    engine = OrtModel(tmp / "fp32")
    assert engine.head == "qa" and engine.precision == "fp32" and engine.config == model.config
    lengths = [64, 61, 60, 33, 31, 30, 9, 8, 2, 63]
    batch = ragged(model.config, lengths, 64)
    with torch.no_grad():
        start, end = engine(**batch)
        ref_start, ref_end = model(**batch)
    real = batch["attention_mask"].bool()
    assert start.shape == ref_start.shape == (10, 64)
    torch.testing.assert_close(start[real], ref_start[real], rtol=0, atol=1e-4)
    torch.testing.assert_close(end[real], ref_end[real], rtol=0, atol=1e-4)
    # four buckets, each trimmed to its longest row: 64*4 + 33*3 + 9*2 + 2 = 375 cells for 361 real tokens
    assert sorted(engine.calls) == sorted([(4, 64), (3, 33), (2, 9), (1, 2)])
    assert sum(r * w for r, w in engine.calls) <= 1.1 * sum(lengths)


def test_left_padding_runs_untrimmed_in_one_call(qa_exports):
    tmp, _, model = qa_exports
    engine = OrtModel(tmp / "fp32")
    batch = ragged(model.config, [20, 12, 5], 24)
    flipped = {k: v.flip(1) for k, v in batch.items()}  # real tokens last
    with torch.no_grad():
        start, _ = engine(**flipped)
        model_start, _ = model(**flipped)
    real = flipped["attention_mask"].bool()
    torch.testing.assert_close(start[real], model_start[real], rtol=0, atol=1e-4)
    assert engine.calls == [(3, 24)]


def test_int8_export_is_quantised_and_close_to_fp32(qa_exports):
    tmp, _, model = qa_exports
    record = json.loads((tmp / "int8" / "export.json").read_text())
    assert record["precision"] == "int8" and record["quantization"]["operators"] == ["MatMul"]
    ops = {node.op_type for node in onnx.load(str(tmp / "int8" / "model.onnx")).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    graph = onnx.load(str(tmp / "int8" / "model.onnx")).graph
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
    # the fused QKV, attention output, FFN in and out per layer, and the QA head
    assert len(int8_weights) == 4 * model.config.num_hidden_layers + 1
    assert (tmp / "int8" / "model.onnx").stat().st_size < 0.5 * (tmp / "fp32" / "model.onnx").stat().st_size
    engine = OrtModel(tmp / "int8")
    batch = ragged(model.config, [64, 50, 47, 20, 3], 64, seed=1)
    with torch.no_grad():
        got, want = engine(**batch), model(**batch)
    real = batch["attention_mask"].bool()
    for g, w in zip(got, want):
        diff = ((g - w)[real].abs().max() / w[real].abs().max()).item()
        assert 0 < diff <= INT8_RTOL


@pytest.mark.parametrize("head,labels", [("classification", ["a", "b", "c"]), ("base", None)])
def test_other_heads_come_back_as_pytorch_returns_them(tmp_path, head, labels):
    run, model = tiny_run(tmp_path, head, labels)
    export(ExportArgs(str(run), str(tmp_path / "out")))
    engine = OrtModel(tmp_path / "out")
    assert engine.num_labels == (3 if labels else None)
    batch = ragged(model.config, [40, 7, 22, 39], 40, seed=2)
    with torch.no_grad():
        got, want = engine(**batch), model(**batch)
    if head == "base":
        assert isinstance(got, BertOutput)
        real = batch["attention_mask"].bool()
        torch.testing.assert_close(got.sequence_output[real], want.sequence_output[real], rtol=0, atol=1e-4)
        got, want = got.pooled_output, want.pooled_output
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_engine_from_a_checkpoint_exports_it_and_checks_precision(qa_exports, tmp_path):
    tmp, run, model = qa_exports
    engine = onnxruntime_model(run, "int8")
    assert engine.precision == "int8"
    batch = random_batch(model.config, batch=3, seq=20)
    with torch.no_grad():
        start, _ = engine(**batch)
        want, _ = model(**batch)
    real = batch["attention_mask"].bool()
    assert ((start - want)[real].abs().max() / want[real].abs().max()).item() <= INT8_RTOL
    with pytest.raises(ConfigError, match="is a fp32 export, not int8"):
        onnxruntime_model(tmp / "fp32", "int8")
    with pytest.raises(CheckpointError, match="not a bertforge export"):
        OrtModel(tmp_path)


def test_engine_refusals_are_one_line():
    with pytest.raises(ConfigError, match="fp32 or int8 exports, not --precision bf16"):
        check_engine("onnxruntime", "bf16", "cpu")
    with pytest.raises(ConfigError, match="on the CPU here, not cuda"):
        check_engine("onnxruntime", "fp32", "cuda")
    with pytest.raises(ConfigError, match="engines are torch, onnxruntime"):
        check_engine("tensorrt", "fp32", "cpu")
    check_engine("torch", "bf16", "cpu")
