"""Raw text on the command line: `predict squad --question --context`, and JSON lines in and out
(files, or standard input and output) for `predict squad` and `predict glue`, with one clear
error line for bad input, naming the line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bertforge
from bertforge.cli import main
from bertforge.errors import ConfigError
from conftest import REPO, minilm_with_head

LABELS = ["negative", "positive"]
CONTEXT = "Frankenstein was written by Mary  Shelley and first published in London in 1818."


@pytest.fixture(scope="module")
def qa_dir(tmp_path_factory) -> Path:
    return minilm_with_head(tmp_path_factory.mktemp("qa") / "run", "qa")


@pytest.fixture(scope="module")
def cls_dir(tmp_path_factory) -> Path:
    return minilm_with_head(tmp_path_factory.mktemp("cls") / "run", "classification", LABELS)


def bertforge_cli(*args, stdin: str | bytes | None = None) -> subprocess.CompletedProcess:
    """`python -m bertforge ...` in a fresh process, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    data = stdin.encode() if isinstance(stdin, str) else stdin
    done = subprocess.run([sys.executable, "-m", "bertforge", *map(str, args)], input=data,
                          capture_output=True, env=env, timeout=300)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


def as_dict(answer: bertforge.Answer) -> dict:
    return {"answer": answer.text, "score": answer.score, "start": answer.start, "end": answer.end}


def test_question_and_context_print_the_answer_as_json(qa_dir):
    done = bertforge_cli("predict", "squad", "--init_checkpoint", qa_dir, "--device", "cpu",
                         "--question", "Who wrote Frankenstein?", "--context", CONTEXT)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    want = bertforge.load(qa_dir, device="cpu").answer("Who wrote Frankenstein?", CONTEXT)
    assert got.keys() == {"answer", "score", "start", "end"}
    assert got["answer"] == want.text and (got["start"], got["end"]) == (want.start, want.end)
    assert got["score"] == pytest.approx(want.score, abs=1e-6)
    assert CONTEXT[got["start"]:got["end"]].split() == got["answer"].split()


def test_jsonl_from_stdin_to_stdout_and_file_to_file(qa_dir, tmp_path):
    questions = ["Who wrote Frankenstein?", "When was it published?", "Where was it published?"]
    lines = [json.dumps({"id": "q1", "question": questions[0], "context": CONTEXT}), "",
             json.dumps({"question": questions[1], "context": CONTEXT, "extra": 1}),
             json.dumps({"id": 7, "question": questions[2], "context": CONTEXT})]
    done = bertforge_cli("predict", "squad", "--init_checkpoint", qa_dir, "--device", "cpu",
                         "--input_jsonl", "-", stdin="\n".join(lines) + "\n")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["id"] for r in records] == ["q1", 3, 7]  # a line without an id gets its line number
    want = bertforge.load(qa_dir, device="cpu").answer(questions, CONTEXT)
    for record, answer in zip(records, want):
        assert record.keys() == {"id", "answer", "score", "start", "end"}
        assert (record["answer"], record["start"], record["end"]) == (answer.text, answer.start, answer.end)
    source, out = tmp_path / "in.jsonl", tmp_path / "sub" / "out.jsonl"
    source.write_text("\n".join(lines), encoding="utf-8")
    assert main(["predict", "squad", "--init_checkpoint", str(qa_dir), "--device", "cpu",
                 "--input_jsonl", str(source), "--output_jsonl", str(out)]) == 0
    assert [json.loads(line) for line in out.read_text().splitlines()] == records


def test_glue_jsonl_gives_labels_and_probabilities(cls_dir, tmp_path):
    texts = [{"id": "a", "text_a": "A gripping, funny film."},
             {"id": "b", "text_a": "The cat sat.", "text_b": "A cat was sitting."},
             {"id": "c", "text_a": "Dull.", "text_b": None}]
    source, out = tmp_path / "texts.jsonl", tmp_path / "labels.jsonl"
    source.write_text("".join(json.dumps(t) + "\n" for t in texts), encoding="utf-8")
    assert main(["predict", "glue", "--init_checkpoint", str(cls_dir), "--device", "cpu",
                 "--input_jsonl", str(source), "--output_jsonl", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    want = bertforge.load(cls_dir, device="cpu").classify(
        ["A gripping, funny film.", ("The cat sat.", "A cat was sitting."), "Dull."])
    assert [r["id"] for r in records] == ["a", "b", "c"]
    for record, c in zip(records, want):
        assert record["label"] == c.label and record["label"] in LABELS
        assert record["probabilities"] == pytest.approx(c.probabilities, abs=1e-6)
        assert sum(record["probabilities"].values()) == pytest.approx(1.0)


@pytest.mark.parametrize("content, message", [
    (b'{"question": "Who?", "context": "x"}\n{"question": "Who?", "context": "x"\n',
     "in.jsonl:2: not valid JSON (Expecting ',' delimiter at column 36)"),
    (b'{"question": "Who?", "context": "x"}\n\n{"question": "Who?"}\n',
     "in.jsonl:3: no 'context' field (each line needs 'question', 'context')"),
    (b'{"question": "Who?", "context": " \\n "}\n', "in.jsonl:1: 'context' is empty"),
    (b'{"question": 5, "context": "x"}\n', "in.jsonl:1: 'question' must be a string, got int"),
    (b'["Who?", "x"]\n', "in.jsonl:1: expected a JSON object, got list"),
    (b'{"id": [1], "question": "Who?", "context": "x"}\n',
     "in.jsonl:1: 'id' must be a string or an integer, got list"),
    (b'{"question": "Who?", "context": "x"}\n{"question": "\xff", "context": "x"}\n',
     "in.jsonl:2: not UTF-8 text (invalid start byte at byte 14)"),
    (b"\n\n", "in.jsonl: no records"),
])
def test_bad_jsonl_is_one_clear_error_naming_the_line(qa_dir, tmp_path, capsys, content, message):
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_bytes(content)
    assert main(["predict", "squad", "--init_checkpoint", str(qa_dir), "--device", "cpu",
                 "--input_jsonl", str(source), "--output_jsonl", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--question", "Who?"], "--question needs --context"),
    (["--question", "Who?", "--context", "  "], "--question/--context: 'context' is empty"),
    (["--question", "Who?", "--context", "x", "--predict_file", "dev.json"],
     "give --predict_file (a SQuAD file) or raw text"),
    (["--question", "Who?", "--context", "x", "--input_jsonl", "in.jsonl"],
     "give --question/--context or --input_jsonl, not both"),
    (["--input_jsonl", "missing.jsonl"], "input file not found: missing.jsonl"),
])
def test_bad_raw_text_flags(qa_dir, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "squad", "--init_checkpoint", str(qa_dir), "--device", "cpu", *args]) == 2
    assert message in capsys.readouterr().err


def test_answering_with_a_model_without_qa_head_says_so(cls_dir, capsys):
    assert main(["predict", "squad", "--init_checkpoint", str(cls_dir), "--device", "cpu",
                 "--question", "Who?", "--context", CONTEXT]) == 2
    assert "needs a model with a trained qa head" in capsys.readouterr().err


def test_glue_jsonl_with_data_dir_is_refused(cls_dir, tmp_path, capsys):
    source = tmp_path / "t.jsonl"
    source.write_text('{"text_a": "x"}\n')
    assert main(["predict", "glue", "--init_checkpoint", str(cls_dir), "--input_jsonl", str(source),
                 "--data_dir", str(tmp_path)]) == 2
    assert "--input_jsonl classifies texts without labels" in capsys.readouterr().err


def test_glue_jsonl_with_label_order_is_refused(cls_dir, tmp_path, capsys):
    source = tmp_path / "t.jsonl"
    source.write_text('{"text_a": "x"}\n')
    assert main(["predict", "glue", "--init_checkpoint", str(cls_dir), "--input_jsonl", str(source),
                 "--label_order", "not_equivalent,equivalent"]) == 2
    assert "--label_order reorders a head for the task's files" in capsys.readouterr().err


def test_the_task_entry_points_leave_raw_text_to_raw_text():
    """The tasks read files; the CLI sends raw text to bertforge.raw_text, which sits above them.
    Called with raw text, a task's entry point says where it goes, before any work."""
    from bertforge.tasks.config import GluePredictRun, SquadPredictRun
    from bertforge.tasks.glue import evaluate_run
    from bertforge.tasks.squad import predict_run

    with pytest.raises(ConfigError, match=r"raw text .* goes to bertforge\.raw_text\.answer_run"):
        predict_run(SquadPredictRun(question="Who?", context=CONTEXT))
    with pytest.raises(ConfigError, match=r"--input_jsonl goes to bertforge\.raw_text\.classify_run"):
        evaluate_run(GluePredictRun(input_jsonl="texts.jsonl"))
