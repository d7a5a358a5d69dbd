"""Reading the corpus: input files, their documents in bounded pieces, and the held-out choice.

Two layouts, chosen per file: JSON lines with a string `text` field (one document a line,
paragraphs separated by newlines) and plain text (one or more sentences a line, a blank line
between documents). Every line is handed on in pieces of at most `MAX_LINE_CHARS` characters,
cut at whitespace, and a document longer than `max_chars` is cut into several: text without
blank lines or sentence punctuation never reaches the sentence splitter, the tokenizer or a
worker in one piece larger than these bounds. A plain-text line is read that way too; a JSON
line is parsed whole (a JSON value cannot be split), then cut.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from bertforge.errors import DataError

logger = logging.getLogger(__name__)

SPLITS = ("train", "held_out")
JSON_SUFFIXES = (".jsonl", ".json")
# The longest piece of a line passed on. Far above a real paragraph (Wikipedia's longest run to
# a few thousand characters), so that cuts only happen in text without line breaks; a cut there
# moves a sentence boundary, which BERT's segments tolerate.
MAX_LINE_CHARS = 1 << 16


@dataclass(slots=True)
class Document:
    """One document, or one part of a document longer than the reader's `max_chars`."""

    lines: list[str]
    """Its non-blank lines (pieces of lines, for lines longer than MAX_LINE_CHARS), stripped."""
    nbytes: int
    """Bytes of the input file read for it (for progress)."""
    continued: bool = False
    """True when this is a further part of a cut document (it stays in the first part's split)."""


def resolve_input_files(spec: str | Sequence[str]) -> list[Path]:
    """Files named by a comma-separated string or list of files, globs and directories."""
    items = spec.split(",") if isinstance(spec, str) else [str(s) for s in spec]
    files: list[Path] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        path = Path(item)
        if path.is_dir():
            files += _files_under(path)
        elif path.is_file():
            files.append(path)
        elif any(c in item for c in "*?["):
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True))
            files += [f for m in matches for f in (_files_under(m) if m.is_dir() else [m])]
        else:
            raise DataError(f"input_file: {item} does not exist")
    unique = list(dict.fromkeys(files))
    if not unique:
        raise DataError(f"input_file: {spec!r} names no files")
    return unique


def _files_under(directory: Path) -> list[Path]:
    return sorted(f for f in directory.rglob("*") if f.is_file()
                  and not any(p.startswith(".") for p in f.relative_to(directory).parts))


def is_json_lines(path: Path) -> bool:
    """JSON lines by extension, else by a first non-blank line that is an object with 'text'."""
    if path.suffix.lower() in JSON_SUFFIXES:
        return True
    with path.open("rb") as f:
        while raw := f.readline(MAX_LINE_CHARS):
            if raw.strip():
                # Only a line that opens an object is read whole: a long plain-text line is not.
                if not raw.lstrip().startswith(b"{"):
                    return False
                if not raw.endswith(b"\n"):
                    raw += f.readline()
                try:
                    obj = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    return False
                return isinstance(obj, dict) and isinstance(obj.get("text"), str)
    return False


def iter_documents(path: Path, max_chars: int) -> Iterator[Document]:
    """The documents of a file, in order; one longer than `max_chars` characters is cut after
    the piece that reaches it, and the rest follows as `continued` documents. The last one
    yielded may have no lines (it carries the bytes after the last document)."""
    events = _json_events(path) if is_json_lines(path) else _text_events(path)
    lines: list[str] = []
    nbytes = chars = cuts = 0
    continued = False
    first_cut = 0
    for piece, size, ends_document, lineno in events:
        nbytes += size
        if piece:
            lines.append(piece)
            chars += len(piece)
        if lines and (ends_document or chars >= max_chars):
            cut = not ends_document
            if cut:
                cuts += 1
                first_cut = first_cut or lineno
            yield Document(lines, nbytes, continued)
            lines, nbytes, chars, continued = [], 0, 0, cut
        elif ends_document:
            continued = False  # a cut right at the end: the next document is a new one
    if cuts:
        logger.warning("%s: documents longer than %d characters cut %d times (the first cut "
                       "at line %d); set chunk_chars higher to keep them whole",
                       path, max_chars, cuts, first_cut)
    yield Document(lines, nbytes, continued)


# An event is (piece of text or "", bytes read, whether a document ends here, line number).
_Event = tuple[str, int, bool, int]


def _json_events(path: Path) -> Iterator[_Event]:
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if raw.strip():
                try:
                    obj = json.loads(_decode(raw, path, lineno))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
                if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                    raise DataError(
                        f"{path}:{lineno}: expected a JSON object with a string 'text' field")
                for paragraph in obj["text"].split("\n"):
                    for piece in cut_at_whitespace([paragraph], MAX_LINE_CHARS):
                        yield piece, 0, False, lineno
            yield "", len(raw), True, lineno


def _text_events(path: Path) -> Iterator[_Event]:
    with path.open("rb") as f:
        lineno = 0
        while True:
            lineno += 1
            start = f.tell()
            blank = True
            for piece in cut_at_whitespace(_line_parts(f, path, lineno), MAX_LINE_CHARS):
                blank = False
                yield piece, 0, False, lineno
            size = f.tell() - start
            if not size:
                return
            yield "", size, blank, lineno


def _line_parts(f: BinaryIO, path: Path, lineno: int) -> Iterator[str]:
    """The next line of `f`, decoded, in parts of at most MAX_LINE_CHARS bytes."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    while True:
        raw = f.readline(MAX_LINE_CHARS)
        # a read ends the line unless it stopped at the size limit
        end = raw.endswith(b"\n") or len(raw) < MAX_LINE_CHARS
        pending = len(decoder.getstate()[0])  # bytes of a character split between reads
        try:
            text = decoder.decode(raw, final=end)
        except UnicodeDecodeError as e:
            raise DataError(f"{path}:{lineno}: not UTF-8 text "
                            f"({e.reason} at byte {offset - pending + e.start})") from None
        yield text
        offset += len(raw)
        if end:
            return


def _decode(raw: bytes, path: Path, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def cut_at_whitespace(parts: Iterable[str], limit: int) -> Iterator[str]:
    """The text of `parts` (consecutive parts of one line) as stripped, non-empty pieces of at
    most `limit` characters, each cut at the last whitespace that keeps it within the limit
    (at the limit itself where there is none, as in text without spaces)."""
    text = ""
    for part in parts:
        text = (text + part).lstrip()
        while len(text) > limit:
            cut = _cut_point(text, limit)
            if piece := text[:cut].strip():
                yield piece
            text = text[cut:].lstrip()
    if piece := text.strip():
        yield piece


def _cut_point(text: str, limit: int) -> int:
    """The largest i <= limit with text[i] whitespace, or `limit` when there is none; `text`
    is longer than `limit` and starts with a non-space (so i > 0)."""
    window = text[:limit + 1]
    if window[-1].isspace():
        return limit
    words = window.rsplit(None, 1)  # [everything before the last word, the last word]
    return limit - len(words[1]) if len(words) == 2 else limit


def is_held_out(lines: Sequence[str], fraction: float, seed: int) -> bool:
    """Whether a document belongs to the held-out split: a keyed hash of its text < fraction."""
    if fraction <= 0.0:
        return False
    key = seed.to_bytes(16, "little", signed=True)
    digest = hashlib.blake2b("\n".join(lines).encode("utf-8"), digest_size=8, key=key).digest()
    return int.from_bytes(digest, "little") < fraction * 2.0**64
