"""The SQuAD settings every entry point shares: how contexts are cut into windows, how windows
are batched, and how answers are decoded (Google's run_squad.py flags and defaults).

`finetune squad` and `predict squad` (their `data` group), `bertforge serve` and the Python
API's `Predictor.answer` (keyword arguments) all take exactly these fields, so a new setting is
one field here.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from bertforge.errors import ConfigError
from bertforge.validation import check_argument, check_at_least, check_types


@dataclass(kw_only=True)
class SquadSettings:
    """Google's run_squad.py windowing and decoding settings."""

    max_seq_length: int = 384
    """Tokens per window: [CLS] question [SEP] context piece [SEP]."""
    doc_stride: int = 128
    """Tokens between the starts of consecutive context windows."""
    max_query_length: int = 64
    """Questions longer than this many tokens are cut."""
    max_tokens_per_batch: int | None = None
    """Also cap each prediction batch at this many tokens (rows x its longest window, rounded up to
    8; windows are batched by length): short windows then share bigger batches, so every batch
    costs about the same. Predictions do not change."""
    n_best_size: int = 20
    """Start and end candidates considered per window (and answers listed per question)."""
    max_answer_length: int = 30
    """Longest answer, in tokens."""
    null_score_diff_threshold: float = 0.0
    """SQuAD v2.0: predict "" when the null answer's score minus the best non-null answer's score
    exceeds this (evaluation reports the best value as best_f1_thresh)."""

    # Counts and sizes: at least 1 (when set).
    POSITIVE: ClassVar[tuple[str, ...]] = ("max_seq_length", "doc_stride", "max_query_length",
                                           "max_tokens_per_batch", "n_best_size", "max_answer_length")

    def __post_init__(self) -> None:
        check_types(self, "squad")
        check_at_least(self, 1, self.POSITIVE)
        if self.max_seq_length < self.max_query_length + 4:
            raise ConfigError(f"--max_seq_length {self.max_seq_length} leaves no room for the context after "
                              f"a question of --max_query_length {self.max_query_length} and 3 special tokens")
        if not math.isfinite(self.null_score_diff_threshold):
            raise ConfigError(f"--null_score_diff_threshold must be a finite number, "
                              f"got {self.null_score_diff_threshold}")

    @classmethod
    def from_arguments(cls, **values: Any) -> SquadSettings:
        """The settings from a Python caller's keyword arguments, each checked first with a
        message that names it as an argument (the API's `answer(..., doc_stride=64)`)."""
        hints = typing.get_type_hints(cls)
        names = [f.name for f in fields(cls)]
        for name, value in values.items():
            if name not in names:
                raise ConfigError(f"unknown SQuAD setting {name!r}; the settings are {', '.join(names)}")
            check_argument(name, value, hints[name], 1 if name in cls.POSITIVE else None)
        return cls(**values)

    @classmethod
    def of(cls, config: SquadSettings) -> SquadSettings:
        """The settings part of a config that extends them (a run's data group, ServeArgs)."""
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})

    def windows(self) -> dict[str, Any]:
        """The keyword arguments of `convert_examples_to_features` that cut the windows."""
        return {"max_seq_length": self.max_seq_length, "doc_stride": self.doc_stride,
                "max_query_length": self.max_query_length}
