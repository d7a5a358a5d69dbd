"""Reading GLUE files.

Files are read the way GLUE ships them: UTF-8 with an optional byte-order mark (MRPC's files
start with one), one row a line ended by LF or CRLF (the last line may lack it; a file with
old Mac CR-only line ends reads too), fields split on tabs with NO quote processing (GLUE's
texts contain bare `"` that a CSV quote parser would swallow, joining rows). Columns are found
by their header name where a file has a header and by position where it has none (CoLA's train
and dev). A file is labelled when its header names the task's label column, so GLUE's unlabelled
test files (an `index` column, no label) and labelled test files (MRPC's original
`msr_paraphrase_test.txt`) both read; MRPC's original `msr_paraphrase_{train,test}.txt` share
GLUE's MRPC header and need no option.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from bertforge.data.glue.tasks import GlueTask, get_task
from bertforge.errors import DataError

logger = logging.getLogger(__name__)

# How many line numbers a warning about skipped rows names before it says "...".
_MAX_LINES_NAMED = 20
# How many characters of a header line an error message shows.
_MAX_HEADER_SHOWN = 200


@dataclass(frozen=True, slots=True)
class GlueExample:
    """One row. `label` is the label name (str), the STS-B score (float), or None in a test file."""

    guid: str
    text_a: str
    text_b: str | None
    label: str | float | None



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
