"""GLUE examples as model inputs: `[CLS] a [SEP] (b [SEP])`, truncated as Google's
`run_classifier.py`, with label ids."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from bertforge.data.glue.reading import GlueExample
from bertforge.data.glue.tasks import GlueTask, get_task
from bertforge.errors import ConfigError, DataError
from bertforge.tokenization import WordPieceTokenizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class GlueFeatures:
    """Model inputs of N examples padded to L = max_seq_length.

    input_ids, token_type_ids, attention_mask: (N, L) int64. labels: (N,) int64 class ids,
    (N,) float32 scores for STS-B, or None when the examples are unlabelled. guids: N strings.
    """

    input_ids: np.ndarray
    token_type_ids: np.ndarray
    attention_mask: np.ndarray
    labels: np.ndarray | None
    guids: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.guids)


def truncate_pair_lengths(len_a: int, len_b: int, max_total: int) -> tuple[int, int]:
    """Lengths kept by Google's `_truncate_seq_pair`: pop the last token of the longer text, of
    text b on a tie, until both fit in `max_total` tokens."""
    while len_a + len_b > max_total:
        if len_a > len_b:
            len_a -= 1
        else:
            len_b -= 1
    return len_a, len_b


def encode_examples(examples: Sequence[GlueExample], tokenizer: WordPieceTokenizer,
                    max_seq_length: int, task: str | GlueTask) -> GlueFeatures:
    """`[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]`, truncated as Google's `run_classifier.py`.

    Single texts keep their first max_seq_length - 2 tokens; pairs share max_seq_length - 3
    as `truncate_pair_lengths` does.
    """
    t = get_task(task)
    specials = 3 if t.is_pair else 2
    if max_seq_length < specials:
        raise ConfigError(f"max_seq_length {max_seq_length} leaves no room for the "
                          f"{specials} special tokens of GLUE {t.glue_name}")
    _check_texts(t, examples)
    inputs, truncated = encode_texts([e.text_a for e in examples],
                                     [e.text_b for e in examples] if t.is_pair else None,
                                     tokenizer, max_seq_length)
    if truncated:
        logger.info("GLUE %s: truncated %d text(s) of %d examples to max_seq_length %d",
                    t.glue_name, truncated, len(examples), max_seq_length)
    return GlueFeatures(*inputs, _label_array(t, examples), tuple(e.guid for e in examples))


def encode_texts(texts_a: Sequence[str], texts_b: Sequence[str | None] | None,
                 tokenizer: WordPieceTokenizer, max_seq_length: int
                 ) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], int]:
    """Texts (or pairs, where texts_b[i] is not None) as `[CLS] a [SEP] (b [SEP])` model inputs:
    input_ids, token_type_ids, attention_mask, each (N, max_seq_length) int64, and how many
    texts were cut. Single texts keep their first max_seq_length - 2 tokens; pairs share
    max_seq_length - 3 as `truncate_pair_lengths` does."""
    ids_a = tokenizer.ids_batch(texts_a)
    has_b = [i for i, b in enumerate(texts_b or ()) if b is not None]
    ids_b: list[list[int] | None] = [None] * len(texts_a)
    for i, ids in zip(has_b, tokenizer.ids_batch([texts_b[i] for i in has_b])):
        ids_b[i] = ids
    n = len(texts_a)
    input_ids = np.full((n, max_seq_length), tokenizer.pad_id, dtype=np.int64)
    token_type_ids = np.zeros((n, max_seq_length), dtype=np.int64)
    attention_mask = np.zeros((n, max_seq_length), dtype=np.int64)
    truncated = 0
    for i, (a, b) in enumerate(zip(ids_a, ids_b)):
        if b is None:
            keep_a = min(len(a), max_seq_length - 2)
        else:
            keep_a, keep_b = truncate_pair_lengths(len(a), len(b), max_seq_length - 3)
            truncated += keep_b < len(b)
            b = b[:keep_b]
        truncated += keep_a < len(a)
        ids, segments = tokenizer.build_pair(a[:keep_a], b)
        input_ids[i, :len(ids)] = ids
        token_type_ids[i, :len(ids)] = segments
        attention_mask[i, :len(ids)] = 1
    return (input_ids, token_type_ids, attention_mask), truncated


def _check_texts(task: GlueTask, examples: Sequence[GlueExample]) -> None:
    if not examples:
        raise DataError(f"GLUE {task.glue_name}: no examples to encode")
    for e in examples:
        if task.is_pair and e.text_b is None:
            raise DataError(f"GLUE {task.glue_name} example {e.guid}: the task takes a text "
                            f"pair but text_b is missing")


def _label_array(task: GlueTask, examples: Sequence[GlueExample]) -> np.ndarray | None:
    """(N,) int64 label ids or float32 scores; None when no example has a label."""
    labelled = [e.label is not None for e in examples]
    if not any(labelled):
        return None
    if not all(labelled):
        guid = examples[labelled.index(False)].guid
        raise DataError(f"GLUE {task.glue_name}: example {guid} has no label while others do")
    if task.labels is None:
        return np.array([e.label for e in examples], dtype=np.float32)
    index = {name: i for i, name in enumerate(task.labels)}
    ids = []
    for e in examples:
        if e.label not in index:
            raise DataError(f"GLUE {task.glue_name} example {e.guid}: label {e.label!r} is not "
                            f"one of {list(task.labels)}")
        ids.append(index[e.label])
    return np.array(ids, dtype=np.int64)
