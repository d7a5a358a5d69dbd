"""BERT's tokenization, as Google's `tokenization.py` defines it.

`basic.py` holds Google's character rules and BasicTokenizer (cleaning, CJK, lower-casing,
accents, punctuation); `wordpiece.py` the vocab and the full WordPiece tokenizer, which runs
those rules in Rust.
"""

from bertforge.tokenization.basic import basic_tokenize
from bertforge.tokenization.wordpiece import (SPECIAL_TOKENS, Encoding, WordPieceTokenizer,
                                              load_vocab)

__all__ = ["SPECIAL_TOKENS", "Encoding", "WordPieceTokenizer", "basic_tokenize", "load_vocab"]
