"""`--max_tokens_per_batch` (prediction batches of a token budget) reaches the batch planner of
`predict squad` and `evaluate glue`, makes other batches, and changes no output."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import bertforge.infer as infer
from bertforge.checkpoint import save_native
from bertforge.cli import main
from bertforge.config import resolve_config
from bertforge.model import build_model
from conftest import shared

BUDGET = 2048


@pytest.fixture
def planned(monkeypatch):
    """Every batch the planner makes: (max_tokens asked for, rows, tokens of trimmed grid)."""
    seen: list[tuple[int | None, int, int]] = []
    plan = infer.plan_batches

    def spy(attention_mask, batch_size, max_tokens=None):
        batches = plan(attention_mask, batch_size, max_tokens)
        lengths = attention_mask.sum(axis=1)
        for rows in batches:
            width = -(-int(lengths[rows].max()) // 8) * 8
            seen.append((max_tokens, len(rows), len(rows) * width))
        return batches

    monkeypatch.setattr(infer, "plan_batches", spy)
    return seen


def tiny_checkpoint(tmp_path, head: str, vocab_file, **kw):
    torch.manual_seed(0)
    config = resolve_config("tiny")
    model = build_model(config, head, **kw)
    with torch.no_grad():  # distinctive outputs: a random head of a larger scale
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return save_native(tmp_path / head, model, config, vocab_file=vocab_file, do_lower_case=True,
                       labels=["0", "1"] if head == "classification" else None)


@pytest.mark.slow
def test_squad_predictions_do_not_change_with_a_token_budget(tmp_path, squad_dev_file, vocab_file, planned):
    model = tiny_checkpoint(tmp_path, "qa", vocab_file)
    results = {}
    for name, extra in (("rows", []), ("budget", ["--max_tokens_per_batch", str(BUDGET)])):
        out = tmp_path / name
        assert main(["predict", "squad", "--init_checkpoint", str(model), "--predict_file", str(squad_dev_file),
                     "--predict_articles", "38:39", "--max_seq_length", "192", "--doc_stride", "64",
                     "--predict_batch_size", "64", "--output_dir", str(out), "--device", "cpu", *extra]) == 0
        results[name] = (json.loads((out / "predictions.json").read_text()),
                         json.loads((out / "nbest_predictions.json").read_text()))
    by_rows = [b for b in planned if b[0] is None]
    by_budget = [b for b in planned if b[0] == BUDGET]
    assert by_budget and all(tokens <= BUDGET for _, _, tokens in by_budget)
    assert max(t for _, _, t in by_rows) > BUDGET  # the budget made other batches
    assert len({rows for _, rows, _ in by_budget}) > 1  # short windows share bigger batches
    (preds, nbest), (preds_b, nbest_b) = results["rows"], results["budget"]
    assert preds == preds_b and len(preds) == 104
    for qid, entries in nbest.items():
        assert [e["text"] for e in entries] == [e["text"] for e in nbest_b[qid]]
        np.testing.assert_allclose([e["start_logit"] for e in entries],
                                   [e["start_logit"] for e in nbest_b[qid]], rtol=0, atol=1e-5)


def test_glue_metrics_do_not_change_with_a_token_budget(tmp_path, vocab_file, planned):
    model = tiny_checkpoint(tmp_path, "classification", vocab_file, num_labels=2)
    scores = {}
    for name, extra in (("rows", []), ("budget", ["--max_tokens_per_batch", "512"])):
        out = tmp_path / name
        assert main(["evaluate", "glue", "--task", "mrpc", "--data_dir", str(shared("glue", "MRPC")),
                     "--init_checkpoint", str(model), "--eval_batch_size", "32", "--output_dir", str(out),
                     "--device", "cpu", *extra]) == 0
        scores[name] = json.loads((out / "eval_results.json").read_text())
    assert scores["budget"] == scores["rows"]
    by_budget = [tokens for max_tokens, _, tokens in planned if max_tokens == 512]
    assert by_budget and max(by_budget) <= 512
    assert max(tokens for max_tokens, _, tokens in planned if max_tokens is None) > 512


@pytest.mark.parametrize("argv", [["predict", "squad"], ["evaluate", "glue"]])
def test_a_token_budget_below_one_is_refused(argv, capsys):
    assert main([*argv, "--max_tokens_per_batch", "0"]) == 2
    assert "--max_tokens_per_batch must be at least 1, got 0" in capsys.readouterr().err
