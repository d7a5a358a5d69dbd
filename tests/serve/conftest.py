"""The server tests' models and servers: the real MiniLM with a QA head behind one server that
the modules share, and a tiny BERT for the tests that need many windows fast."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import bertforge
from conftest import minilm_with_head, tiny_config
from serve.server_process import Server


def tiny_qa(out: Path, vocab_file: Path | None, do_lower_case: bool | None = True) -> Path:
    """A tiny BERT (H=32, 2 layers, 128 positions) with a seeded random QA head over the
    bert-base-uncased vocabulary, as a bertforge run directory; without a vocab.txt beside it
    when `vocab_file` is None, without a recorded casing when `do_lower_case` is None."""
    from bertforge.checkpoint import save_native
    from bertforge.model import build_model

    config = tiny_config(vocab_size=30522, max_position_embeddings=128)
    torch.manual_seed(0)
    model = build_model(config, "qa")
    save_native(out, model, config, vocab_file=vocab_file, do_lower_case=do_lower_case)
    return out


def long_context(squad_dev_file: Path, chars: int) -> str:
    """SQuAD dev contexts joined, cut to `chars` characters at a word boundary."""
    raw = json.loads(squad_dev_file.read_text(encoding="utf-8"))
    text = " ".join(p["context"] for a in raw["data"][:3] for p in a["paragraphs"])
    assert len(text) > chars
    return text[:chars].rsplit(" ", 1)[0]


@pytest.fixture(scope="session")
def qa_dir(tmp_path_factory) -> Path:
    return minilm_with_head(tmp_path_factory.mktemp("qa") / "run", "qa")


@pytest.fixture(scope="session")
def qa_server(qa_dir, tmp_path_factory):
    """One MiniLM QA server for every module of this directory: default limits, batches of 16."""
    server = Server(qa_dir, tmp_path_factory.mktemp("log") / "qa.log", "--max_batch_size", "16")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def qa_api(qa_dir) -> bertforge.Predictor:
    return bertforge.load(qa_dir, device="cpu")


@pytest.fixture(scope="session")
def dev_questions(squad_dev_file) -> list[tuple[str, str]]:
    raw = json.loads(squad_dev_file.read_text(encoding="utf-8"))
    return [(q["question"], p["context"]) for a in raw["data"][38:40] for p in a["paragraphs"]
            for q in p["qas"]]


def assert_same_answer(got: dict, want: bertforge.Answer) -> None:
    assert got.keys() == {"answer", "score", "start", "end"}
    assert (got["answer"], got["start"], got["end"]) == (want.text, want.start, want.end)
    assert got["score"] == pytest.approx(want.score, abs=1e-5)  # other batches, other rounding
