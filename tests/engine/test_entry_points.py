"""Every inference entry point in each CPU precision and on each engine, on tiny QA and
classification models with distinctive weights over the real bert-base-uncased vocabulary:
`predict squad --predict_file` (the task runner), `predict squad --question`, `predict glue
--input_jsonl`, `bertforge.load(...).answer / classify / encode` and the server's /answer.

What each entry point computed (the outputs of its prediction loop) is compared with the same
entry point in fp32 on PyTorch: fp32 on onnxruntime within 1e-4 (and the same answers); int8
and bf16 differ (so they really ran) by no more than tests/engine/test_precision.py's and
test_ort.py's tolerances, relative to the largest fp32 output."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager

import numpy as np
import pytest
import torch

import bertforge
from bertforge import infer, qa
from bertforge.checkpoint import save_native
from bertforge.cli import main
from bertforge.engine import OrtModel, cpu_bf16_instructions
from bertforge.errors import ConfigError
from bertforge.export import ExportArgs, export
from bertforge.model import attention, build_model
from bertforge.runconfig import InferenceRuntimeArgs
from bertforge.serve import work
from bertforge.serve.config import ServeArgs
from bertforge.tasks import glue as glue_task
from conftest import shared, tiny_config

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

# Relative to the largest fp32 output, as tests/engine/test_precision.py (PyTorch int8, bf16)
# and tests/engine/test_ort.py (onnxruntime int8) measured them.
TOLERANCE = {("int8", "torch"): 0.06, ("bf16", "torch"): 0.02, ("int8", "onnxruntime"): 0.08}
EXACT = 1e-4  # fp32 on onnxruntime against fp32 on PyTorch, absolute
LABELS = ["negative", "positive"]
WINDOWS = {"max_seq_length": 96, "doc_stride": 32, "max_query_length": 24}
WINDOW_FLAGS = [f"--{k}={v}" for k, v in WINDOWS.items()]
needs_bf16 = pytest.mark.skipif(cpu_bf16_instructions() is None, reason="this CPU has no AVX512-BF16 or AMX "
                                "(tests/engine/test_inference_refusals.py checks the refusal)")
# (precision, engine, whether the checkpoint is the model's ONNX export rather than its run)
VARIANTS = [pytest.param("int8", "torch", False, id="int8"), pytest.param("bf16", "torch", False, id="bf16",
                                                                          marks=needs_bf16),
            pytest.param("fp32", "onnxruntime", True, id="onnxruntime-export")]


def tiny_run(path, vocab_file, head: str, labels=None, extra=None):
    """A tiny model whose every weight is distinctive (fresh heads are nearly zero), saved as a
    run directory with the real vocabulary."""
    torch.manual_seed(0)
    config = tiny_config(vocab_size=30522, hidden_size=64, intermediate_size=128, max_position_embeddings=128)
    model = build_model(config, head, num_labels=len(labels) if labels else 2)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    save_native(path, model, config, vocab_file=vocab_file, do_lower_case=True, labels=labels, extra=extra)
    return path


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory, vocab_file):
    return tiny_run(tmp_path_factory.mktemp("qa") / "run", vocab_file, "qa", extra={"task": "squad"})


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory, vocab_file):
    return tiny_run(tmp_path_factory.mktemp("cls") / "run", vocab_file, "classification", LABELS)


@pytest.fixture(scope="module")
def qa_onnx(qa_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("qa_onnx") / "export"
    export(ExportArgs(str(qa_run), str(out)))
    return out


@pytest.fixture(scope="module")
def cls_onnx(cls_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("cls_onnx") / "export"
    export(ExportArgs(str(cls_run), str(out)))
    return out


@pytest.fixture(scope="module")
def squad_file(squad_dev_file, tmp_path_factory):
    """Two paragraphs of SQuAD dev, five questions each."""
    article = json.loads(squad_dev_file.read_text(encoding="utf-8"))["data"][0]
    paragraphs = [{**p, "qas": p["qas"][:5]} for p in article["paragraphs"][:2]]
    path = tmp_path_factory.mktemp("squad") / "dev-mini.json"
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": article["title"], "paragraphs": paragraphs}]}))
    return path


@pytest.fixture(scope="module")
def questions(squad_file):
    paragraphs = json.loads(squad_file.read_text())["data"][0]["paragraphs"]
    return [(q["question"], p["context"]) for p in paragraphs for q in p["qas"]]


@pytest.fixture(scope="module")
def texts():
    rows = shared("glue", "SST-2", "dev.tsv").read_text(encoding="utf-8").splitlines()[1:7]
    return [row.split("\t")[0] for row in rows]


@contextmanager
def capturing():
    """Every prediction's outputs (its tuple of float32 arrays, one row per input), in order,
    as the entry points' prediction loops return them."""
    seen: list[tuple[np.ndarray, ...]] = []
    real = infer.predict_timed

    def capture(*args, **kwargs):
        outputs, stats = real(*args, **kwargs)
        seen.append(outputs)
        return outputs, stats

    with pytest.MonkeyPatch.context() as patch:
        for module in (infer, qa, glue_task):  # infer.predict, the API and the server call it through infer
            patch.setattr(module, "predict_timed", capture)
        yield seen


def assert_matches(got: tuple[np.ndarray, ...], want: tuple[np.ndarray, ...], precision: str, engine: str) -> None:
    """`got` within the variant's tolerance of the fp32 `want` (padding, -inf, where `want` has it)."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        real = np.isfinite(w)
        assert (np.isfinite(g) == real).all()
        diff = np.abs(g[real] - w[real]).max()
        if (precision, engine) == ("fp32", "onnxruntime"):
            assert diff <= EXACT
        else:
            assert 0 < diff / np.abs(w[real]).max() <= TOLERANCE[precision, engine]


def variant_flags(precision: str, engine: str) -> list[str]:
    return ["--precision", precision, "--engine", engine]


# ---- predict squad --predict_file (the task runner) -------------------------------------------


@pytest.fixture(scope="module")
def squad_file_fp32(qa_run, squad_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("squad_fp32")
    with capturing() as seen:
        assert predict_file(qa_run, squad_file, out) == 0
    return seen, json.loads((out / "predictions.json").read_text())


def predict_file(checkpoint, squad_file, out, *flags: str) -> int:
    return main(["predict", "squad", "--init_checkpoint", str(checkpoint), "--predict_file", str(squad_file),
                 "--output_dir", str(out), "--device", "cpu", *WINDOW_FLAGS, *flags])


@pytest.mark.parametrize("precision,engine", [("int8", "torch"), pytest.param("bf16", "torch", marks=needs_bf16),
                                              ("fp32", "onnxruntime")])
def test_predict_squad_file(precision, engine, qa_run, squad_file, squad_file_fp32, tmp_path, monkeypatch):
    """The runner makes the model it loaded ready: int8 on the unpadded path, onnxruntime
    through an export of the loaded model made as it loads."""
    unpadded = []
    real_kernel = attention.unpadded_attention

    def spy(qkv, layout, dropout_p, recompute=False):
        unpadded.append(qkv.shape[0])
        return real_kernel(qkv, layout, dropout_p, recompute)

    monkeypatch.setattr(attention, "unpadded_attention", spy)
    (want,), fp32_answers = squad_file_fp32
    with capturing() as seen:
        assert predict_file(qa_run, squad_file, tmp_path, *variant_flags(precision, engine)) == 0
    (got,) = seen
    assert_matches(got, want, precision, engine)
    answers = json.loads((tmp_path / "predictions.json").read_text())
    assert answers.keys() == fp32_answers.keys()
    if engine == "onnxruntime":
        assert answers == fp32_answers and not unpadded  # the graph ran, not PyTorch's layers
    else:
        assert unpadded  # PyTorch's encoder on the real tokens only


# ---- predict squad --question, predict glue --input_jsonl (through the Python API) ---------------


@pytest.mark.parametrize("precision,engine,exported", VARIANTS)
def test_predict_squad_question(precision, engine, exported, qa_run, qa_onnx, questions, capsys):
    question, context = questions[0]

    def ask(checkpoint, *flags: str) -> tuple[dict, tuple[np.ndarray, ...]]:
        with capturing() as seen:
            assert main(["predict", "squad", "--init_checkpoint", str(checkpoint), "--question", question,
                         "--context", context, "--device", "cpu", *WINDOW_FLAGS, *flags]) == 0
        return json.loads(capsys.readouterr().out), seen[0]

    want, want_logits = ask(qa_run)
    got, got_logits = ask(qa_onnx if exported else qa_run, *variant_flags(precision, engine))
    assert_matches(got_logits, want_logits, precision, engine)
    if engine == "onnxruntime":
        assert (got["answer"], got["start"], got["end"]) == (want["answer"], want["start"], want["end"])
        assert got["score"] == pytest.approx(want["score"], abs=1e-5)


@pytest.mark.parametrize("precision,engine,exported", VARIANTS)
def test_predict_glue_jsonl(precision, engine, exported, cls_run, cls_onnx, texts, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text_a": t}) + "\n" for i, t in enumerate(texts)))

    def classify(checkpoint, name: str, *flags: str) -> tuple[list[dict], tuple[np.ndarray, ...]]:
        with capturing() as seen:
            assert main(["predict", "glue", "--init_checkpoint", str(checkpoint), "--input_jsonl", str(source),
                         "--output_jsonl", str(tmp_path / name), "--device", "cpu", *flags]) == 0
        return [json.loads(line) for line in (tmp_path / name).read_text().splitlines()], seen[0]

    want, want_logits = classify(cls_run, "fp32.jsonl")
    got, got_logits = classify(cls_onnx if exported else cls_run, "got.jsonl", *variant_flags(precision, engine))
    assert_matches(got_logits, want_logits, precision, engine)
    assert [r["id"] for r in got] == list(range(len(texts)))
    assert {r["label"] for r in got} <= set(LABELS)
    if engine == "onnxruntime":
        assert [r["label"] for r in got] == [r["label"] for r in want]
        for g, w in zip(got, want):
            assert g["probabilities"] == pytest.approx(w["probabilities"], abs=1e-5)


# ---- bertforge.load(...): answer, classify, encode -------------------------------------------


@pytest.fixture(scope="module")
def fp32_outputs(qa_run, cls_run, questions, texts):
    """The fp32 PyTorch outputs of answer, classify and encode."""
    with capturing() as seen:
        bertforge.load(qa_run, device="cpu").answer(*zip(*questions), **WINDOWS)
        cls = bertforge.load(cls_run, device="cpu")
        cls.classify(texts)
        cls.encode(texts)
    return dict(zip(("answer", "classify", "encode"), seen))


@pytest.mark.parametrize("precision", ["int8", pytest.param("bf16", marks=needs_bf16)])
def test_load_in_a_cpu_precision(precision, qa_run, cls_run, questions, texts, fp32_outputs):
    qa_model = bertforge.load(qa_run, device="cpu", precision=precision)
    cls = bertforge.load(cls_run, device="cpu", precision=precision)
    with capturing() as seen:
        answers = qa_model.answer(*zip(*questions), **WINDOWS)
        classes = cls.classify(texts)
        vectors = cls.encode(texts)
    for name, got in zip(("answer", "classify", "encode"), seen):
        assert_matches(got, fp32_outputs[name], precision, "torch")
    assert len(answers) == len(questions) and all(0 < a.score <= 1 for a in answers)
    assert [c.label for c in classes] == [LABELS[i] for i in seen[1][0].argmax(1)]
    assert vectors.shape == (len(texts), 64) and vectors.dtype == np.float32


def test_load_on_onnxruntime(qa_run, qa_onnx, cls_run, cls_onnx, questions, texts, fp32_outputs):
    """An export directory in fp32 answers and classifies as PyTorch does; a checkpoint is
    exported as it loads (here in int8, and the encoder alone for encode)."""
    fp32_answers = bertforge.load(qa_run, device="cpu").answer(*zip(*questions), **WINDOWS)
    fp32_classes = bertforge.load(cls_run, device="cpu").classify(texts)
    exported_qa = bertforge.load(qa_onnx, device="cpu", engine="onnxruntime")
    exported_cls = bertforge.load(cls_onnx, device="cpu", engine="onnxruntime")
    int8_qa = bertforge.load(qa_run, device="cpu", precision="int8", engine="onnxruntime")
    encoder = bertforge.load(cls_run, device="cpu", engine="onnxruntime", head="base")
    assert all(isinstance(p.model, OrtModel) for p in (exported_qa, exported_cls, int8_qa, encoder))
    assert exported_cls.labels == LABELS and int8_qa.model.precision == "int8"
    with capturing() as seen:
        answers = exported_qa.answer(*zip(*questions), **WINDOWS)
        classes = exported_cls.classify(texts)
        int8_qa.answer(*zip(*questions), **WINDOWS)
        encoder.encode(texts)
    assert_matches(seen[0], fp32_outputs["answer"], "fp32", "onnxruntime")
    assert_matches(seen[1], fp32_outputs["classify"], "fp32", "onnxruntime")
    assert_matches(seen[2], fp32_outputs["answer"], "int8", "onnxruntime")
    assert_matches(seen[3], fp32_outputs["encode"], "fp32", "onnxruntime")
    assert [(a.text, a.start, a.end) for a in answers] == [(a.text, a.start, a.end) for a in fp32_answers]
    assert [c.label for c in classes] == [c.label for c in fp32_classes]
    with pytest.raises(ConfigError) as refused:
        exported_qa.encode(texts)
    assert "\n" not in str(refused.value) and "head='base'" in str(refused.value)


# ---- the server's /answer ---------------------------------------------------------------------


@contextmanager
def serving(checkpoint, precision: str, engine: str):
    """A client of the server's application (in this process), once its model is ready."""
    from fastapi.testclient import TestClient

    from bertforge.serve.app import build_app

    args = ServeArgs(checkpoint=str(checkpoint), allowed_hosts="*", **WINDOWS,
                     runtime=InferenceRuntimeArgs(device="cpu", precision=precision, engine=engine))
    app, lifecycle = build_app(args, work.load_predictor)
    with TestClient(app) as client:
        deadline = time.monotonic() + 60
        while client.get("/v2/health/ready").status_code != 200:
            assert lifecycle.error is None, lifecycle.error
            assert time.monotonic() < deadline
            time.sleep(0.02)
        yield client


@pytest.mark.parametrize("precision,engine,exported", VARIANTS)
def test_serve_answer(precision, engine, exported, qa_run, qa_onnx, questions, fp32_outputs):
    items = [{"question": q, "context": c} for q, c in questions]
    fp32_answers = bertforge.load(qa_run, device="cpu").answer(*zip(*questions), **WINDOWS)
    with serving(qa_onnx if exported else qa_run, precision, engine) as client:
        with capturing() as seen:  # after the warm-up
            response = client.post("/answer", json=items)
    assert response.status_code == 200
    got = response.json()
    assert len(got) == len(items)
    # One request: its windows in order, in the forward passes the scheduler cut them into.
    assert_matches(tuple(np.concatenate(parts) for parts in zip(*seen)), fp32_outputs["answer"], precision, engine)
    if engine == "onnxruntime":
        assert [(g["answer"], g["start"], g["end"]) for g in got] == [(a.text, a.start, a.end) for a in fp32_answers]
        assert [g["score"] for g in got] == pytest.approx([a.score for a in fp32_answers], abs=1e-5)
