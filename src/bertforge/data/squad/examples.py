"""Reading SQuAD v1.1 and v2.0 files into examples (Google's `read_squad_examples`).

Whole-file problems (not JSON, wrong structure) raise `DataError` naming the field; one bad
question becomes a `Problem` record and is skipped (Google logs "Could not find answer" and
skips), so a long run does not crash on it. Training questions may carry several answers (the
first one is the label), so the dev file can be split into train and eval parts. SQuAD v2.0
questions marked `is_impossible` (no answer in their context, `answers: []`) are training
examples of the null answer when reading with `version_2_with_negative`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from bertforge.errors import DataError
from bertforge.fileio import read_json

logger = logging.getLogger(__name__)

# Google's reader splits words on these characters only (not on every Unicode space).
_WORD = re.compile("[^ \t\r\n\u202f]+")
# SQuAD's contexts are paragraphs of under 4,000 characters. A context of millions (a whole
# book pasted in) becomes thousands of windows for each of its questions, and memory grows with
# them (a 2.2M-character one took 7.4 GB): such a file is read, with a warning first.
LONG_CONTEXT_CHARS = 100_000


class Answer(TypedDict):
    """One answer of a question, as the SQuAD file gives it."""

    text: str
    answer_start: int


@dataclass
class SquadExample:
    """One question about one context (Google's `SquadExample`)."""

    qas_id: str
    """The question's id in the file."""
    question_text: str
    context_text: str
    doc_tokens: list[str]
    """The context's whitespace-separated words, shared by every question about it."""
    char_to_word_offset: np.ndarray
    """(len(context_text),) int32: the word each character belongs to (for whitespace: the
    word before it, -1 at the start); shared like `doc_tokens`."""
    answers: list[Answer]
    start_position: int | None = None
    """Word index of the first answer's first word; None when it cannot be located."""
    end_position: int | None = None
    """Word index of the first answer's last word; None when it cannot be located."""
    is_impossible: bool = False
    """SQuAD v2.0: the context does not answer the question (the gold answer is "")."""


@dataclass(frozen=True)
class Problem:
    """A question that was skipped, and why."""

    qas_id: str
    message: str
    """What is wrong with it, naming the answer text and offsets involved."""


def split_whitespace(text: str) -> tuple[list[str], np.ndarray]:
    """Google's `read_squad_examples` word split: the words, and char_to_word_offset
    (int32, one entry per character of `text`)."""
    matches = list(_WORD.finditer(text))
    words = [m.group() for m in matches]
    starts = np.fromiter((m.start() for m in matches), dtype=np.int64, count=len(matches))
    # Every character belongs to the last word that started at or before it.
    offsets = np.searchsorted(starts, np.arange(len(text)), side="right") - 1
    return words, offsets.astype(np.int32)


def read_squad_examples(path: str | Path, is_training: bool, articles: slice | None = None,
                        version_2_with_negative: bool = False
                        ) -> tuple[list[SquadExample], list[Problem]]:
    """Read a SQuAD v1.1 or v2.0 file into examples, plus the questions skipped as problems.

    With `is_training`, a question whose first answer cannot be found in the context at its
    `answer_start` (Google's "Could not find answer") or that has no answer is skipped, except,
    with `version_2_with_negative`, a question marked `is_impossible`: it is kept without
    positions (its label is the null answer; its answers are not read, as Google's). Without
    `is_training` every question is kept and positions are filled only where the first answer
    is found. Either way, questions about an empty context and repeated question ids are
    skipped. `is_impossible` (a JSON boolean, False when absent) is read in any case.
    `articles` keeps only those entries of the file's 'data' list (e.g. slice(0, 38)).
    """
    path = Path(path)
    data = read_json(path, "SQuAD file")
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataError(f"{path}: expected a JSON object with a 'data' list (the SQuAD format)")
    examples: list[SquadExample] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for a in range(len(data["data"]))[articles or slice(None)]:
        article = data["data"][a]
        for p, paragraph in enumerate(_field(article, "paragraphs", list, path, f"data[{a}]")):
            where = f"data[{a}].paragraphs[{p}]"
            context = _field(paragraph, "context", str, path, where)
            if len(context) > LONG_CONTEXT_CHARS:
                logger.warning("%s: %s.context has %s characters (SQuAD's paragraphs have under 4,000): "
                               "each of its questions is read in thousands of windows, and memory grows "
                               "with them; split long documents into paragraphs", path, where,
                               f"{len(context):,}")
            doc_tokens, char_to_word = split_whitespace(context)
            for q, qa in enumerate(_field(paragraph, "qas", list, path, where)):
                example, problem = _read_question(qa, context, doc_tokens, char_to_word, is_training,
                                                  version_2_with_negative, path, f"{where}.qas[{q}]")
                if problem is None and example.qas_id in seen:
                    problem = Problem(example.qas_id, "question id repeats an earlier question's id")
                if problem is not None:
                    problems.append(problem)
                    logger.debug("skipping question %s: %s", problem.qas_id, problem.message)
                    continue
                seen.add(example.qas_id)
                examples.append(example)
    if problems:
        logger.info("%s: skipped %d of %d questions (first: %s: %s)", path, len(problems),
                       len(problems) + len(examples), problems[0].qas_id, problems[0].message)
    return examples, problems


def _field(obj: Any, key: str, kind: type, path: Path, where: str) -> Any:
    if not isinstance(obj, dict):
        raise DataError(f"{path}: {where} must be a JSON object, got {type(obj).__name__}")
    if key not in obj:
        raise DataError(f"{path}: {where} has no '{key}'")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(f"{path}: {where}.{key} must be {_JSON_NAMES[kind]}, "
                        f"got {type(value).__name__}")
    return value


_JSON_NAMES = {list: "a list", str: "a string", int: "an integer"}


def _read_question(qa: Any, context: str, doc_tokens: list[str], char_to_word: np.ndarray,
                   is_training: bool, version_2_with_negative: bool, path: Path, where: str
                   ) -> tuple[SquadExample, Problem | None]:
    qas_id = _field(qa, "id", str, path, where)
    question = _field(qa, "question", str, path, where)
    is_impossible = "is_impossible" in qa and _flag(qa, "is_impossible", path, where)
    if is_training and is_impossible and version_2_with_negative:
        example = SquadExample(qas_id, question, context, doc_tokens, char_to_word, [],
                               is_impossible=True)
        return example, Problem(qas_id, "context is empty") if not doc_tokens else None
    answers: list[Answer] = []
    # Files to predict on may come without answers; training needs them.
    needs_answers = is_training or "answers" in qa
    raw_answers = _field(qa, "answers", list, path, where) if needs_answers else []
    for i, answer in enumerate(raw_answers):
        text = _field(answer, "text", str, path, f"{where}.answers[{i}]")
        start = _field(answer, "answer_start", int, path, f"{where}.answers[{i}]")
        answers.append(Answer(text=text, answer_start=start))
    example = SquadExample(qas_id, question, context, doc_tokens, char_to_word, answers,
                           is_impossible=is_impossible)
    if not doc_tokens:
        return example, Problem(qas_id, "context is empty")
    if not answers:
        if not is_training:
            return example, None
        return example, Problem(qas_id, "is unanswerable (is_impossible); SQuAD v2.0 training "
                                        "(version_2_with_negative) learns from it" if is_impossible
                                else "has no answer")
    located = _locate_answer(answers[0], context, doc_tokens, char_to_word)
    if isinstance(located, str):
        return example, Problem(qas_id, located) if is_training else None
    example.start_position, example.end_position = located
    return example, None


def _flag(obj: dict, key: str, path: Path, where: str) -> bool:
    value = obj[key]
    if not isinstance(value, bool):
        raise DataError(f"{path}: {where}.{key} must be true or false, got {value!r}")
    return value


def _locate_answer(answer: Answer, context: str, doc_tokens: list[str],
                   char_to_word: np.ndarray) -> tuple[int, int] | str:
    """Word span of an answer, or what is wrong with it. Google's check: the answer text
    (whitespace-normalised) must occur in the words its characters fall into."""
    text, start = answer["text"], answer["answer_start"]
    if not text.strip():
        return "first answer's text is empty"
    end = start + len(text) - 1
    if start < 0 or end >= len(context):
        return (f"first answer {text!r} at answer_start {start} runs outside the context "
                f"({len(context)} characters)")
    start_word, end_word = int(char_to_word[start]), int(char_to_word[end])
    actual = " ".join(doc_tokens[max(start_word, 0):end_word + 1])
    if start_word < 0 or actual.find(" ".join(text.split())) == -1:
        return (f"could not find first answer {text!r} at answer_start {start}: "
                f"the context there reads {actual!r}")
    return start_word, end_word
