"""WordPiece tokenization from a `vocab.txt`, identical to Google's BERT `FullTokenizer`.

Runs in Rust on the Hugging Face `tokenizers` library (offsets point back into the original
text), but every character decision comes from Google's rules in `basic.py`, evaluated with
Python's `unicodedata` as Google's code does: the Rust normalizer and pre-tokenizer are built
from character classes computed from those predicates, not from the library's BERT presets,
whose Unicode tables and control-character rule differ from Google's. The few characters the
Rust steps cannot treat as Python does are rewritten one for one before encoding (see
`_StandIns`). docs/tokenization.md records the differences and how they were checked.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

from bertforge.errors import ConfigError
from bertforge.tokenization import basic

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Every model input needs these; [PAD] falls back to id 0 (Google pads with 0) and [MASK] is
# checked where masked LM needs it.
REQUIRED_TOKENS = ("[UNK]", "[CLS]", "[SEP]")

# Google's FullTokenizer builds its WordpieceTokenizer with this default (transformers: 100).
MAX_INPUT_CHARS_PER_WORD = 200


@dataclass(frozen=True)
class Encoding:
    """Tokens of one text: `offsets[i]` is the (start, end) character span of `tokens[i]`."""

    tokens: list[str]
    ids: list[int]
    offsets: list[tuple[int, int]]


def load_vocab(vocab_file: str | Path) -> dict[str, int]:
    """Read a `vocab.txt` as Google's `load_vocab`: one token a line (split at newlines only),
    stripped, id = line number; a repeated token keeps its later id.

    A missing, non-UTF-8 or empty file, or one without [UNK], [CLS] and [SEP], raises
    ConfigError naming the file (and, for bad bytes, the byte offset and line).
    """
    path = Path(vocab_file)
    if not path.is_file():
        raise ConfigError(f"vocab file not found: {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path}: not a vocab.txt: byte {e.start} (line {line}) is not UTF-8 "
                          f"({e.reason}); expected UTF-8 text, one token a line") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    vocab = {line.strip(): index for index, line in enumerate(lines)}
    if not vocab:
        raise ConfigError(f"{path}: vocab file is empty; expected one token a line")
    missing = [t for t in REQUIRED_TOKENS if t not in vocab]
    if missing:
        raise ConfigError(f"{path}: vocab lacks the special tokens {', '.join(missing)} "
                          f"(has {len(vocab)} tokens); is this a BERT vocab.txt?")
    return vocab


class WordPieceTokenizer:
    """Google's BERT tokenization (FullTokenizer) for `vocab.txt` files.

    `do_lower_case=True` lower-cases and strips accents (uncased models); False keeps case
    and accents (cased models).
    """

    def __init__(self, vocab_file: str | Path, do_lower_case: bool = True,
                 max_input_chars_per_word: int = MAX_INPUT_CHARS_PER_WORD):
        self.vocab_file = Path(vocab_file)
        self.do_lower_case = do_lower_case
        self.max_input_chars_per_word = max_input_chars_per_word
        self.vocab = load_vocab(vocab_file)
        self.inv_vocab = {i: t for t, i in self.vocab.items()}
        self._tok = _rust_tokenizer(self.vocab, do_lower_case, max_input_chars_per_word)
        self._stand_ins = _StandIns(self.vocab, do_lower_case)
        self.pad_id = self.vocab.get("[PAD]", 0)
        self.unk_id = self.vocab["[UNK]"]
        self.cls_id = self.vocab["[CLS]"]
        self.sep_id = self.vocab["[SEP]"]
        self.mask_id = self.vocab.get("[MASK]")

    def __len__(self) -> int:
        return len(self.vocab)

    def __getstate__(self):
        # Worker processes rebuild the tokenizer from the file: a small state to send.
        return {"vocab_file": self.vocab_file, "do_lower_case": self.do_lower_case,
                "max_input_chars_per_word": self.max_input_chars_per_word}

    def __setstate__(self, state):
        self.__init__(**state)

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset(self.vocab[t] for t in SPECIAL_TOKENS if t in self.vocab)

    def _prepare(self, text: str) -> str:
        """The text with the rewrites that make the Rust steps agree with Python's (one
        character for one, so offsets stay valid)."""
        if text.isascii():
            return text
        if self.do_lower_case and "\u03a3" in text:
            text = _python_final_sigma(text)
        return self._stand_ins.apply(text)

    def _encode(self, texts: Sequence[str]):
        return self._tok.encode_batch([self._prepare(t) for t in texts], add_special_tokens=False)

    def encode(self, text: str) -> Encoding:
        e = self._tok.encode(self._prepare(text), add_special_tokens=False)
        return Encoding(e.tokens, e.ids, e.offsets)

    def encode_batch(self, texts: Sequence[str]) -> list[Encoding]:
        return [Encoding(e.tokens, e.ids, e.offsets) for e in self._encode(texts)]

    def tokenize(self, text: str) -> list[str]:
        return self._tok.encode(self._prepare(text), add_special_tokens=False).tokens

    def ids(self, text: str) -> list[int]:
        return self._tok.encode(self._prepare(text), add_special_tokens=False).ids

    def ids_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._encode(texts)]

    def tokenize_batch(self, texts: Sequence[str]) -> list[list[str]]:
        return [e.tokens for e in self._encode(texts)]

    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int]:
        return [self.vocab.get(t, self.unk_id) for t in tokens]

    def build_pair(self, ids_a: Sequence[int], ids_b: Sequence[int] | None = None
                   ) -> tuple[list[int], list[int]]:
        """[CLS] a [SEP] (b [SEP]) with segment ids 0 for a, 1 for b."""
        input_ids = [self.cls_id, *ids_a, self.sep_id]
        segments = [0] * len(input_ids)
        if ids_b is not None:
            input_ids += [*ids_b, self.sep_id]
            segments += [1] * (len(ids_b) + 1)
        return input_ids, segments


# ---- the Rust pipeline ---------------------------------------------------------------------


def _rust_tokenizer(vocab: dict[str, int], do_lower_case: bool,
                    max_input_chars_per_word: int) -> Tokenizer:
    """Google's BasicTokenizer steps in Google's order, then its greedy WordPiece."""
    steps = [normalizers.Replace(_char_class(basic.is_removed), ""),
             normalizers.Replace(_char_class(basic.is_whitespace), " ")]
    if do_lower_case:
        steps += [normalizers.Lowercase(), normalizers.NFD(),
                  normalizers.Replace(_char_class(basic.is_nonspacing_mark), "")]
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]",
                                     max_input_chars_per_word=max_input_chars_per_word))
    tok.normalizer = normalizers.Sequence(steps)
    # Google spaces out CJK characters before lower-casing; isolating them afterwards is the
    # same, since lower-casing and NFD map CJK characters to CJK characters and no other
    # character to one (checked for every code point in tests/test_tokenization.py). The
    # `tokenizers` BERT preset's CJK blocks lack U+2B820..U+2CEAF, so it is not used.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(_char_class(basic.separates_words), "removed"),
        pre_tokenizers.Split(_char_class(basic.is_cjk), "isolated"),
        pre_tokenizers.Split(_char_class(basic.is_punctuation), "isolated")])
    return tok


@lru_cache(maxsize=None)
def _char_class(predicate: Callable[[str], bool]) -> Regex:
    """A regex character class of every code point the predicate holds for (as ranges).

    Surrogates are left out: a Rust string cannot hold them (`_StandIns` replaces them).
    """
    ranges: list[str] = []
    start = None
    for cp in range(0x110000):
        inside = not 0xD800 <= cp <= 0xDFFF and predicate(chr(cp))
        if inside and start is None:
            start = cp
        elif not inside and start is not None:
            ranges.append(_range(start, cp - 1))
            start = None
    if start is not None:
        ranges.append(_range(start, 0x10FFFF))
    return Regex(f"[{''.join(ranges)}]")


def _range(lo: int, hi: int) -> str:
    return f"\\x{{{lo:X}}}" if lo == hi else f"\\x{{{lo:X}}}-\\x{{{hi:X}}}"


# ---- characters the Rust steps cannot treat as Python does ---------------------------------


@lru_cache(maxsize=1)
def _rust_case_mismatches() -> frozenset[str]:
    """Characters that the Rust Lowercase and NFD steps change differently from Python's
    `str.lower()` and `unicodedata` NFD: characters assigned in one Unicode version and not the
    other (Rust's tables are newer for case, older for decomposition)."""
    chars = [chr(cp) for cp in range(0x110000) if not (0xD800 <= cp <= 0xDFFF or cp == 0x0A)]
    joined = "\n".join(chars)
    rust = normalizers.Sequence([normalizers.Lowercase(), normalizers.NFD()])
    # A newline never changes and stops case context, so both sides map one line to one line.
    theirs = rust.normalize_str(joined).split("\n")
    ours = unicodedata.normalize("NFD", joined.lower()).split("\n")
    return frozenset(c for c, a, b in zip(chars, theirs, ours) if a != b)


class _StandIns:
    """Rewrites characters that Google keeps inside a word and that make that word [UNK], but
    that the Rust steps would treat differently, to one private-use character that is in no
    vocab token (so the word is [UNK] there too).

    These are lone surrogates (a Python str may hold them, a Rust string cannot) and, when
    uncased, characters where Rust's case or decomposition tables differ from Python's (each
    of them unassigned in the Unicode version of one of the two tables).
    """

    def __init__(self, vocab: dict[str, int], do_lower_case: bool):
        in_vocab = set("".join(vocab))
        self.stand_in = next(chr(cp) for cp in range(0xF0000, 0xFFFFE) if chr(cp) not in in_vocab)
        rewritten = "".join(sorted(c for c in _rust_case_mismatches() if _makes_unk(c, in_vocab))
                            ) if do_lower_case else ""
        self._pattern = re.compile(f"[\ud800-\udfff{re.escape(rewritten)}]")

    def apply(self, text: str) -> str:
        if self._pattern.search(text) is None:
            return text
        return self._pattern.sub(self.stand_in, text)


def _makes_unk(c: str, in_vocab: set[str]) -> bool:
    """Whether Google's uncased steps turn `c` into letters of its word of which one is in no
    vocab token (so the word is [UNK] whatever else it holds)."""
    out = basic.strip_accents(c.lower())
    word_chars = all(not (basic.is_punctuation(x) or basic.separates_words(x)
                          or basic.is_removed(x) or basic.is_cjk(x)) for x in out)
    return word_chars and any(x not in in_vocab for x in out)


# ---- Greek final sigma ---------------------------------------------------------------------
# Google lower-cases each word with Python's str.lower(), which turns a word-final capital
# sigma into the final form (ΟΔΟΣ -> οδος); the Rust step lower-cases character by character
# (-> οδοσ), which WordPiece then splits differently. Where Python would write the final form,
# it is substituted before normalisation: one character for one, so offsets stay exact.


def _is_word_boundary(c: str) -> bool:
    """Where Google's words end before lower-casing: whitespace and CJK characters."""
    return basic.is_whitespace(c) or basic.separates_words(c) or basic.is_cjk(c)


def _python_final_sigma(text: str) -> str:
    chars = list(text)
    for p, ch in enumerate(text):
        if ch != "\u03a3":
            continue
        left = p
        while left > 0 and not _is_word_boundary(text[left - 1]):
            left -= 1
        right = p + 1
        while right < len(text) and not _is_word_boundary(text[right]):
            right += 1
        kept = [j for j in range(left, right) if not basic.is_removed(text[j])]
        before = sum(len(text[j].lower()) for j in kept[:kept.index(p)])
        if "".join(text[j] for j in kept).lower()[before] == "\u03c2":
            chars[p] = "\u03c2"
    return "".join(chars)
