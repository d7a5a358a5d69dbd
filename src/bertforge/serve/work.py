"""What each endpoint asks of the model, in the three parts the scheduler needs: `prepare` a
request (its units: /answer's windows, one per /classify or /encode text), `run` a step of
slices of several requests in one forward pass, `finish` a request from its slices' outputs.

Everything goes through the Python API's `Predictor` (`load_predictor` is the one place a
server's flags become one), so a server answers exactly as `bertforge.load(...)` does: /answer
runs the stages of the Predictor's `AnswerPipeline` (windows, logits, decoding) with the
windows of several requests in one batch; /classify and /encode call `classify` and `encode`
on the texts of several requests at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bertforge.api import Predictor
from bertforge.data.squad import SquadSettings, model_arrays
from bertforge.infer import predict
from bertforge.loading import check_seq_length
from bertforge.qa import span_logits
from bertforge.runconfig import ModelArgs
from bertforge.serve.batcher import Slice
from bertforge.serve.config import ServeArgs

ENDPOINT_HEADS = {"answer": "qa", "classify": "classification"}  # encode: any head


def load_predictor(args: ServeArgs) -> Predictor:
    """The model a server runs, loaded, with its flags checked against it. Every forward pass of
    the server goes through this Predictor: its device, precision (and engine) are the server's."""
    model = ModelArgs(init_checkpoint=args.checkpoint, bert_model=args.bert_model, vocab_file=args.vocab_file,
                      do_lower_case=args.do_lower_case)
    predictor = Predictor(model, args.runtime, batch_size=args.max_batch_size)
    check_seq_length(args.max_seq_length, predictor.loaded.config, pair=predictor.head == "qa")
    return predictor


def offered(predictor: Predictor) -> list[str]:
    """What the model can do: encode always; answer with a trained QA head, classify with a
    trained classification head."""
    return [name for name in ("answer", "classify", "encode")
            if name == "encode" or (ENDPOINT_HEADS[name] == predictor.head and predictor.loaded.head_loaded)]


@dataclass
class Prepared:
    payload: Any
    size: int  # units: sequences the model reads for this request


class AnswerWork:
    """Items (question, context) -> {"answer", "score", "start", "end"}; a unit is a window."""

    def __init__(self, predictor: Predictor, settings: SquadSettings):
        self.predictor = predictor
        self.pipeline = predictor.answer_pipeline(settings)

    def prepare(self, items: Sequence[tuple[str, str]]) -> Prepared:
        examples = self.predictor.answer_examples([q for q, _ in items], [c for _, c in items])
        features = self.pipeline.windows(examples)
        return Prepared((examples, features), len(features))

    def run(self, slices: Sequence[Slice]) -> list[tuple[np.ndarray, np.ndarray]]:
        parts = [model_arrays(s.payload[1].subset(slice(s.start, s.stop)), False) for s in slices]
        arrays = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        p = self.pipeline
        start, end = predict(p.model, arrays, p.batch_size, p.runtime, span_logits, progress=False, per_token=True,
                             max_tokens=p.settings.max_tokens_per_batch)
        bounds = np.cumsum([0] + [s.stop - s.start for s in slices])
        return [(start[a:b], end[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]

    def finish(self, prepared: Prepared, outputs: list[tuple[np.ndarray, np.ndarray]]) -> list[dict]:
        examples, features = prepared.payload
        width = features.max_seq_length
        start = np.concatenate([o[0] for o in outputs]) if outputs else np.zeros((0, width), np.float32)
        end = np.concatenate([o[1] for o in outputs]) if outputs else np.zeros((0, width), np.float32)
        found = self.pipeline.decode(examples, features, start, end)
        best = [found.chosen(e.qas_id) for e in examples]
        return [{"answer": b["text"], "score": b["probability"], "start": b["start"], "end": b["end"]} for b in best]


class TextWork:
    """Items (text,) or (text_a, text_b or None) -> one result each; a unit is a text (or pair)."""

    def __init__(self, predictor: Predictor, args: ServeArgs, endpoint: str):
        self.predictor = predictor
        self.args = args
        self.endpoint = endpoint

    def prepare(self, items: Sequence[tuple[str, ...]]) -> Prepared:
        if self.endpoint == "encode":  # refused before it is queued where the engine cannot encode
            self.predictor.check_encodes()
        texts = [item[0] if len(item) == 1 or item[1] is None else (item[0], item[1]) for item in items]
        return Prepared(texts, len(items))

    def run(self, slices: Sequence[Slice]) -> list[list[dict]]:
        texts = [text for s in slices for text in s.payload[s.start:s.stop]]
        results = self._results(texts)
        bounds = np.cumsum([0] + [s.stop - s.start for s in slices])
        return [results[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def _results(self, texts: list) -> list[dict]:
        a = self.args
        if self.endpoint == "classify":
            return [{"label": c.label, "score": c.score, "probabilities": c.probabilities}
                    for c in self.predictor.classify(texts, max_seq_length=a.max_seq_length)]
        vectors = self.predictor.encode(texts, pooling=a.pooling, normalize=a.normalize,
                                        max_seq_length=a.max_seq_length)
        return [{"embedding": v.tolist()} for v in vectors]

    def finish(self, prepared: Prepared, outputs: list[list[dict]]) -> list[dict]:
        return [result for part in outputs for result in part]


def works(predictor: Predictor, args: ServeArgs) -> dict[str, AnswerWork | TextWork]:
    """The work of each endpoint this model offers."""
    made: dict[str, AnswerWork | TextWork] = {}
    for name in offered(predictor):
        made[name] = (AnswerWork(predictor, SquadSettings.of(args)) if name == "answer"
                      else TextWork(predictor, args, name))
    return made


def warm_up(made: dict[str, AnswerWork | TextWork]) -> None:
    """One request of each kind, so that the first client does not wait for lazy initialisation
    (and, where the runtime compiles, compilation); not of encode where the engine's export
    cannot encode (each request then says why)."""
    for name, work in made.items():
        if name == "encode" and not work.predictor.encodes:
            continue
        item = ("Who?", "Nobody.") if name == "answer" else ("Nobody.", None)
        prepared = work.prepare([item])
        work.finish(prepared, list(work.run([Slice(prepared.payload, 0, prepared.size)])))
