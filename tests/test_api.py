"""The Python API (`bertforge.load` -> Predictor.answer / classify / encode) on the real MiniLM,
checked against independent implementations: sentence-transformers for embeddings,
transformers' models and tokenizer for classification and for the best answer span, and the
`bertforge predict squad` command for long contexts read in windows."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

import bertforge
from bertforge.checkpoint import load_checkpoint, save_checkpoint_as, save_native
from bertforge.config import BertConfig
from bertforge.cli import main
from bertforge.errors import CheckpointError, ConfigError, DataError, DeviceError
from bertforge.model import build_model
from conftest import REPO, minilm_dir, minilm_with_head, shared

LABELS = ["negative", "positive"]


@pytest.fixture(scope="module")
def qa_dir(tmp_path_factory) -> Path:
    return minilm_with_head(tmp_path_factory.mktemp("qa") / "run", "qa")


@pytest.fixture(scope="module")
def qa(qa_dir) -> bertforge.Predictor:
    return bertforge.load(qa_dir, device="cpu", batch_size=7)


@pytest.fixture(scope="module")
def cls_dir(tmp_path_factory) -> Path:
    return minilm_with_head(tmp_path_factory.mktemp("cls") / "run", "classification", LABELS)


@pytest.fixture(scope="module")
def encoder() -> bertforge.Predictor:
    return bertforge.load(minilm_dir(), device="cpu")


@pytest.fixture(scope="module")
def dev_questions(squad_dev_file) -> list[tuple[str, str, str]]:
    """(id, question, context) of SQuAD dev articles 38-39 (long contexts)."""
    raw = json.loads(squad_dev_file.read_text(encoding="utf-8"))
    return [(q["id"], q["question"], p["context"]) for a in raw["data"][38:40]
            for p in a["paragraphs"] for q in p["qas"]]


def squeeze(text: str) -> str:
    """Runs of the characters SQuAD splits words on, as one space (as answers join words)."""
    return re.sub("[ \t\r\n\u202f]+", " ", text)


# ---- encode ----------------------------------------------------------------------------------


def test_encode_equals_sentence_transformers(encoder, dev_questions):
    from sentence_transformers import SentenceTransformer

    texts = [q for _, q, _ in dev_questions[:40]] + [c for _, _, c in dev_questions[:200:20]]
    reference = SentenceTransformer(str(minilm_dir()), device="cpu").encode(texts)  # mean, unit length
    # sentence-transformers cuts this model's inputs at 256 tokens; some contexts are longer.
    ours = encoder.encode(texts, normalize=True, max_seq_length=256)
    assert ours.shape == (len(texts), 384) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, atol=2e-6, rtol=0)
    one = encoder.encode(texts[3], normalize=True, max_seq_length=256)
    assert one.shape == (384,)
    np.testing.assert_allclose(one, reference[3], atol=2e-6, rtol=0)
    assert encoder.encode([]).shape == (0, 384)


def test_cls_and_pooled_embeddings_equal_transformers(encoder, dev_questions):
    texts = [q for _, q, _ in dev_questions[:16]]
    pairs = [(q, c) for _, q, c in dev_questions[:8]]
    tok = transformers.AutoTokenizer.from_pretrained(minilm_dir())
    hf = transformers.BertModel.from_pretrained(minilm_dir()).eval()
    for inputs, args in ((texts, (texts,)), (pairs, ([q for q, _ in pairs], [c for _, c in pairs]))):
        batch = tok(*args, padding=True, truncation="longest_first", max_length=512, return_tensors="pt")
        with torch.no_grad():
            out = hf(**batch)
        np.testing.assert_allclose(encoder.encode(inputs, pooling="cls"), out.last_hidden_state[:, 0].numpy(),
                                   atol=2e-5, rtol=0)
        np.testing.assert_allclose(encoder.encode(inputs, pooling="pooled"), out.pooler_output.numpy(),
                                   atol=2e-5, rtol=0)


# ---- classify --------------------------------------------------------------------------------


def test_classify_equals_transformers(cls_dir, tmp_path):
    sst = [line.split("\t")[0] for line in
           shared("glue", "SST-2", "dev.tsv").read_text(encoding="utf-8").splitlines()[1:31]]
    mrpc_rows = [line.split("\t") for line in
                 shared("glue", "MRPC", "dev.tsv").read_text(encoding="utf-8-sig").splitlines()[1:21]]
    pairs = [(row[3], row[4]) for row in mrpc_rows]
    hf_dir = tmp_path / "hf"
    save_checkpoint_as(load_checkpoint(cls_dir), hf_dir, to="hf")
    hf = transformers.BertForSequenceClassification.from_pretrained(hf_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(minilm_dir())
    for source in (cls_dir, hf_dir):  # labels from bertforge.json, then from the HF id2label
        model = bertforge.load(source, device="cpu", batch_size=8)
        assert model.head == "classification" and model.labels == LABELS
        for inputs, args in ((sst, (sst,)), (pairs, ([a for a, _ in pairs], [b for _, b in pairs]))):
            batch = tok(*args, padding=True, truncation="longest_first", max_length=512, return_tensors="pt")
            with torch.no_grad():
                expected = torch.softmax(hf(**batch).logits.double(), -1).numpy()
            results = model.classify(inputs)
            got = np.array([[r.probabilities[name] for name in LABELS] for r in results])
            np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
            assert [r.label for r in results] == [LABELS[i] for i in expected.argmax(1)]
            assert [r.score for r in results] == pytest.approx(expected.max(1), abs=1e-5)
        assert 0.05 < np.mean([r.label == "positive" for r in model.classify(sst)]) < 0.95
        single = model.classify(pairs[0])
        assert single == model.classify(pairs[:1])[0]
        assert model.classify([]) == []


def test_a_glue_checkpoint_answers_with_class_names(tmp_path, vocab_file):
    """MRPC's classes are not_equivalent and equivalent, also for a checkpoint that records
    GLUE's file labels "0"/"1" (as bertforge wrote them before classes had names)."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=64)
    run = save_native(tmp_path / "mrpc", build_model(config, "classification"), config, vocab_file=vocab_file,
                      do_lower_case=True, labels=["0", "1"], extra={"task": "glue/mrpc"})
    model = bertforge.load(run, device="cpu")
    assert model.labels == ["not_equivalent", "equivalent"]
    result = model.classify(("The cat sat.", "A cat was sitting."))
    assert result.label in model.labels and result.probabilities.keys() == {"not_equivalent", "equivalent"}


# ---- answer ----------------------------------------------------------------------------------


def best_span_by_transformers(hf_qa, tok, question: str, context: str, max_answer_length: int = 30):
    """The highest start + end logit over every span of context tokens (at most
    max_answer_length long), as a character span, from transformers' model and offsets."""
    enc = tok(question, context, return_offsets_mapping=True, return_tensors="pt")
    offsets = enc.pop("offset_mapping")[0].tolist()
    with torch.no_grad():
        out = hf_qa(**enc)
    start, end = out.start_logits[0].double(), out.end_logits[0].double()
    context_tokens = [i for i, s in enumerate(enc.sequence_ids()) if s == 1]
    best = max((start[s] + end[e], s, e) for s in context_tokens for e in context_tokens
               if s <= e < s + max_answer_length)
    return offsets[best[1]][0], offsets[best[2]][1]


def test_answer_is_the_best_span_of_transformers_logits(qa, qa_dir, dev_questions, tmp_path):
    hf_dir = tmp_path / "hf"
    save_checkpoint_as(load_checkpoint(qa_dir), hf_dir, to="hf")
    hf_qa = transformers.BertForQuestionAnswering.from_pretrained(hf_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(minilm_dir())
    # Questions whose context fits one window of 384 tokens; every position an n-best candidate.
    fitting = [(q, c) for _, q, c in dev_questions[::7] if len(tok(q, c)["input_ids"]) <= 384][:25]
    assert len(fitting) == 25
    answers = qa.answer([q for q, _ in fitting], [c for _, c in fitting], n_best_size=384)
    for (question, context), answer in zip(fitting, answers):
        assert (answer.start, answer.end) == best_span_by_transformers(hf_qa, tok, question, context)
        assert squeeze(context[answer.start:answer.end]) == answer.text
        assert 0 < answer.score <= 1


def test_answer_reads_long_contexts_in_windows_as_predict_squad(qa, qa_dir, dev_questions, tmp_path):
    chosen = dev_questions[:60]
    data = tmp_path / "squad.json"
    data.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": [
        {"context": c, "qas": [{"id": i, "question": q}]} for i, q, c in chosen]}]}))
    settings = {"max_seq_length": 96, "doc_stride": 32, "max_query_length": 24, "n_best_size": 10,
                "max_answer_length": 12}
    argv = [f"--{k}={v}" for k, v in settings.items()]
    assert main(["predict", "squad", "--init_checkpoint", str(qa_dir), "--predict_file", str(data),
                 "--output_dir", str(tmp_path / "out"), "--device", "cpu", *argv]) == 0
    nbest = json.loads((tmp_path / "out" / "nbest_predictions.json").read_text())
    answers = qa.answer([q for _, q, _ in chosen], [c for _, _, c in chosen], **settings)
    windows = 0
    for (qid, _, context), answer in zip(chosen, answers):
        best = nbest[qid][0]
        assert (answer.text, answer.start, answer.end) == (best["text"], best["start"], best["end"])
        assert answer.score == pytest.approx(best["probability"], abs=1e-5)  # batches of 7 vs 64
        assert squeeze(context[answer.start:answer.end]) == answer.text != ""
        windows += len(context) > 400
    assert windows > 40  # most contexts need several windows of 96 tokens
    # One at a time, and one context for several questions, give the same answers.
    assert_same_answer(qa.answer(chosen[5][1], chosen[5][2], **settings), answers[5])
    same_context = [i for i, (_, _, c) in enumerate(chosen) if c == chosen[0][2]]
    assert len(same_context) > 1
    for i, answer in zip(same_context, qa.answer([chosen[i][1] for i in same_context], chosen[0][2],
                                                 **settings)):
        assert_same_answer(answer, answers[i])


def assert_same_answer(got, want):
    """Equal answers, up to float rounding of batches of other sizes."""
    assert (got.text, got.start, got.end) == (want.text, want.start, want.end)
    assert got.score == pytest.approx(want.score, abs=1e-5)


def test_answer_offsets_follow_odd_whitespace(qa):
    # U+3000 and U+00A0 do not split SQuAD's words (an answer keeps them); the other runs do.
    context = "\u3000Frankenstein  was\twritten\n\nby Mary\u00a0Shelley   in 1818.  "
    for answer in qa.answer(["Who wrote it?", "When?", "What was written?"], context):
        assert 0 <= answer.start < answer.end <= len(context)
        assert squeeze(context[answer.start:answer.end]) == answer.text
        assert squeeze(context[answer.start]) != " " != squeeze(context[answer.end - 1])



# ---- errors ----------------------------------------------------------------------------------


def test_bad_inputs_are_clear_errors(qa, encoder, cls_dir):
    with pytest.raises(DataError, match="context is empty"):
        qa.answer("Who?", " \n\t ")
    with pytest.raises(DataError, match="context 1 is empty"):
        qa.answer(["Who?", "What?"], ["Some text.", ""])
    with pytest.raises(DataError, match="question is empty"):
        qa.answer("  ", "Some text.")
    with pytest.raises(DataError, match="2 questions but 3 contexts"):
        qa.answer(["a?", "b?"], ["x", "y", "z"])
    with pytest.raises(DataError, match="question 1 must be a string, got int"):
        qa.answer(["a?", 3], "Some text.")
    with pytest.raises(ConfigError, match="max_seq_length 1024 exceeds the model's max_position_embeddings"):
        qa.answer("Who?", "Some text.", max_seq_length=1024)
    with pytest.raises(ConfigError, match="doc_stride must be a positive integer, got 0"):
        qa.answer("Who?", "Some text.", doc_stride=0)
    with pytest.raises(ConfigError, match=r"answer\(\) needs a model with a trained qa head, but .* has a "
                                          r"base head; fine-tune it first \(bertforge finetune squad\)"):
        encoder.answer("Who?", "Some text.")
    with pytest.raises(ConfigError, match=r"classify\(\) needs a model with a trained classification head"):
        qa.classify("text")
    with pytest.raises(ConfigError, match="no trained pooler"):
        qa.encode("text", pooling="pooled")
    with pytest.raises(ConfigError, match="pooling must be mean, cls or pooled"):
        encoder.encode("text", pooling="max")
    with pytest.raises(DataError, match="text 0 must be a string, got NoneType"):
        encoder.encode([None])
    with pytest.raises(DeviceError, match="'gpu0' is not a device name; available here: cpu"):
        bertforge.load(cls_dir, device="gpu0")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        bertforge.load(cls_dir / "missing", device="cpu")
    assert issubclass(DataError, bertforge.BertforgeError)


# ---- the README's snippet --------------------------------------------------------------------

HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def place_in_hub_cache(cache: Path, repo_id: str, files: Path) -> None:
    """`files` as huggingface_hub's cache holds a downloaded snapshot of `repo_id`."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / HUB_COMMIT
    snapshot.mkdir(parents=True)
    for f in files.iterdir():
        if f.is_file():
            (snapshot / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(HUB_COMMIT)


def readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    return section


def test_readme_python_snippet_runs_offline_from_the_hub_cache(qa_dir, cls_dir, tmp_path):
    """The README's "Use from Python" code, run as written, with the Hub ids it names served
    from a local Hugging Face cache in offline mode (the MiniLM models stand in for them)."""
    blocks = re.findall(r"```python\n(.*?)```", readme_section("Use from Python"), re.S)
    assert blocks
    code = "\n".join(blocks)
    cache = tmp_path / "hub"
    hub_ids = re.findall(r'bertforge\.load\("([^"]+)"', code)
    assert len(hub_ids) == 3
    stand_ins = {"qa": qa_dir, "cls": cls_dir, "base": minilm_dir()}
    for hub_id in hub_ids:
        kind = "qa" if "squad" in hub_id.lower() else "cls" if "sst" in hub_id.lower() else "base"
        hf = tmp_path / "hf" / kind
        if kind == "base":
            hf = stand_ins["base"]
        else:
            save_checkpoint_as(load_checkpoint(stand_ins[kind]), hf, to="hf")
        place_in_hub_cache(cache, hub_id, hf)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO / "src")}
    probe = ("\nimport json as _j\nprint('RESULT', _j.dumps({'text': answer.text, 'start': answer.start, "
             "'end': answer.end, 'context': context, 'label': result.label, 'shape': list(vectors.shape)}))")
    done = subprocess.run([sys.executable, "-c", code + probe], env=env, capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert squeeze(result["context"][result["start"]:result["end"]]) == result["text"] != ""
    assert result["label"] in ("LABEL_0", "LABEL_1", "negative", "positive")
    assert result["shape"] == [2, 384]


def test_importing_bertforge_loads_torch_only_when_the_api_is_used():
    code = ("import sys, bertforge; assert 'torch' not in sys.modules; "
            "assert bertforge.load is bertforge.api.load; assert 'torch' in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO / "src")},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
