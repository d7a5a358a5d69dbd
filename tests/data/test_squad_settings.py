"""One SquadSettings for every entry point: a setting given to `finetune squad`, `predict squad
--predict_file`, `predict squad --question`, `bertforge.load(...).answer` and `bertforge serve`
changes the answers the same way. Walked with max_answer_length: 1 token allows answers of one
word at most, where the default (30) lets a tiny fine-tuned model answer with several."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import httpx
import pytest

import bertforge
from bertforge.cli import main
from bertforge.data.squad import SquadSettings
from bertforge.errors import ConfigError
from bertforge.serve import ServeArgs
from bertforge.tasks.config import SquadData, SquadPredictData
from serve.server_process import Server

TINY = {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 37, "max_position_embeddings": 128}
WINDOWS = ["--max_seq_length", "128", "--doc_stride", "64"]


def words(text: str) -> int:
    return len(text.split())


def read(path: Path):
    return json.loads(path.read_text())


def finetune(out: Path, squad_dev_file: Path, vocab_file: Path, tmp: Path, *extra: str) -> dict[str, str]:
    """A tiny BERT fine-tuned for 3 steps (the same seed, so the same weights every time), then
    its predictions for dev article 38."""
    config = tmp / "tiny.json"
    config.write_text(json.dumps(TINY))
    assert main(["finetune", "squad", "--do_train", "--train_file", str(squad_dev_file), "--train_articles", "0:1",
                 "--do_predict", "--predict_file", str(squad_dev_file), "--predict_articles", "38:39",
                 "--bert_model", str(config), "--vocab_file", str(vocab_file), "--do_lower_case", "true",
                 "--max_steps", "3", "--train_batch_size", "4", "--learning_rate", "1e-3", "--device", "cpu",
                 "--output_dir", str(out), *WINDOWS, *extra]) == 0
    return read(out / "predictions.json")


@pytest.fixture(scope="module")
def tiny_qa(tmp_path_factory, squad_dev_file, vocab_file) -> tuple[Path, dict[str, str]]:
    """The fine-tuned checkpoint (default settings) and its predictions."""
    tmp = tmp_path_factory.mktemp("tiny_qa")
    return tmp / "run", finetune(tmp / "run", squad_dev_file, vocab_file, tmp)


@pytest.fixture(scope="module")
def long_answers(tiny_qa, squad_dev_file) -> list[tuple[str, str]]:
    """(question, context) of article 38 that the model answers with several words by default."""
    _, predictions = tiny_qa
    article = read(squad_dev_file)["data"][38]
    chosen = [(qa["question"], p["context"]) for p in article["paragraphs"] for qa in p["qas"]
              if words(predictions[qa["id"]]) > 1]
    assert len(chosen) >= 5, "the default settings should give several multi-word answers"
    return chosen[:5]


def test_every_entry_point_takes_every_setting(tmp_path, capsys):
    """Each setting is a flag of the three commands (which then fail for want of input, not of
    the flag) and a keyword of `answer` (which names a misspelt one)."""
    missing = str(tmp_path / "missing")
    commands = {("finetune", "squad"): "nothing to do", ("predict", "squad"): "--predict_file is required",
                ("serve", missing): "checkpoint not found"}
    for f in fields(SquadSettings):
        value = "null" if f.default is None else str(f.default)
        for command, error in commands.items():
            assert main([*command, f"--{f.name}", value, "--device", "cpu"]) == 2
            err = capsys.readouterr().err
            assert error in err and "unknown flag" not in err, (command, f.name, err)
        assert SquadSettings.from_arguments(**{f.name: f.default}) == SquadSettings()
    for config in (SquadData, SquadPredictData, ServeArgs):
        assert {f.name for f in fields(SquadSettings)} <= {f.name for f in fields(config)}, config
    with pytest.raises(ConfigError, match="unknown SQuAD setting 'max_answer_len'"):
        SquadSettings.from_arguments(max_answer_len=1)


def test_finetune_squad(tiny_qa, squad_dev_file, vocab_file, tmp_path):
    _, default = tiny_qa
    assert any(words(text) > 1 for text in default.values())
    short = finetune(tmp_path / "run", squad_dev_file, vocab_file, tmp_path, "--max_answer_length", "1")
    assert short.keys() == default.keys()
    assert all(words(text) <= 1 for text in short.values())
    assert sum(text != "" for text in short.values()) > len(short) / 2


def test_predict_squad_file(tiny_qa, squad_dev_file, tmp_path):
    checkpoint, default = tiny_qa
    for name, extra in (("default", []), ("short", ["--max_answer_length", "1"])):
        assert main(["predict", "squad", "--init_checkpoint", str(checkpoint), "--predict_file", str(squad_dev_file),
                     "--predict_articles", "38:39", "--device", "cpu", "--output_dir", str(tmp_path / name),
                     *WINDOWS, *extra]) == 0
    assert read(tmp_path / "default" / "predictions.json") == default
    short = read(tmp_path / "short" / "predictions.json")
    assert all(words(text) <= 1 for text in short.values())
    assert sum(text != "" for text in short.values()) > len(short) / 2


def test_predict_squad_question(tiny_qa, long_answers, capsys):
    checkpoint, _ = tiny_qa
    for question, context in long_answers:
        answers = {}
        for name, extra in (("default", []), ("short", ["--max_answer_length", "1"])):
            assert main(["predict", "squad", "--init_checkpoint", str(checkpoint), "--device", "cpu",
                         "--question", question, "--context", context, *WINDOWS, *extra]) == 0
            answers[name] = json.loads(capsys.readouterr().out)["answer"]
        assert words(answers["default"]) > 1 and words(answers["short"]) == 1, answers


def test_python_api(tiny_qa, long_answers):
    checkpoint, _ = tiny_qa
    qa = bertforge.load(checkpoint, device="cpu")
    questions, contexts = [q for q, _ in long_answers], [c for _, c in long_answers]
    default = qa.answer(questions, contexts, max_seq_length=128, doc_stride=64)
    short = qa.answer(questions, contexts, max_seq_length=128, doc_stride=64, max_answer_length=1)
    assert all(words(a.text) > 1 for a in default)
    assert all(words(a.text) == 1 for a in short)
    # The answer is a span of the context: its one word, where the context has it.
    for a, context in zip(short, contexts):
        assert context[a.start:a.end].split() == [a.text] or a.text.lower() in context[a.start:a.end].lower()


def test_server(tiny_qa, long_answers, tmp_path):
    checkpoint, _ = tiny_qa
    qa = bertforge.load(checkpoint, device="cpu")
    server = Server(checkpoint, tmp_path / "serve.log", *WINDOWS, "--max_answer_length", "1")
    try:
        for question, context in long_answers:
            response = httpx.post(f"{server.url}/answer", json={"question": question, "context": context}, timeout=120)
            assert response.status_code == 200
            got = response.json()
            want = qa.answer(question, context, max_seq_length=128, doc_stride=64, max_answer_length=1)
            assert words(got["answer"]) == 1 and words(qa.answer(question, context, max_seq_length=128,
                                                                 doc_stride=64).text) > 1
            assert (got["answer"], got["start"], got["end"]) == (want.text, want.start, want.end)
    finally:
        server.stop()
