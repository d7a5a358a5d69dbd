"""Raw text on the command line: `predict squad --question ... --context ...`, and JSON lines in,
JSON lines out, for `predict squad` and `predict glue`, through the Python API (`bertforge.api`),
which this module sits above.

Every input line is read and checked before the model is loaded, so a bad line 9,000 fails at
once, naming its line; then records are predicted in chunks and written as they go.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from bertforge.api import Predictor
from bertforge.data.squad import SquadSettings
from bertforge.errors import ConfigError, DataError

if TYPE_CHECKING:
    from bertforge.tasks.config import GlueEvalRun, SquadPredictRun

# Records predicted per chunk: big enough for full batches, small enough to show progress.
CHUNK = 512
STDIO = "-"


def read_jsonl(source: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> list[dict]:
    """The records of a JSON-lines file ('-': standard input): one JSON object a line, blank lines
    skipped. Each needs the string fields `required` (not blank) and may have the string fields
    `optional` and an "id" (a string or number; default: its line number)."""
    name = "<stdin>" if source == STDIO else source
    records = []
    with _open_input(source) as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                raise DataError(f"{name}:{line_no}: not UTF-8 text ({e.reason} at byte {e.start})") from None
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{name}:{line_no}: not valid JSON ({e.msg} at column {e.colno}); "
                                f"expected one JSON object a line") from None
            records.append(_checked(record, f"{name}:{line_no}", required, optional, line_no))
    if not records:
        raise DataError(f"{name}: no records; expected one JSON object a line with "
                        f"{', '.join(repr(k) for k in required)}")
    return records


def _checked(record: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...],
             default_id: int) -> dict:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key in required + optional:
        if key not in record or (key in optional and record[key] is None):
            if key in required:
                raise DataError(f"{where}: no {key!r} field (each line needs {', '.join(map(repr, required))})")
            continue
        if not isinstance(record[key], str):
            raise DataError(f"{where}: {key!r} must be a string, got {type(record[key]).__name__}")
        if not record[key].strip():
            raise DataError(f"{where}: {key!r} is empty")
    qid = record.get("id", default_id)
    if not isinstance(qid, (str, int)) or isinstance(qid, bool):
        raise DataError(f"{where}: 'id' must be a string or an integer, got {type(qid).__name__}")
    return {**{k: record.get(k) for k in required + optional}, "id": qid}


@contextmanager
def _open_input(source: str) -> Iterator[IO[bytes]]:
    """Bytes, decoded line by line, so that a bad byte is reported at its line."""
    if source == STDIO:
        yield sys.stdin.buffer
        return
    path = Path(source)
    if not path.is_file():
        raise DataError(f"input file not found: {path}")
    with path.open("rb") as f:
        yield f


@contextmanager
def _open_output(target: str | None) -> Iterator[IO[str]]:
    if target in (None, STDIO):
        yield sys.stdout
        return
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        yield f


def _chunks(records: list[dict]) -> Iterator[list[dict]]:
    for i in range(0, len(records), CHUNK):
        yield records[i:i + CHUNK]


def _write(out: IO[str], record: dict) -> None:
    out.write(json.dumps(record, ensure_ascii=False) + "\n")


def _predictor(cfg: SquadPredictRun | GlueEvalRun, batch_size: int) -> Predictor:
    return Predictor(cfg.model, cfg.runtime, batch_size=batch_size)


# ---- SQuAD ---------------------------------------------------------------------------------


def answer_run(cfg: SquadPredictRun) -> int:
    """`predict squad` with --question/--context or --input_jsonl (a SquadPredictRun)."""
    d = cfg.data
    if cfg.input_jsonl and (cfg.question is not None or cfg.context is not None):
        raise ConfigError("give --question/--context or --input_jsonl, not both")
    if d.predict_file:
        raise ConfigError("give --predict_file (a SQuAD file) or raw text (--question/--context, "
                          "--input_jsonl), not both")
    if cfg.input_jsonl:
        records = read_jsonl(cfg.input_jsonl, ("question", "context"))
    else:
        if cfg.question is None or cfg.context is None:
            raise ConfigError("--question needs --context (the text to find the answer in), and "
                              "--context needs --question")
        records = [_checked({"question": cfg.question, "context": cfg.context}, "--question/--context",
                            ("question", "context"), (), 1)]
    settings = SquadSettings.of(d)
    # v2.0 decoding when asked for, else as the checkpoint was fine-tuned
    allow_no_answer = True if d.version_2_with_negative else None
    predictor = _predictor(cfg, d.predict_batch_size)
    with _open_output(cfg.output_jsonl) as out:
        for chunk in _chunks(records):
            answers = predictor.answer([r["question"] for r in chunk], [r["context"] for r in chunk],
                                       settings=settings, allow_no_answer=allow_no_answer)
            for record, a in zip(chunk, answers):
                fields = {"answer": a.text, "score": a.score, "start": a.start, "end": a.end}
                _write(out, fields if cfg.input_jsonl is None else {"id": record["id"], **fields})
            out.flush()
    return 0


# ---- GLUE ----------------------------------------------------------------------------------


def classify_run(cfg: GlueEvalRun) -> int:
    """`predict glue` / `evaluate glue` with --input_jsonl (a GlueEvalRun)."""
    if cfg.do_eval or cfg.data.data_dir:
        raise ConfigError("--input_jsonl classifies texts without labels: run `bertforge predict glue` "
                          "without --data_dir and --do_eval")
    if cfg.data.label_order is not None:
        raise ConfigError("--label_order reorders a head for the task's files; --input_jsonl reports the "
                          "checkpoint's outputs under its own label names: leave one out")
    records = read_jsonl(cfg.input_jsonl, ("text_a",), ("text_b",))
    predictor = _predictor(cfg, cfg.data.eval_batch_size)
    with _open_output(cfg.output_jsonl) as out:
        for chunk in _chunks(records):
            texts = [r["text_a"] if r["text_b"] is None else (r["text_a"], r["text_b"]) for r in chunk]
            for record, c in zip(chunk, predictor.classify(texts, max_seq_length=cfg.data.max_seq_length)):
                _write(out, {"id": record["id"], "label": c.label, "score": c.score,
                             "probabilities": c.probabilities})
            out.flush()
    return 0
