"""Extractive question answering, one pipeline for every entry point: SQuAD questions ->
doc-stride windows -> start/end logits of the model -> n-best answers.

`finetune squad` / `predict squad` (files), the Python API's `Predictor.answer` (and through it
`predict squad --question`, `--input_jsonl` and `bertforge serve`) all run `AnswerPipeline`, with
the same `SquadSettings`; only where the questions come from differs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor, nn

from bertforge.data import squad as data
from bertforge.data.squad import SquadExample, SquadFeatures, SquadSettings, model_arrays
from bertforge.infer import InferenceStats, predict_timed
from bertforge.loading import model_inputs
from bertforge.tokenization import WordPieceTokenizer
from bertforge.train.runtime import Runtime


def span_logits(model: nn.Module, batch: dict) -> tuple[Tensor, Tensor]:
    """Start/end logits with padding positions at -inf: answers never start or end in padding,
    and the softmax does not depend on how much padding a batch carries."""
    start, end = model(**model_inputs(batch))
    pad = batch["attention_mask"] == 0
    return start.float().masked_fill(pad, float("-inf")), end.float().masked_fill(pad, float("-inf"))


@dataclass
class Answers:
    """What decoding gives, by question id."""

    predictions: dict[str, str]
    """The answer text."""
    nbest: dict[str, list[dict[str, Any]]]
    """The n-best list: text, probability, start_logit, end_logit, start, end (character
    offsets in the context)."""
    null_odds: dict[str, float] | None
    """SQuAD v2.0 decoding: the null answer's score minus the best span's; None for v1.1."""

    def chosen(self, qas_id: str) -> dict[str, Any]:
        """The n-best entry of the prediction (v2.0 may pick "" or the best non-null text)."""
        return next(b for b in self.nbest[qas_id] if b["text"] == self.predictions[qas_id])


class AnswerPipeline:
    """The three stages, each callable alone (a task builds the windows once and scores them at
    every evaluation; under torchrun every rank computes logits, rank 0 decodes).

    allow_no_answer: SQuAD v2.0 decoding (the null answer "" competes with the spans)."""

    def __init__(self, model: nn.Module, tokenizer: WordPieceTokenizer, settings: SquadSettings,
                 runtime: Runtime, batch_size: int, allow_no_answer: bool):
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.runtime = runtime
        self.batch_size = batch_size
        self.allow_no_answer = allow_no_answer

    def windows(self, examples: Sequence[SquadExample], is_training: bool = False,
                progress: bool = False) -> SquadFeatures:
        """The doc-stride windows of `examples` (with gold positions when `is_training`)."""
        return data.convert_examples_to_features(examples, self.tokenizer, is_training=is_training,
                                                 progress=progress and self.runtime.is_main,
                                                 **self.settings.windows())

    def logits(self, features: SquadFeatures, progress: bool = False
               ) -> tuple[tuple[np.ndarray, np.ndarray], InferenceStats]:
        """(start, end) logits, (N, T) each, on every rank, and how fast they came."""
        if not len(features):  # no context had a single WordPiece token: every answer is ""
            empty = np.zeros((0, features.max_seq_length), dtype=np.float32)
            return (empty, empty), InferenceStats(0, 0, 0.0, [])
        (start, end), stats = predict_timed(self.model, model_arrays(features, False), self.batch_size,
                                            self.runtime, span_logits, desc="predict", progress=progress,
                                            per_token=True, max_tokens=self.settings.max_tokens_per_batch)
        return (start, end), stats

    def decode(self, examples: Sequence[SquadExample], features: SquadFeatures, start: np.ndarray,
               end: np.ndarray, progress: bool = False) -> Answers:
        """Google's n-best decoding of every example's windows."""
        s = self.settings
        if self.allow_no_answer:
            return Answers(*data.postprocess_v2(examples, features, start, end, s.n_best_size,
                                                s.max_answer_length, s.null_score_diff_threshold,
                                                progress=progress))
        return Answers(*data.postprocess(examples, features, start, end, s.n_best_size, s.max_answer_length,
                                         progress=progress), None)

    def __call__(self, examples: Sequence[SquadExample]) -> Answers:
        """All three stages, quietly (one process)."""
        features = self.windows(examples)
        (start, end), _ = self.logits(features)
        return self.decode(examples, features, start, end)


__all__ = ["AnswerPipeline", "Answers", "span_logits"]
