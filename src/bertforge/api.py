"""bertforge from Python: load a checkpoint, then answer questions, classify texts or embed them.

    import bertforge
    qa = bertforge.load("google-bert/bert-large-uncased-whole-word-masking-finetuned-squad")
    qa.answer("Who wrote Frankenstein?", "Frankenstein was written by Mary Shelley in 1818.")
    # Answer(text='Mary Shelley', score=0.97, start=28, end=40)

`load` takes whatever `--init_checkpoint` takes: a bertforge run directory, a Hugging Face
directory, a Google TF checkpoint, an NVIDIA DLE `.pt` file, or a Hugging Face Hub id (fetched
into huggingface_hub's cache, which honours HF_HUB_OFFLINE). The model keeps the head its
checkpoint has: `answer` needs a question-answering head, `classify` a classification head;
`encode` works with any.

Nothing here is a second implementation: answers come from the answer pipeline `predict squad`
runs (`bertforge.qa`: SQuAD's doc-stride windows, span logits, n-best decoding, with the same
`SquadSettings`), text pairs are encoded as GLUE's (`data.glue.encode_texts`), every forward
runs through `bertforge.infer.predict` (length-grouped batches trimmed to their longest
sequence), and the model predicts in the precision and on the engine `bertforge predict` gives
it (`bertforge.engine.inference_model`), exactly as `bertforge predict` does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch
from torch import Tensor, nn

from bertforge.data import squad
from bertforge.data.glue import encode_texts, get_task, named_labels
from bertforge.data.squad import SquadSettings
from bertforge.engine import OrtModel, check_inference, inference_model, is_export_dir
from bertforge.errors import ConfigError, DataError
from bertforge.infer import predict
from bertforge.loading import check_seq_length, load_export, load_model, model_inputs
from bertforge.qa import AnswerPipeline
from bertforge.runconfig import Engine, InferenceRuntimeArgs, ModelArgs, Pooling, Precision, RuntimeArgs, engine_of
from bertforge.train.runtime import Runtime
from bertforge.validation import check_argument

TextOrPair = str | tuple[str, str]


@dataclass(frozen=True)
class Answer:
    """The answer to one question about one context."""

    text: str
    """The answer as SQuAD predicts it: words of the context, joined by single spaces ("" when
    no span of the context qualifies, or, SQuAD v2.0, when the model says there is no answer)."""
    score: float
    """Its probability among the n-best answers (softmax of start + end logit over them; for
    "" of a v2.0 model, the null answer's)."""
    start: int
    """Character offset in the context where the answer starts (0 and end 0 for "")."""
    end: int
    """Character offset just past its end: `context[start:end]` is the answer as the context
    writes it (the same words, with the context's own whitespace between them)."""


@dataclass(frozen=True)
class Classification:
    """The class of one text (or text pair)."""

    label: str | None
    """The most probable class's name; None for a regression head (one output, e.g. STS-B)."""
    score: float
    """The probability of `label`; a regression head's predicted value."""
    probabilities: dict[str, float]
    """Every class's probability, by name, in the head's output order (empty for regression)."""


def load(source: str | Path, *, device: str = "auto", precision: Precision = "fp32", engine: Engine = "torch",
         batch_size: int = 64, head: str | None = None, vocab_file: str | Path | None = None,
         do_lower_case: bool | None = None, bert_config: str | Path | None = None,
         compile: bool | None = None, streams: int = 1) -> Predictor:
    """A ready model from any checkpoint bertforge reads, or a Hugging Face Hub id.

    device: auto (the accelerator if there is one, else cpu), cpu, cuda, cuda:1, xpu, mps, ...
    precision: fp32 (the default), tf32, bf16 or fp16 (autocast; bf16 on a CPU only where it has
    AVX512-BF16 or AMX), or int8 (CPU: linear layers dynamically quantised after SmoothQuant; the
    fastest, within a fraction of an F1 point of fp32 on SQuAD; score it on your data).
    engine: torch, or onnxruntime (CPU, fp32 or int8: the model exported to ONNX as it loads,
    or `source` a `bertforge export` directory; encode() then needs the base head). The flags
    `--precision` and `--engine` say which to use when. batch_size: sequences per forward pass.
    head: the model head to build (qa, classification, pretraining, base); default: the one the
    checkpoint has. vocab_file, do_lower_case, bert_config: for checkpoints that lack them (a TF
    checkpoint without its bert_config.json, say); by default what the checkpoint records.
    compile: torch.compile the encoder layers (default: on CUDA only).
    streams: CPU, torch engine: batches computed at once, each on an equal share of the CPU's
    threads; more than one raises the throughput of large inputs (2 on a 2-core CPU: int8
    1.28x), while one batch alone is fastest in 1 (see `--streams`).
    """
    model = ModelArgs(init_checkpoint=str(source), vocab_file=None if vocab_file is None else str(vocab_file),
                      do_lower_case=do_lower_case,
                      bert_model=None if bert_config is None else str(bert_config))
    runtime = InferenceRuntimeArgs(device=device, precision=precision, engine=engine, compile=compile, streams=streams)
    return Predictor(model, runtime, head=head, batch_size=batch_size)


class Predictor:
    """A loaded model on its device, in its precision, on its engine, with its tokenizer:
    `answer`, `classify`, `encode`.

    Calls from several threads must take turns (the server does), except that the server's CPU
    streams run forward passes of one torch-engine Predictor at once (`--streams`).
    """

    def __init__(self, model: ModelArgs, runtime: RuntimeArgs | None = None, *,
                 head: str | None = None, batch_size: int = 64):
        runtime = runtime or InferenceRuntimeArgs()
        if not model.init_checkpoint:
            raise ConfigError("which checkpoint? give its path or Hugging Face Hub id")
        check_argument("batch_size", batch_size, int, minimum=1)
        self.batch_size = batch_size
        self.runtime = Runtime(runtime)
        engine = engine_of(runtime)
        check_inference(runtime.precision, engine, self.runtime.device, self.runtime.streams)
        if engine == "onnxruntime" and is_export_dir(model.init_checkpoint):
            self.loaded = load_export(model, head, runtime.precision)
        else:
            self.loaded = load_model(model, head, unpad=runtime.unpad)
            self.loaded.model = inference_model(self.loaded.model, runtime.precision, engine, self.runtime.device)
        self.source = model.init_checkpoint
        self.model.to(self.runtime.device)
        self.labels = _labels(self.loaded.labels, self.loaded.task, self.model)

    @property
    def model(self) -> nn.Module:
        return self.loaded.model

    @property
    def head(self) -> str:
        """qa, classification, pretraining or base."""
        return self.model.head

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def encodes(self) -> bool:
        """Whether `encode` can run: on the torch engine always; on onnxruntime, with an export of
        the encoder (the base head), since other heads' exports output their head's results only."""
        return not isinstance(self.model, OrtModel) or self.head == "base"

    def check_encodes(self) -> None:
        """A one-line ConfigError where `encode` cannot run (see `encodes`)."""
        if not self.encodes:
            raise ConfigError(f"encode() on the onnxruntime engine reads an export of the encoder, and {self.source} "
                              f"gives its {self.head} head's: load it with head='base' (or export it with --head "
                              "base), or use the torch engine")

    @property
    def max_seq_length(self) -> int:
        """The longest sequence the model embeds (its max_position_embeddings)."""
        return self.loaded.config.max_position_embeddings

    def __repr__(self) -> str:
        c = self.loaded.config
        return (f"Predictor({self.source!r}, head={self.head!r}, BERT L={c.num_hidden_layers} "
                f"H={c.hidden_size}, device={str(self.device)!r})")

    # ---- question answering ----------------------------------------------------------------

    @overload
    def answer(self, question: str, context: str, *, settings: SquadSettings | None = None,
               allow_no_answer: bool | None = None, **overrides: Any) -> Answer: ...
    @overload
    def answer(self, question: Sequence[str], context: str | Sequence[str], *,
               settings: SquadSettings | None = None, allow_no_answer: bool | None = None,
               **overrides: Any) -> list[Answer]: ...

    def answer(self, question, context, *, settings=None, allow_no_answer=None, **overrides):
        """The answer to `question` in `context` (a span of the context), or a list of answers
        for a list of questions, about one context or a list of as many contexts.

        Decoded as `bertforge predict squad` decodes, with its settings (`SquadSettings`: the
        same names, the same defaults), given as a `settings` object and/or keyword arguments:
        contexts longer than a window are read in windows of max_seq_length tokens
        ([CLS] question [SEP] context part [SEP]) that start doc_stride tokens apart; questions
        longer than max_query_length tokens are cut; the best of the n_best_size start and end
        candidates of each window, at most max_answer_length tokens long, wins (Google's
        run_squad.py settings and decoding); max_tokens_per_batch caps the tokens of a batch.

        allow_no_answer: SQuAD v2.0 decoding, where the answer is "" when the null answer's
        score ([CLS]) beats the best span's by more than null_score_diff_threshold. Default: as
        the checkpoint was fine-tuned (`finetune squad --version_2_with_negative` records it).
        """
        settings = SquadSettings.from_arguments(**overrides) if settings is None else replace(settings, **overrides)
        pipeline = self.answer_pipeline(settings, allow_no_answer)
        examples = self.answer_examples(question, context)
        if not examples:
            return []
        found = pipeline(examples)
        answers = [Answer(text=best["text"], score=best["probability"], start=best["start"], end=best["end"])
                   for best in map(found.chosen, (e.qas_id for e in examples))]
        return answers[0] if isinstance(question, str) else answers

    def answer_pipeline(self, settings: SquadSettings, allow_no_answer: bool | None = None) -> AnswerPipeline:
        """The pipeline `answer` runs (windows, logits, decoding), for callers that run its stages
        themselves: the server interleaves the windows of several requests in its forward passes.
        allow_no_answer: as `answer` takes it."""
        self._need("qa", "answer", "bertforge finetune squad")
        if allow_no_answer is None:
            allow_no_answer = bool(self.loaded.meta.get("version_2_with_negative", False))
        check_seq_length(settings.max_seq_length, self.loaded.config)
        return AnswerPipeline(self.model, self.loaded.tokenizer, settings, self.runtime, self.batch_size,
                              allow_no_answer)

    def answer_examples(self, question: str | Sequence[str], context: str | Sequence[str]
                        ) -> list[squad.SquadExample]:
        """`answer`'s questions as SQuAD examples (ids "0", "1", ...), each checked: a string,
        not empty, and as many contexts as questions (or one for all)."""
        single = isinstance(question, str)
        questions = [question] if single else _sequence(question, "question")
        contexts = [context] * len(questions) if isinstance(context, str) else _sequence(context, "context")
        if len(contexts) != len(questions):
            raise DataError(f"{len(questions)} questions but {len(contexts)} contexts: give one context "
                            "for all, or one per question")
        examples = []
        for i, (q, c) in enumerate(zip(questions, contexts)):
            _text(q, "question", i, single)
            _text(c, "context", i, single)
            if not q.strip():
                raise DataError(f"{_where('question', i, single)} is empty")
            doc_tokens, char_to_word = squad.split_whitespace(c)
            if not doc_tokens:
                raise DataError(f"{_where('context', i, single)} is empty: there is nothing to answer from")
            examples.append(squad.SquadExample(str(i), q, c, doc_tokens, char_to_word, answers=[]))
        return examples

    # ---- classification --------------------------------------------------------------------

    @overload
    def classify(self, texts: TextOrPair, *, max_seq_length: int | None = None) -> Classification: ...
    @overload
    def classify(self, texts: Sequence[TextOrPair], *, max_seq_length: int | None = None
                 ) -> list[Classification]: ...

    def classify(self, texts, *, max_seq_length=None):
        """The class of a text or a (text_a, text_b) pair, or of each of a list of them.

        Inputs are `[CLS] a [SEP] (b [SEP])`, cut to max_seq_length tokens as Google's
        run_classifier.py cuts them (default: the longest the model embeds).
        """
        self._need("classification", "classify", "bertforge finetune glue")
        single, inputs = self._encode_inputs(texts, max_seq_length)
        if not single and not len(inputs[0]):
            return []
        (logits,) = self._predict(dict(zip(("input_ids", "token_type_ids", "attention_mask"), inputs)),
                                  _classifier_logits)
        results = [self._classification(row) for row in logits.astype(np.float64)]
        return results[0] if single else results

    def _classification(self, logits: np.ndarray) -> Classification:
        if len(logits) == 1:
            return Classification(label=None, score=float(logits[0]), probabilities={})
        p = np.exp(logits - logits.max())
        p /= p.sum()
        best = int(p.argmax())
        return Classification(label=self.labels[best], score=float(p[best]),
                              probabilities={name: float(x) for name, x in zip(self.labels, p)})

    # ---- embeddings ------------------------------------------------------------------------

    def encode(self, texts: TextOrPair | Sequence[TextOrPair], *, pooling: Pooling = "mean",
               normalize: bool = False, max_seq_length: int | None = None) -> np.ndarray:
        """Embeddings of a text (or pair): (H,) float32, or (N, H) for a list of N.

        pooling: mean (the average of the last hidden states over the real tokens, as
        sentence-transformers models are trained), cls (the last hidden state of [CLS]) or
        pooled (BERT's pooler, tanh(W h_[CLS] + b), where the checkpoint has trained one).
        normalize: scale each embedding to unit length (cosine similarity = dot product).
        """
        if pooling not in ("mean", "cls", "pooled"):
            raise ConfigError(f"pooling must be mean, cls or pooled, got {pooling!r}")
        self.check_encodes()
        # A base-head export always outputs its pooler's result, trained or not.
        pooler = isinstance(self.model, OrtModel) or self.model.bert.pooler is not None
        if pooling == "pooled" and (not pooler or not self.loaded.head_loaded):
            raise ConfigError(f"{self.source} has no trained pooler (its {self.head} head has none, or "
                              "the checkpoint lacks its weights): use pooling='mean' or 'cls'")
        single, inputs = self._encode_inputs(texts, max_seq_length)
        width = self.loaded.config.hidden_size
        if not single and not len(inputs[0]):
            return np.zeros((0, width), dtype=np.float32)

        def embed(model: nn.Module, batch: dict) -> Tensor:
            out = model.bert(**model_inputs(batch))
            if pooling == "pooled":
                return out.pooled_output
            if pooling == "cls":
                return out.sequence_output[:, 0]
            mask = batch["attention_mask"].unsqueeze(-1).to(out.sequence_output.dtype)  # (B, T, 1)
            return (out.sequence_output * mask).sum(1) / mask.sum(1)  # (B, H)

        (vectors,) = self._predict(dict(zip(("input_ids", "token_type_ids", "attention_mask"), inputs)), embed)
        if normalize:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors[0] if single else vectors

    # ---- shared --------------------------------------------------------------------------

    def _need(self, head: str, method: str, how: str) -> None:
        if self.head != head or not self.loaded.head_loaded:
            has = f"a {self.head} head" if self.loaded.head_loaded else f"no trained {self.head} head"
            raise ConfigError(f"{method}() needs a model with a trained {head} head, but {self.source} "
                              f"has {has}; fine-tune it first ({how})")

    def _encode_inputs(self, texts, max_seq_length: int | None
                       ) -> tuple[bool, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        single = isinstance(texts, (str, tuple))
        items = [texts] if single else _sequence(texts, "texts")
        texts_a: list[str] = []
        texts_b: list[str | None] = []
        for i, item in enumerate(items):
            a, b = (item if isinstance(item, tuple) and len(item) == 2 else (item, None))
            _text(a, "text", i, single, nonempty=True)
            if b is not None:
                _text(b, "text pair's second text", i, single, nonempty=True)
            texts_a.append(a)
            texts_b.append(b)
        length = self.max_seq_length if max_seq_length is None else max_seq_length
        check_argument("max_seq_length", length, int, minimum=1)
        check_seq_length(length, self.loaded.config, pair=any(b is not None for b in texts_b))
        if length < 3:
            raise ConfigError(f"max_seq_length {length} leaves no room for a text between [CLS] and [SEP]")
        inputs, _ = encode_texts(texts_a, texts_b, self.loaded.tokenizer, length)
        return single, inputs

    def _predict(self, arrays: dict[str, np.ndarray], forward, per_token: bool = False
                 ) -> tuple[np.ndarray, ...]:
        return predict(self.model, arrays, self.batch_size, self.runtime, forward, progress=False,
                       per_token=per_token)


def _classifier_logits(model: nn.Module, batch: dict) -> Tensor:
    return model(**model_inputs(batch))


def _labels(recorded: list[str] | None, task: str | None, model: nn.Module) -> list[str]:
    """Class names: those the checkpoint records (a GLUE checkpoint's file labels, "0" and "1",
    as the task names them: not_equivalent, equivalent), else those of the GLUE task it was
    trained for, else LABEL_0, LABEL_1, ... (Hugging Face's default names)."""
    count = getattr(model, "num_labels", None) or 0
    if recorded and len(recorded) == count:
        return named_labels(task, [str(x) for x in recorded])
    if task and task.startswith("glue/"):
        names = get_task(task.removeprefix("glue/")).label_names
        if names and len(names) == count:
            return list(names)
    return [f"LABEL_{i}" for i in range(count)]


def _where(what: str, i: int, single: bool) -> str:
    return what if single else f"{what} {i}"


def _text(value: object, what: str, i: int, single: bool, nonempty: bool = False) -> None:
    if not isinstance(value, str):
        raise DataError(f"{_where(what, i, single)} must be a string, got {type(value).__name__}")
    if nonempty and not value.strip():  # as the server answers it (422): nothing to classify or embed
        raise DataError(f"{_where(what, i, single)} is empty")


def _sequence(value: object, what: str) -> list:
    """The inputs of a list (or any iterable but a mapping; one string is the caller's); anything
    else, None included, is a DataError rather than a TypeError from list()."""
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes, Mapping)):
        return list(value)
    raise DataError(f"{what} must be a string or a list of strings, got {type(value).__name__}")


__all__ = ["Answer", "Classification", "Pooling", "Predictor", "load"]
