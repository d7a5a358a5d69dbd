"""WordPiece tokenization from a `vocab.txt`, identical to Google's BERT tokenizer.

Built on the Hugging Face `tokenizers` library (Rust): its BertNormalizer and BertPreTokenizer
reproduce Google's BasicTokenizer (control-character cleanup, CJK characters split out,
lower-casing and accent stripping only when uncased, punctuation splitting) and its WordPiece
model Google's greedy longest-match-first WordpieceTokenizer. Offsets point back into the
original text.
"""

from __future__ import annotations

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

    def encode(self, text: str) -> Encoding:
        e = self._tok.encode(text, add_special_tokens=False)
        return Encoding(e.tokens, e.ids, e.offsets)

    def encode_batch(self, texts: Sequence[str]) -> list[Encoding]:
        return [Encoding(e.tokens, e.ids, e.offsets)
                for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def tokenize(self, text: str) -> list[str]:
        return self._tok.encode(text, add_special_tokens=False).tokens

    def ids(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def ids_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def tokenize_batch(self, texts: Sequence[str]) -> list[list[str]]:
        return [e.tokens for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

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
