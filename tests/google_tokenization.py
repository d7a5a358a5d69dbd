"""Google's BERT tokenizer (`tokenization.py` of the BERT repository), written out again as a
test reference: character by character, Python sorts and loops, no shared code with bertforge.

transformers' `BertTokenizerLegacy` follows it closely but not exactly, so it cannot be the
reference for every character: it removes every category C* character (Google: only Cc and
Cf), composes the text (NFC, Google does not), and gives [UNK] to words over 100 characters
(Google: over 200). `test_tokenization.py` pins those differences.
"""

from __future__ import annotations

import unicodedata


def is_whitespace(char):
    if char in (" ", "\t", "\n", "\r"):
        return True
    return unicodedata.category(char) == "Zs"


def is_control(char):
    if char in ("\t", "\n", "\r"):
        return False
    return unicodedata.category(char) in ("Cc", "Cf")


def is_punctuation(char):
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def is_chinese_char(cp):
    blocks = [(0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
              (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)]
    for lo, hi in blocks:
        if lo <= cp <= hi:
            return True
    return False


def basic_tokenize(text, do_lower_case):
    cleaned = []
    for char in text:
        cp = ord(char)
        if cp == 0 or cp == 0xFFFD or is_control(char):
            continue
        cleaned.append(" " if is_whitespace(char) else char)
    spaced = []
    for char in cleaned:
        if is_chinese_char(ord(char)):
            spaced += [" ", char, " "]
        else:
            spaced.append(char)
    split_tokens = []
    for token in "".join(spaced).strip().split():
        if do_lower_case:
            token = token.lower()
            token = "".join(c for c in unicodedata.normalize("NFD", token)
                            if unicodedata.category(c) != "Mn")
        pieces = []
        start_new_word = True
        for char in token:
            if is_punctuation(char):
                pieces.append([char])
                start_new_word = True
            else:
                if start_new_word:
                    pieces.append([])
                start_new_word = False
                pieces[-1].append(char)
        split_tokens.extend("".join(p) for p in pieces)
    return " ".join(split_tokens).strip().split()


def wordpiece_tokenize(word, vocab, max_input_chars_per_word=200):
    chars = list(word)
    if len(chars) > max_input_chars_per_word:
        return ["[UNK]"]
    start, sub_tokens = 0, []
    while start < len(chars):
        end, found = len(chars), None
        while start < end:
            piece = "".join(chars[start:end])
            if start > 0:
                piece = "##" + piece
            if piece in vocab:
                found = piece
                break
            end -= 1
        if found is None:
            return ["[UNK]"]
        sub_tokens.append(found)
        start = end
    return sub_tokens


def load_vocab(path):
    """Google's load_vocab: one token a line (lines end at LF only), stripped; id = line
    number."""
    vocab = {}
    with open(path, encoding="utf-8", newline="\n") as f:
        for index, line in enumerate(f):
            vocab[line.strip()] = index
    return vocab


class GoogleTokenizer:
    """Google's FullTokenizer."""

    def __init__(self, vocab_file, do_lower_case=True):
        self.vocab = load_vocab(vocab_file)
        self.do_lower_case = do_lower_case

    def tokenize(self, text):
        return [piece for token in basic_tokenize(text, self.do_lower_case)
                for piece in wordpiece_tokenize(token, self.vocab)]

    def convert_tokens_to_ids(self, tokens):
        return [self.vocab[t] for t in tokens]

    def ids(self, text):
        return self.convert_tokens_to_ids(self.tokenize(text))
