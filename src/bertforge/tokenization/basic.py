"""Google's BasicTokenizer (BERT `tokenization.py`): its character rules and basic tokenization.

The one home of the character classes BERT's tokenization is defined by, all decided with
Python's `unicodedata`, as Google's code decides them:

- removed: NUL, U+FFFD and control characters, which Google defines as categories Cc and Cf
  except tab, newline and carriage return (private-use Co, surrogate Cs and unassigned Cn
  characters are kept, and so make their word [UNK]);
- whitespace: space, tab, newline, carriage return and category Zs, each turned into a space;
  the words are then split by Python's `str.split()`, so line and paragraph separators
  (Zl, Zp) separate words too;
- CJK ideographs (fixed code point blocks) become words of their own;
- punctuation: every non-alphanumeric ASCII character and every category P* character is split
  off as a token of its own;
- uncased: a word is lower-cased with `str.lower()`, decomposed (NFD) and stripped of
  non-spacing marks (Mn).

`WordPieceTokenizer` (`wordpiece.py`) runs these rules in Rust, with its character classes
built from the predicates here; `basic_tokenize` runs them in Python for `get_final_text`.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

# Google's "chinese characters": the CJK Unified Ideographs blocks and their extensions and
# compatibility blocks, inclusive. Hangul, Hiragana and Katakana are not among them.
CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
              (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def is_cjk(c: str) -> bool:
    """Google's `_is_chinese_char`: the character gets spaces around it."""
    cp = ord(c)
    return any(lo <= cp <= hi for lo, hi in CJK_RANGES)


def is_whitespace(c: str) -> bool:
    """Google's `_is_whitespace`: the character is replaced by a space."""
    return c in " \t\n\r" or unicodedata.category(c) == "Zs"


def is_removed(c: str) -> bool:
    """Google's `_clean_text` drops the character: NUL, U+FFFD, or `_is_control` (categories
    Cc and Cf, but not tab, newline and carriage return, which are whitespace)."""
    if c in "\x00\ufffd":
        return True
    return c not in "\t\n\r" and unicodedata.category(c) in ("Cc", "Cf")


def separates_words(c: str) -> bool:
    """The character ends a word once the text is cleaned: Google splits with `str.split()`,
    which also splits on line and paragraph separators (U+2028, U+2029)."""
    return c.isspace() and not is_removed(c)


def is_punctuation(c: str) -> bool:
    """Google's `_is_punctuation`: all non-alphanumeric ASCII (also "^", "$", "`", which are not
    category P) and every character of a P* category."""
    cp = ord(c)
    return (33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126
            or unicodedata.category(c).startswith("P"))


def is_nonspacing_mark(c: str) -> bool:
    """Category Mn: what Google's `_run_strip_accents` drops after NFD when uncased."""
    return unicodedata.category(c) == "Mn"


def clean_char(c: str) -> str:
    """Google's `_clean_text` and `_tokenize_chinese_chars` for one character."""
    if " " < c < "\x7f":  # printable ASCII other than space: kept as is
        return c
    if is_removed(c):
        return ""
    if is_whitespace(c):
        return " "
    return f" {c} " if is_cjk(c) else c


def split_on_punctuation(word: str) -> list[str]:
    """Google's `_run_split_on_punc`: every punctuation character becomes its own piece."""
    pieces: list[str] = []
    start_new = True
    for c in word:
        if is_punctuation(c):
            pieces.append(c)
            start_new = True
        else:
            if start_new:
                pieces.append("")
            pieces[-1] += c
            start_new = False
    return pieces


def strip_accents(word: str) -> str:
    """Google's `_run_strip_accents`: NFD, then drop the non-spacing marks."""
    return "".join(c for c in unicodedata.normalize("NFD", word) if not is_nonspacing_mark(c))


@lru_cache(maxsize=1 << 18)
def _basic_tokenize_word(word: str, do_lower_case: bool) -> tuple[str, ...]:
    tokens: list[str] = []
    for token in "".join(map(clean_char, word)).split():
        if do_lower_case:
            token = strip_accents(token.lower())
        tokens.extend(split_on_punctuation(token))
    return tuple(" ".join(tokens).split())


def basic_tokenize(text: str, do_lower_case: bool) -> list[str]:
    """Google's `BasicTokenizer(do_lower_case).tokenize(text)`: cleaned, CJK characters and
    punctuation split out, lower-cased and accent-stripped when uncased.

    Every step acts on single characters or on words that `str.split()` separates, and a space
    is such a separator, so the text is tokenized one space-separated piece at a time, with a
    cache: answer spans reuse the same context words.
    """
    return [token for word in text.split(" ")
            for token in _basic_tokenize_word(word, do_lower_case)]
