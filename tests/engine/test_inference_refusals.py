"""What the inference precisions and engines refuse, each in one line before any work: bf16 on a
CPU without bf16 instructions at every entry point (the probe monkeypatched to say so), int8
for any run that trains, an export where only the onnxruntime engine can run one; and --engine
offered by the commands that only predict, not by those that train."""

from __future__ import annotations

import json

import pytest
import torch

import bertforge
from bertforge import api
from bertforge.checkpoint import save_native
from bertforge.cli import main
from bertforge.errors import ConfigError
from bertforge.model import build_model
from bertforge.runconfig import InferenceRuntimeArgs
from bertforge.serve import work
from bertforge.serve.config import ServeArgs
from conftest import tiny_config

BF16_REFUSAL = "this CPU has neither AVX512-BF16 nor AMX"
INT8_REFUSAL = "--precision int8 is for inference (predict, serve, export); train in fp32 or bf16"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny QA model as a run directory."""
    path = tmp_path_factory.mktemp("qa") / "run"
    vocab = path.parent / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(94)]) + "\n")
    model = build_model(tiny_config(), "qa")
    save_native(path, model, model.config, vocab_file=vocab, do_lower_case=True)
    return path


@pytest.fixture
def no_bf16(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bf16_on_a_cpu_without_it_is_refused_everywhere(no_bf16, run, tmp_path, capsys, monkeypatch):
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text(json.dumps({"text_a": "w1 w2"}) + "\n")
    commands = [
        ["predict", "squad", "--predict_file", str(tmp_path / "missing.json"), "--output_dir", str(tmp_path / "out")],
        ["predict", "squad", "--question", "w1?", "--context", "w2 w1"],
        ["predict", "glue", "--input_jsonl", str(jsonl)],
    ]
    for command in commands:
        assert main([*command, "--init_checkpoint", str(run), "--device", "cpu", "--precision", "bf16"]) == 2
        assert BF16_REFUSAL in one_line_error(capsys)
    assert not (tmp_path / "out").exists()  # refused before the predict file was even read

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the precision was checked")

    monkeypatch.setattr(api, "load_model", never)
    with pytest.raises(ConfigError, match=BF16_REFUSAL) as refused:
        bertforge.load(run, device="cpu", precision="bf16")
    assert "\n" not in str(refused.value)
    with pytest.raises(ConfigError, match=BF16_REFUSAL):  # where the server loads its model
        work.load_predictor(ServeArgs(checkpoint=str(run), runtime=InferenceRuntimeArgs(device="cpu",
                                                                                        precision="bf16")))


def test_training_in_int8_is_refused(tmp_path, capsys):
    commands = [["finetune", "squad", "--do_train", "--train_file", "x.json"],
                ["finetune", "glue", "--do_train", "--data_dir", "x"],
                ["pretrain", "--input_dir", "x"]]
    for command in commands:
        out = tmp_path / command[0]
        assert main([*command, "--bert_model", "tiny", "--output_dir", str(out), "--precision", "int8"]) == 2
        assert INT8_REFUSAL in one_line_error(capsys)
        assert not out.exists()


def test_engine_is_a_flag_of_the_commands_that_only_predict(capsys):
    for command, offered in ((["predict", "squad"], True), (["predict", "glue"], True),
                             (["evaluate", "glue"], True), (["serve"], True), (["finetune", "squad"], False),
                             (["finetune", "glue"], False), (["pretrain"], False)):
        assert main([*command, "--help"]) == 0
        text = capsys.readouterr().out
        assert ("--engine" in text) is offered, command
        assert "int8" in text
    assert main(["finetune", "squad", "--do_train", "--engine", "onnxruntime"]) == 2
    assert "unknown flag: --engine" in one_line_error(capsys)


def test_engine_and_precision_that_do_not_go_together(run, capsys):
    assert main(["predict", "squad", "--init_checkpoint", str(run), "--question", "w1?", "--context", "w1",
                 "--device", "cpu", "--engine", "onnxruntime", "--precision", "bf16"]) == 2
    assert "--engine onnxruntime runs fp32 or int8 exports, not --precision bf16" in one_line_error(capsys)
    with pytest.raises(ConfigError, match="--engine onnxruntime runs fp32 or int8 exports, not --precision fp16"):
        bertforge.load(run, device="cpu", engine="onnxruntime", precision="fp16")


def test_an_export_runs_on_onnxruntime_only(run, tmp_path, capsys):
    """An export directory (export.json beside its model file) is refused, naming what runs it,
    by the torch engine and by the file-predicting runner, which loads checkpoints."""
    export_dir = tmp_path / "export"
    export_dir.mkdir()
    (export_dir / "export.json").write_text(json.dumps({"format": "onnx", "head": "qa"}))
    with pytest.raises(ConfigError, match="is an ONNX export .* only the onnxruntime engine runs"):
        bertforge.load(export_dir, device="cpu")
    assert main(["predict", "squad", "--init_checkpoint", str(export_dir), "--predict_file", "x.json",
                 "--device", "cpu", "--engine", "onnxruntime", "--output_dir", str(tmp_path / "out")]) == 2
    assert "give the checkpoint it was exported from" in one_line_error(capsys)
