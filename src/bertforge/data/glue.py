"""GLUE: the nine tasks, their files as GLUE distributes them, model features and submissions.

Files are read the way GLUE ships them: UTF-8 with an optional byte-order mark (MRPC's files
start with one), one row a line ended by LF or CRLF (the last line may lack it; a file with
old Mac CR-only line ends reads too), fields split on tabs with NO quote processing (GLUE's
texts contain bare `"` that a CSV quote parser would swallow, joining rows). Columns are found by their header name where a file has a header and by
position where it has none (CoLA's train and dev). A file is labelled when its header names the
task's label column, so GLUE's unlabelled test files (an `index` column, no label) and labelled
test files (MRPC's original `msr_paraphrase_test.txt`) both read; MRPC's original
`msr_paraphrase_{train,test}.txt` share GLUE's MRPC header and need no option.

Label ids follow the label order of Google's BERT `run_classifier.py` and Hugging Face's GLUE
processors (MNLI: contradiction, entailment, neutral), so heads trained by either line up.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Literal, Sequence

import numpy as np

from bertforge.errors import ConfigError, DataError
from bertforge.fileio import atomic_write_text
from bertforge.tokenization import WordPieceTokenizer

logger = logging.getLogger(__name__)

SplitKind = Literal["train", "dev", "test"]

# How many line numbers a warning about skipped rows names before it says "...".
_MAX_LINES_NAMED = 20
# How many characters of a header line an error message shows.
_MAX_HEADER_SHOWN = 200


@dataclass(frozen=True)
class GlueSplit:
    """One file of a task. `submission_file` is the leaderboard file name of a test split."""

    name: str
    kind: SplitKind
    file: str
    submission_file: str | None = None

    @property
    def labelled(self) -> bool:
        """Whether GLUE ships labels in this file (its test files have none)."""
        return self.kind != "test"


@dataclass(frozen=True)
class HeaderlessLayout:
    """Column positions (0-based) in a file without a header line: CoLA's train and dev."""

    n_columns: int
    text_a: int
    label: int


@dataclass(frozen=True)
class GlueTask:
    """A GLUE task: where its files are, which columns hold what, and how it is scored.

    Columns are named as in the header lines of GLUE's files. `labels` is None for STS-B,
    a regression task. `metrics` are the keys `bertforge.evaluate.glue.compute_metrics` returns.
    """

    name: str
    glue_name: str
    labels: tuple[str, ...] | None
    text_a: str
    text_b: str | None
    label_column: str
    index_column: str
    splits: tuple[GlueSplit, ...]
    metrics: tuple[str, ...]
    headerless: HeaderlessLayout | None = None
    # QQP's real train/dev files hold a few rows broken by a newline inside a question; they
    # are skipped (see `_read_rows`). Every other task treats such a row as an error.
    skip_malformed_rows: bool = False

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        """Width of the classifier output: the number of classes, 1 for regression."""
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_pair(self) -> bool:
        return self.text_b is not None

    def split(self, name: str) -> GlueSplit:
        for s in self.splits:
            if s.name == name:
                return s
        raise ConfigError(f"GLUE task {self.name} has no split {name!r}; "
                          f"valid splits: {', '.join(s.name for s in self.splits)}")

    def splits_of(self, kind: SplitKind) -> tuple[GlueSplit, ...]:
        """The splits of one kind: MNLI has two dev and two test splits, every other task one."""
        return tuple(s for s in self.splits if s.kind == kind)


def _standard_splits(glue_name: str) -> tuple[GlueSplit, ...]:
    return (GlueSplit("train", "train", "train.tsv"),
            GlueSplit("dev", "dev", "dev.tsv"),
            GlueSplit("test", "test", "test.tsv", f"{glue_name}.tsv"))


_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")

TASKS: MappingProxyType[str, GlueTask] = MappingProxyType({t.name: t for t in (
    GlueTask("cola", "CoLA", _BINARY, "sentence", None, "label", "index",
             _standard_splits("CoLA"), ("mcc",),
             # Train/dev columns: source, label, original acceptability mark, sentence.
             headerless=HeaderlessLayout(n_columns=4, text_a=3, label=1)),
    GlueTask("sst2", "SST-2", _BINARY, "sentence", None, "label", "index",
             _standard_splits("SST-2"), ("accuracy",)),
    GlueTask("mrpc", "MRPC", _BINARY, "#1 String", "#2 String", "Quality", "index",
             _standard_splits("MRPC"), ("accuracy", "f1")),
    GlueTask("stsb", "STS-B", None, "sentence1", "sentence2", "score", "index",
             _standard_splits("STS-B"), ("pearson", "spearman")),
    GlueTask("qqp", "QQP", _BINARY, "question1", "question2", "is_duplicate", "id",
             _standard_splits("QQP"), ("accuracy", "f1"), skip_malformed_rows=True),
    GlueTask("mnli", "MNLI", ("contradiction", "entailment", "neutral"), "sentence1",
             "sentence2", "gold_label", "index",
             (GlueSplit("train", "train", "train.tsv"),
              GlueSplit("dev_matched", "dev", "dev_matched.tsv"),
              GlueSplit("dev_mismatched", "dev", "dev_mismatched.tsv"),
              GlueSplit("test_matched", "test", "test_matched.tsv", "MNLI-m.tsv"),
              GlueSplit("test_mismatched", "test", "test_mismatched.tsv", "MNLI-mm.tsv")),
             ("accuracy",)),
    GlueTask("qnli", "QNLI", _NLI2, "question", "sentence", "label", "index",
             _standard_splits("QNLI"), ("accuracy",)),
    GlueTask("rte", "RTE", _NLI2, "sentence1", "sentence2", "label", "index",
             _standard_splits("RTE"), ("accuracy",)),
    GlueTask("wnli", "WNLI", _BINARY, "sentence1", "sentence2", "label", "index",
             _standard_splits("WNLI"), ("accuracy",)),
)})


def _canonical(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def get_task(name: str | GlueTask) -> GlueTask:
    """The task for "mrpc", "MRPC", "SST-2", "sts-b", ... (case, '-' and '_' are ignored)."""
    if isinstance(name, GlueTask):
        return name
    task = TASKS.get(_canonical(name))
    if task is None:
        glue_names = ", ".join(t.glue_name for t in TASKS.values())
        raise ConfigError(f"unknown GLUE task {name!r}; valid tasks: {', '.join(TASKS)} "
                          f"(or their GLUE names: {glue_names})")
    return task


@dataclass(frozen=True, slots=True)
class GlueExample:
    """One row. `label` is the label name (str), the STS-B score (float), or None in a test file."""

    guid: str
    text_a: str
    text_b: str | None
    label: str | float | None


# ---------------------------------------------------------------------------------------------
# Reading


def read_split(task: str | GlueTask, data_dir: str | Path, split: str) -> list[GlueExample]:
    """Read one split. `data_dir` is GLUE's root folder (holding `MRPC/`, ...) or the task's own.

    Train and dev files must be labelled; a test file may be either.
    """
    t = get_task(task)
    s = t.split(split)
    root = Path(data_dir)
    candidates = (root / t.glue_name / s.file, root / s.file)
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise DataError(f"GLUE {t.glue_name} {s.name} file not found: looked for "
                        f"{candidates[0]} and {candidates[1]}")
    return read_file(t, path, require_labels=s.labelled)


def read_file(task: str | GlueTask, path: str | Path, require_labels: bool = False
              ) -> list[GlueExample]:
    """Read one GLUE file of `task` (any split, or MRPC's `msr_paraphrase_*.txt`).

    The guid is the row's value in the task's index column where the file has one (GLUE's test
    files: the index a submission must use), else "<file stem>-<row number from 0>".
    """
    t = get_task(task)
    path = Path(path)
    lines = _read_lines(path)
    if not lines:
        raise DataError(f"{path}: file is empty; expected a GLUE {t.glue_name} file")
    first_no, first = lines[0]
    header = first.split("\t")
    if t.text_a in header:
        examples = _examples_with_header(t, path, header, lines[1:], require_labels)
    elif t.headerless is not None:
        examples = _examples_headerless(t, path, lines)
    else:
        raise DataError(
            f"{path}:{first_no}: expected a GLUE {t.glue_name} header naming the columns "
            f"{', '.join(repr(c) for c in _text_columns(t))}; found {_shown(header)}")
    if not examples:
        raise DataError(f"{path}: no data rows")
    return examples


def _text_columns(task: GlueTask) -> tuple[str, ...]:
    return (task.text_a,) if task.text_b is None else (task.text_a, task.text_b)


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, text) of the non-blank lines, line ends and a leading BOM removed.

    Lines end at LF (CRLF's CR is dropped), so a stray CR inside a text stays in the text. A
    file without any LF but with CRs has old Mac line ends: each CR ends a line, as Python's
    universal newlines (and so Hugging Face's GLUE readers) read it. Blank lines carry no row
    and are left out.
    """
    if not path.is_file():
        raise DataError(f"GLUE file not found: {path}")
    data = path.read_bytes()
    line_end = b"\n"
    if b"\n" not in data and b"\r" in data:
        logger.info("%s: line ends are CR only (old Mac style); reading each CR as a line end",
                    path)
        line_end = b"\r"
    lines = []
    for line_no, raw in enumerate(data.split(line_end), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}:{line_no}: not valid UTF-8 ({e.reason} at byte "
                            f"{e.start} of the line)") from None
        if line_no == 1:
            text = text.removeprefix("\ufeff")
        text = text.removesuffix("\r")
        if text:
            lines.append((line_no, text))
    return lines


def _shown(header: list[str]) -> str:
    """A header for an error message, cut short: a file whose lines do not end where expected
    is one long line, which must not fill the message."""
    text = repr(header)
    return text if len(text) <= _MAX_HEADER_SHOWN else (
        f"{text[:_MAX_HEADER_SHOWN]}... ({len(text)} characters)")


def _examples_with_header(task: GlueTask, path: Path, header: list[str],
                          lines: list[tuple[int, str]], require_labels: bool
                          ) -> list[GlueExample]:
    missing = [c for c in _text_columns(task) if c not in header]
    if missing:
        raise DataError(f"{path}:1: header lacks the column(s) {missing}; "
                        f"found {_shown(header)}")
    labelled = task.label_column in header
    if require_labels and not labelled:
        raise DataError(f"{path}:1: expected a label column {task.label_column!r} in the "
                        f"header; found {_shown(header)}")
    col_a = header.index(task.text_a)
    col_b = header.index(task.text_b) if task.text_b is not None else None
    col_label = header.index(task.label_column) if labelled else None
    col_index = header.index(task.index_column) if task.index_column in header else None
    examples = []
    for row_no, (line_no, fields) in enumerate(_read_rows(task, path, lines, len(header))):
        examples.append(GlueExample(
            guid=fields[col_index] if col_index is not None else f"{path.stem}-{row_no}",
            text_a=fields[col_a],
            text_b=fields[col_b] if col_b is not None else None,
            label=_parse_label(task, path, line_no, fields[col_label])
            if col_label is not None else None))
    return examples


def _examples_headerless(task: GlueTask, path: Path, lines: list[tuple[int, str]]
                         ) -> list[GlueExample]:
    layout = task.headerless
    assert layout is not None
    return [GlueExample(guid=f"{path.stem}-{row_no}", text_a=fields[layout.text_a], text_b=None,
                        label=_parse_label(task, path, line_no, fields[layout.label]))
            for row_no, (line_no, fields)
            in enumerate(_read_rows(task, path, lines, layout.n_columns))]


def _read_rows(task: GlueTask, path: Path, lines: list[tuple[int, str]], n_columns: int
               ) -> list[tuple[int, list[str]]]:
    """Split lines on tabs; a row with another number of fields is an error, except in QQP.

    QQP: GLUE's train.tsv and dev.tsv hold a few rows that a newline inside a question broke in
    two lines, each with too few fields. Hugging Face `datasets` and TFDS drop them ("Filter out
    corrupted rows") and Hugging Face's published QQP sizes (363,846 / 40,430) count without
    them; Google's BERT has no QQP reader. Dropping them keeps our sizes equal to the sizes
    everyone reports, and the warning names every line dropped so the loss is never silent.
    """
    rows, skipped = [], []
    for line_no, text in lines:
        fields = text.split("\t")
        if len(fields) == n_columns:
            rows.append((line_no, fields))
        elif task.skip_malformed_rows:
            skipped.append(line_no)
        else:
            raise DataError(f"{path}:{line_no}: expected {n_columns} tab-separated fields, "
                            f"found {len(fields)}")
    if skipped:
        named = ", ".join(map(str, skipped[:_MAX_LINES_NAMED]))
        more = ", ..." if len(skipped) > _MAX_LINES_NAMED else ""
        logger.warning("%s: skipped %d malformed row(s) without %d fields (known defect of "
                       "GLUE %s) at line(s) %s%s", path, len(skipped), n_columns,
                       task.glue_name, named, more)
    return rows


def _parse_label(task: GlueTask, path: Path, line_no: int, raw: str) -> str | float:
    if task.labels is None:
        try:
            score = float(raw)
        except ValueError:
            score = math.nan
        if not math.isfinite(score):
            raise DataError(f"{path}:{line_no}: expected a finite {task.label_column} number, "
                            f"found {raw!r}")
        return score
    if raw not in task.labels:
        raise DataError(f"{path}:{line_no}: label {raw!r} is not one of {list(task.labels)}")
    return raw


# ---------------------------------------------------------------------------------------------
# Features


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


# ---------------------------------------------------------------------------------------------
# Predictions and submissions


def prediction_ids(task: str | GlueTask, predictions: Sequence | np.ndarray) -> np.ndarray:
    """Predictions as (N,) int64 class ids or, for STS-B, (N,) float64 scores.

    Accepts class ids (N,), logits (N, C) (argmax is taken), and for STS-B scores (N,) or (N, 1).
    """
    t = get_task(task)
    arr = np.asarray(predictions)
    if t.labels is None:
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.number):
            raise DataError(f"GLUE {t.glue_name}: expected (N,) or (N, 1) numeric scores, got "
                            f"an array of shape {arr.shape} and dtype {arr.dtype}")
        return arr.astype(np.float64)
    if arr.ndim == 2:
        if arr.shape[1] != len(t.labels):
            raise DataError(f"GLUE {t.glue_name}: logits have {arr.shape[1]} columns; expected "
                            f"{len(t.labels)} (one per label {list(t.labels)})")
        arr = arr.argmax(axis=1)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"GLUE {t.glue_name}: expected (N,) integer class ids or (N, C) logits, "
                        f"got an array of shape {arr.shape} and dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= len(t.labels)):
        raise DataError(f"GLUE {t.glue_name}: class ids must lie in [0, {len(t.labels)}); "
                        f"found {arr.min()}..{arr.max()}")
    return arr.astype(np.int64)


def write_submission(path_or_dir: str | Path, task: str | GlueTask,
                     predictions: Sequence | np.ndarray, split: str = "test",
                     indices: Sequence[str | int] | None = None) -> Path:
    """Write a GLUE leaderboard file `index<TAB>prediction`, atomically; return its path.

    `path_or_dir` ending in ".tsv" is the file; anything else is a folder (created) that gets
    GLUE's file name (MRPC.tsv, MNLI-m.tsv, ...). Predictions are as `prediction_ids` accepts;
    class ids are written as label names, STS-B scores clipped to [0, 5]. `indices` defaults to
    0..N-1, the `index` column of every GLUE test file; pass the examples' guids to copy them.
    """
    t = get_task(task)
    s = t.split(split)
    if s.submission_file is None:
        test_names = ", ".join(x.name for x in t.splits_of("test"))
        raise ConfigError(f"GLUE submissions are made for test splits ({test_names}), "
                          f"not {split!r}")
    values = prediction_ids(t, predictions)
    if indices is None:
        indices = range(len(values))
    elif len(indices) != len(values):
        raise DataError(f"GLUE {t.glue_name}: {len(indices)} indices for {len(values)} "
                        f"predictions")
    if t.labels is None:
        names = [repr(float(v)) for v in np.clip(values, 0.0, 5.0)]
    else:
        names = [t.labels[v] for v in values]
    target = Path(path_or_dir)
    if target.suffix != ".tsv":
        target = target / s.submission_file
    lines = ["index\tprediction\n"] + [f"{i}\t{name}\n" for i, name in zip(indices, names)]
    atomic_write_text(target, "".join(lines))
    return target
