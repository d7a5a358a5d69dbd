"""WordPiece tokenization from a `vocab.txt`, identical to Google's BERT tokenizer.

Built on the Hugging Face `tokenizers` library (Rust): its BertNormalizer and BertPreTokenizer
reproduce Google's BasicTokenizer (control-character cleanup, CJK characters split out,
lower-casing and accent stripping only when uncased, punctuation splitting) and its WordPiece
model Google's greedy longest-match-first WordpieceTokenizer. Offsets point back into the
original text.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from bertforge.errors import DataError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclass(frozen=True)
class Encoding:
    """Tokens of one text: `offsets[i]` is the (start, end) character span of `tokens[i]`."""

    tokens: list[str]
    ids: list[int]
    offsets: list[tuple[int, int]]


def load_vocab(vocab_file: str | Path) -> dict[str, int]:
    """Read a `vocab.txt` (one token a line, id = line number)."""
    path = Path(vocab_file)
    if not path.is_file():
        raise DataError(f"vocab file not found: {path}")
    vocab: dict[str, int] = {}
    with path.open(encoding="utf-8") as f:
        for index, line in enumerate(f):
            # As Google's load_vocab: strip the line; a repeated token keeps its later id.
            vocab[line.strip()] = index
    if not vocab:
        raise DataError(f"{path}: vocab file is empty")
    missing = [t for t in ("[UNK]", "[CLS]", "[SEP]") if t not in vocab]
    if missing:
        raise DataError(f"{path}: vocab lacks the special tokens {', '.join(missing)}")
    return vocab


class WordPieceTokenizer:
    """Google's BERT tokenization (FullTokenizer) for `vocab.txt` files.

    `do_lower_case=True` lower-cases and strips accents (uncased models); False keeps case
    and accents (cased models).
    """

    def __init__(self, vocab_file: str | Path, do_lower_case: bool = True,
                 max_input_chars_per_word: int = 100):
        self.vocab_file = Path(vocab_file)
        self.do_lower_case = do_lower_case
        self.vocab = load_vocab(vocab_file)
        self.inv_vocab = {i: t for t, i in self.vocab.items()}
        tok = Tokenizer(models.WordPiece(self.vocab, unk_token="[UNK]",
                                         max_input_chars_per_word=max_input_chars_per_word))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True,
            strip_accents=do_lower_case, lowercase=do_lower_case)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        self._tok = tok
        self.pad_id = self.vocab.get("[PAD]", 0)
        self.unk_id = self.vocab["[UNK]"]
        self.cls_id = self.vocab["[CLS]"]
        self.sep_id = self.vocab["[SEP]"]
        self.mask_id = self.vocab.get("[MASK]")

    def __len__(self) -> int:
        return len(self.vocab)

    def __getstate__(self):
        # The Rust tokenizer pickles; keep the state small for worker processes anyway.
        return {"vocab_file": self.vocab_file, "do_lower_case": self.do_lower_case}

    def __setstate__(self, state):
        self.__init__(state["vocab_file"], state["do_lower_case"])

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset(self.vocab[t] for t in SPECIAL_TOKENS if t in self.vocab)

    def _prepare(self, text: str) -> str:
        if self.do_lower_case and "\u03a3" in text:
            return _python_final_sigma(text)
        return text

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

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self.inv_vocab[i] for i in ids]

    def build_pair(self, ids_a: Sequence[int], ids_b: Sequence[int] | None = None
                   ) -> tuple[list[int], list[int]]:
        """[CLS] a [SEP] (b [SEP]) with segment ids 0 for a, 1 for b."""
        input_ids = [self.cls_id, *ids_a, self.sep_id]
        segments = [0] * len(input_ids)
        if ids_b is not None:
            input_ids += [*ids_b, self.sep_id]
            segments += [1] * (len(ids_b) + 1)
        return input_ids, segments


# ---- Greek final sigma ---------------------------------------------------------------------
# Google lower-cases each whitespace token with Python's str.lower(), which turns a word-final
# capital sigma into the final form (ΟΔΟΣ -> οδος); the Rust normalizer lower-cases character by
# character (-> οδοσ), which WordPiece then splits differently. Where Python would write the final
# form, we substitute it before normalisation: one character for one, so offsets stay exact.


def _is_token_boundary(ch: str) -> bool:
    """Whitespace (Google's _is_whitespace) or a CJK character (which Google spaces out)."""
    if ch in " \t\n\r" or unicodedata.category(ch) == "Zs":
        return True
    cp = ord(ch)
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def _is_removed(ch: str) -> bool:
    """Characters Google's _clean_text drops (NUL, U+FFFD, control/format characters)."""
    if ch in "\t\n\r":
        return False
    return ch in "\x00\ufffd" or unicodedata.category(ch).startswith("C")


def _python_final_sigma(text: str) -> str:
    chars = list(text)
    for p, ch in enumerate(text):
        if ch != "\u03a3":
            continue
        left = p
        while left > 0 and not _is_token_boundary(text[left - 1]):
            left -= 1
        right = p + 1
        while right < len(text) and not _is_token_boundary(text[right]):
            right += 1
        kept = [j for j in range(left, right) if not _is_removed(text[j])]
        before = sum(len(text[j].lower()) for j in kept[:kept.index(p)])
        if "".join(text[j] for j in kept).lower()[before] == "\u03c2":
            chars[p] = "\u03c2"
    return "".join(chars)
