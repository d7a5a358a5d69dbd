"""WordPiece tokenization: identical ids to Google's reference tokenizer (transformers' pure-Python
legacy BertTokenizer) on every SQuAD v1.1 dev context and question, cased and uncased."""

from __future__ import annotations

import json

import pytest
from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

from bertforge.errors import DataError
from bertforge.tokenization import WordPieceTokenizer


@pytest.fixture(scope="module")
def squad_texts(squad_dev_file):
    data = json.loads(squad_dev_file.read_text(encoding="utf-8"))["data"]
    contexts = [p["context"] for a in data for p in a["paragraphs"]]
    questions = [q["question"] for a in data for p in a["paragraphs"] for q in p["qas"]]
    assert (len(contexts), len(questions)) == (2067, 10570)
    return contexts + questions


@pytest.mark.slow
@pytest.mark.parametrize("do_lower_case", [True, False])
def test_ids_equal_reference_on_all_squad_dev_texts(vocab_file, squad_texts, do_lower_case):
    ours = WordPieceTokenizer(vocab_file, do_lower_case=do_lower_case)
    ref = BertTokenizerLegacy(str(vocab_file), do_lower_case=do_lower_case)
    got = ours.ids_batch(squad_texts)
    mismatches = [i for i, text in enumerate(squad_texts)
                  if got[i] != ref.convert_tokens_to_ids(ref.tokenize(text))]
    assert mismatches == [], f"{len(mismatches)} texts differ, first: {squad_texts[mismatches[0]][:200]!r}"


TRICKY = [
    "Héllo, WÖRLD!! naïve café",  # accents: stripped only when uncased
    "北京大学 is in 北京.",  # CJK characters split one by one
    "tab\there\u00a0nbsp\u3000ideographic space",
    "control\u0000chars\u0007and\ufffdreplacement",
    "e-mail: someone@example.com; cost=$3.50 (approx.)",
    "A" * 120 + " long word",  # over max_input_chars_per_word: [UNK]
    "ΟΔΟΣ Σίσυφος İstanbul ß straße",
    "unaffable running jumped",
    "",
]


@pytest.mark.parametrize("do_lower_case", [True, False])
def test_tricky_texts(vocab_file, do_lower_case):
    ours = WordPieceTokenizer(vocab_file, do_lower_case=do_lower_case)
    ref = BertTokenizerLegacy(str(vocab_file), do_lower_case=do_lower_case)
    for text in TRICKY:
        assert ours.tokenize(text) == ref.tokenize(text), text


def test_offsets_point_into_original_text(vocab_file):
    tok = WordPieceTokenizer(vocab_file, do_lower_case=True)
    text = "The Naïve   café's owner, 北京!"
    enc = tok.encode(text)
    for token, (start, end) in zip(enc.tokens, enc.offsets):
        piece = text[start:end]
        # undo what uncased normalisation did to compare
        normalised = tok.tokenize(piece)
        assert token.removeprefix("##") in "".join(t.removeprefix("##") for t in normalised), (token, piece)
    assert text[enc.offsets[1][0]:enc.offsets[1][1]] == "Naïve"


def test_missing_vocab_file(tmp_path):
    with pytest.raises(DataError, match="vocab file not found: .*nope.txt"):
        WordPieceTokenizer(tmp_path / "nope.txt")


def test_vocab_without_special_tokens(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("hello\nworld\n")
    with pytest.raises(DataError, match=r"lacks the special tokens \[UNK\], \[CLS\], \[SEP\]"):
        WordPieceTokenizer(path)


def test_build_pair(vocab_file):
    tok = WordPieceTokenizer(vocab_file)
    ids, types = tok.build_pair([5, 6], [7])
    assert ids == [tok.cls_id, 5, 6, tok.sep_id, 7, tok.sep_id]
    assert types == [0, 0, 0, 0, 1, 1]


def test_random_strings_with_greek_sigma_and_odd_characters(vocab_file):
    """Python's str.lower() writes a word-final capital sigma as ς; the reference does so too."""
    import random

    rng = random.Random(0)
    alphabet = "ΑΒΓΔΟΣΤΥΩσςάé.,'- \u0301\u00ad\x00北aZ"
    ours = WordPieceTokenizer(vocab_file, do_lower_case=True)
    ref = BertTokenizerLegacy(str(vocab_file), do_lower_case=True)
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(3000)]
    bad = [t for t in texts if ours.tokenize(t) != ref.tokenize(t)]
    assert not bad, bad[:5]
    enc = ours.encode("ΟΔΟΣ.")
    assert enc.offsets[-1] == (4, 5)  # the substitution keeps offsets into the original text
