"""WordPiece tokenization: the same tokens as Google's BERT tokenizer for every character.

Two references: Google's `tokenization.py` written out again in `google_tokenization.py`, and
transformers' pure-Python `BertTokenizerLegacy`, an independent implementation that agrees with
Google's except for three documented rules (checked below, so the written-out reference is itself
checked against code we did not write).
"""

from __future__ import annotations

import json
import pickle
import random
import unicodedata

import pytest
from google_tokenization import GoogleTokenizer
from google_tokenization import basic_tokenize as google_basic_tokenize
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

from bertforge.errors import ConfigError
from bertforge.tokenization import WordPieceTokenizer, basic, basic_tokenize

CATEGORIES = ("Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No", "Pc", "Pd", "Ps",
              "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So", "Zs", "Zl", "Zp", "Cc", "Cf", "Cs",
              "Co", "Cn")


def chars_of(category: str, count: int, seed: int = 0) -> list[str]:
    """`count` characters of a Unicode category (as this Python's unicodedata has it)."""
    every = [chr(cp) for cp in range(0x110000) if unicodedata.category(chr(cp)) == category]
    rng = random.Random(seed)
    return every if len(every) <= count else [every[0], every[-1], *rng.sample(every, count - 2)]


PROBES = {cat: chars_of(cat, 6) for cat in CATEGORIES}


@pytest.fixture(scope="module")
def tokenizers(vocab_file):
    """(bertforge, Google reference) for the real BERT uncased vocab, cased and uncased."""
    return {lower: (WordPieceTokenizer(vocab_file, do_lower_case=lower),
                    GoogleTokenizer(vocab_file, do_lower_case=lower)) for lower in (True, False)}


@pytest.fixture(scope="module")
def probe_vocab(tmp_path_factory, vocab_file):
    """The real vocab plus every probe character as a word and as a continuation: a character
    that Google keeps then shows up as itself rather than as [UNK]."""
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    # A vocab line cannot hold a surrogate (not UTF-8) or a character that strip() removes.
    extra = [t for c in sorted({c for cs in PROBES.values() for c in cs}) for t in (c, "##" + c)
             if not c.isspace() and unicodedata.category(c) != "Cs" and c not in "\n\r"]
    lines = vocab_file.read_text(encoding="utf-8").splitlines() + extra
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def probe_tokenizers(probe_vocab):
    return {lower: (WordPieceTokenizer(probe_vocab, do_lower_case=lower),
                    GoogleTokenizer(probe_vocab, do_lower_case=lower)) for lower in (True, False)}


def assert_same(ours: WordPieceTokenizer, ref: GoogleTokenizer, texts: list[str]) -> None:
    got = ours.tokenize_batch(texts)
    bad = [(t, g, ref.tokenize(t)) for t, g in zip(texts, got) if g != ref.tokenize(t)]
    assert not bad, f"{len(bad)} of {len(texts)} texts differ, first: {bad[0]!r}"


# ---- the reference itself ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def squad_texts(squad_dev_file):
    data = json.loads(squad_dev_file.read_text(encoding="utf-8"))["data"]
    contexts = [p["context"] for a in data for p in a["paragraphs"]]
    questions = [q["question"] for a in data for p in a["paragraphs"] for q in p["qas"]]
    assert (len(contexts), len(questions)) == (2067, 10570)
    return contexts + questions


@pytest.mark.slow
@pytest.mark.parametrize("do_lower_case", [True, False])
def test_ids_equal_both_references_on_all_squad_dev_texts(vocab_file, squad_texts, tokenizers,
                                                         do_lower_case):
    ours, google = tokenizers[do_lower_case]
    legacy = BertTokenizerLegacy(str(vocab_file), do_lower_case=do_lower_case)
    got = ours.ids_batch(squad_texts)
    for name, ref in (("Google", google.ids),
                      ("legacy", lambda t: legacy.convert_tokens_to_ids(legacy.tokenize(t)))):
        mismatches = [i for i, text in enumerate(squad_texts) if got[i] != ref(text)]
        assert mismatches == [], (f"{len(mismatches)} texts differ from {name}, first: "
                                  f"{squad_texts[mismatches[0]][:200]!r}")


def test_reference_agrees_with_transformers_legacy_outside_the_known_differences(vocab_file):
    """Random texts without characters of categories Co, Cs and Cn, in NFC, with words of at
    most 100 characters: there the legacy tokenizer is Google's algorithm, and must agree."""
    rng = random.Random(1)
    alphabet = [c for cat in CATEGORIES if cat not in ("Co", "Cs", "Cn") for c in PROBES[cat]]
    alphabet += list("abcdefghij .,'-ΑΣσé") * 3
    for lower in (True, False):
        google = GoogleTokenizer(vocab_file, do_lower_case=lower)
        legacy = BertTokenizerLegacy(str(vocab_file), do_lower_case=lower)
        for _ in range(2000):
            text = unicodedata.normalize(
                "NFC", "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 20))))
            assert google.tokenize(text) == legacy.tokenize(text), text


def test_where_transformers_legacy_differs_from_google(vocab_file, tmp_path):
    """The three rules in which BertTokenizerLegacy is not Google's tokenization.py."""
    google = GoogleTokenizer(vocab_file, do_lower_case=True)
    legacy = BertTokenizerLegacy(str(vocab_file), do_lower_case=True)
    # Google removes only Cc and Cf characters; legacy every C* (private use, unassigned).
    for text in ("abc\ue000def xyz", "abc\u0378def xyz"):
        assert google.tokenize(text) == ["[UNK]", "x", "##y", "##z"]
        assert legacy.tokenize(text) == ["abc", "##de", "##f", "x", "##y", "##z"]
    # Google splits words over 200 characters into pieces; legacy gives [UNK] over 100.
    word = "ab" * 75
    assert google.tokenize(word) != ["[UNK]"] and legacy.tokenize(word) == ["[UNK]"]
    # Legacy composes (NFC) before tokenizing; Google does not: cased, a decomposed accent
    # stays a character of its own, which this vocab lacks.
    small = tmp_path / "vocab.txt"
    small.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\ne\n\u00e9\n", encoding="utf-8")
    assert GoogleTokenizer(small, do_lower_case=False).tokenize("e\u0301") == ["[UNK]"]
    assert BertTokenizerLegacy(str(small), do_lower_case=False).tokenize("e\u0301") == ["\u00e9"]
    assert WordPieceTokenizer(small, do_lower_case=False).tokenize("e\u0301") == ["[UNK]"]


# ---- bertforge against Google's algorithm --------------------------------------------------


def test_private_use_character_inside_a_word(tokenizers):
    """Written out by hand from Google's rules: U+E000 (category Co) is not removed, is in no
    vocab token, so its word is [UNK]."""
    for lower in (True, False):
        assert tokenizers[lower][0].tokenize("abc\ue000def xyz") == ["[UNK]", "x", "##y", "##z"]


TRICKY = [
    "Héllo, WÖRLD!! naïve café",  # accents: stripped only when uncased
    "北京大学 is in 北京.",  # CJK characters split one by one
    "\U0002b820\U0002ceaf x\U0002b8ffy",  # the last CJK extension block Google lists
    "tab\there\u00a0nbsp\u3000ideographic space",
    "control\u0000chars\u0007and\ufffdreplacement",
    "e-mail: someone@example.com; cost=$3.50 (approx.)",
    "A" * 120 + " long word",  # under Google's 200 characters: split into pieces
    "b" * 201 + " long word",  # over: [UNK]
    "ΟΔΟΣ Σίσυφος İstanbul ß straße",
    "unaffable running jumped",
    "line\u2028separator and paragraph\u2029separator",
    "zero\u200bwidth soft\u00adhyphen bidi\u202emark",
    "decomposed cafe\u0301 and \u0301 alone",
    "",
]


@pytest.mark.parametrize("do_lower_case", [True, False])
def test_tricky_texts(tokenizers, do_lower_case):
    assert_same(*tokenizers[do_lower_case], TRICKY)


@pytest.mark.parametrize("do_lower_case", [True, False])
@pytest.mark.parametrize("category", ["Co", "Cs", "Cn", "Zl", "Zp", "Mn", "Cc", "Cf", "Zs", "Me",
                                      "Mc", "Sk"])
def test_categories_alone_and_inside_words(tokenizers, probe_tokenizers, category,
                                           do_lower_case):
    texts = [t for c in PROBES[category] for t in (
        c, f" {c} ", f"ab{c}cd xyz", f"{c}ab", f"ab{c}", f"ab{c}{c}cd", f"Σ{c}", f"ΑΣ{c}",
        f"ΑΣ{c}Β", f"e{c}\u0301", f"北{c}京")]
    assert_same(*tokenizers[do_lower_case], texts)
    assert_same(*probe_tokenizers[do_lower_case], texts)


@pytest.mark.slow
@pytest.mark.parametrize("do_lower_case", [True, False])
def test_every_code_point(tokenizers, do_lower_case):
    """Each code point inside a word ("a?b"), 512 words a text. The unassigned planes 4-13
    (all category Cn) are sampled, every 61st code point."""
    ours, ref = tokenizers[do_lower_case]
    code_points = [cp for cp in range(0x110000) if not 0x40000 <= cp < 0xE0000 or cp % 61 == 0]
    texts = [" ".join(f"a{chr(cp)}b" for cp in code_points[i:i + 512])
             for i in range(0, len(code_points), 512)]
    got = ours.tokenize_batch(texts)
    bad = [hex(code_points[512 * i]) for i, text in enumerate(texts)
           if got[i] != ref.tokenize(text)]
    assert not bad, f"{len(bad)} texts differ, the first from code points {bad[:10]} on"


def _interesting_characters():
    """Characters of every category, with the ones BERT's rules single out drawn more often."""
    special = [c for cat in ("Co", "Cs", "Cn", "Zl", "Zp", "Mn", "Cf", "Cc", "Zs", "Po")
               for c in PROBES[cat]]
    return st.one_of(
        st.characters(codec=None, exclude_categories=()),  # any code point, surrogates too
        st.sampled_from(special),
        st.sampled_from(list("abcdefxyz   ΑΣσςé北") + ["\U0002b820", "\u0301", "\ue000"]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(text=st.lists(_interesting_characters(), max_size=24).map("".join),
       do_lower_case=st.booleans())
def test_random_code_points_from_all_categories(tokenizers, probe_tokenizers, text,
                                                do_lower_case):
    for ours, ref in (tokenizers[do_lower_case], probe_tokenizers[do_lower_case]):
        assert ours.tokenize(text) == ref.tokenize(text)


def test_random_strings_with_greek_sigma_and_odd_characters(tokenizers):
    """Python's str.lower() writes a word-final capital sigma as ς; Google's tokenizer does so."""
    rng = random.Random(0)
    alphabet = "ΑΒΓΔΟΣΤΥΩσςάé.,'- \u0301\u00ad\x00北aZ\u2028\ue000"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(3000)]
    assert_same(*tokenizers[True], texts)
    enc = tokenizers[True][0].encode("ΟΔΟΣ.")
    assert enc.offsets[-1] == (4, 5)  # the substitution keeps offsets into the original text


def test_lone_surrogates_make_their_word_unknown(tokenizers):
    """A Python str may hold a lone surrogate (category Cs); Google keeps it, so its word is
    [UNK]. The Rust tokenizer cannot take one: it is replaced before encoding."""
    text = "ab\ud800cd xyz \udfff"
    for lower in (True, False):
        ours, ref = tokenizers[lower]
        assert ours.tokenize(text) == ref.tokenize(text) == ["[UNK]", "x", "##y", "##z", "[UNK]"]
        assert ours.encode(text).offsets == [(0, 5), (6, 7), (7, 8), (8, 9), (10, 11)]


def test_cjk_stays_cjk_through_lower_casing_and_nfd():
    """What the tokenizer's order of steps relies on: lower-casing and NFD (uncased) turn a CJK
    character into CJK characters only, and no other character into a CJK one."""
    for cp in range(0x110000):
        c = chr(cp)
        if c.lower() == c and not unicodedata.decomposition(c):
            continue  # unchanged by both steps (or dropped as Mn, and Mn is not CJK)
        out = basic.strip_accents(c.lower())
        assert basic.is_cjk(c) == any(basic.is_cjk(x) for x in out), hex(cp)
        if basic.is_cjk(c):
            assert out and all(basic.is_cjk(x) for x in out), hex(cp)


@pytest.mark.parametrize("lower", [True, False])
def test_basic_tokenize_is_googles(squad_texts, lower):
    """The Python BasicTokenizer (what SQuAD's get_final_text re-runs on answer text)."""
    texts = [*squad_texts[:2067:50], "ΟΔΟΣ ΣΑΣ", "Crème Brûlée's", "東京タワー is 333m", "a\u00a0b\u202fc\u2009d",
             "x\x00y\ufffdz\u200b", "İstanbul", "—dash–", "ß ẞ", "a\u2028b\x1cc\x0bd", "$5^2`x~",
             "abc\ue000def", "ab\u0378c", "ab\ud800c", "cafe\u0301", *TRICKY]
    for text in texts:
        assert basic_tokenize(text, lower) == google_basic_tokenize(text, lower), text


# ---- the rest of the tokenizer ---------------------------------------------------------------


def test_offsets_point_into_original_text(tokenizers):
    tok = tokenizers[True][0]
    text = "The Naïve   café's owner, 北京!"
    enc = tok.encode(text)
    for token, (start, end) in zip(enc.tokens, enc.offsets):
        piece = text[start:end]
        # undo what uncased normalisation did to compare
        normalised = tok.tokenize(piece)
        assert token.removeprefix("##") in "".join(t.removeprefix("##") for t in normalised), (token, piece)
    assert text[enc.offsets[1][0]:enc.offsets[1][1]] == "Naïve"
    # Removed characters and a private-use character keep the offsets exact.
    enc = tok.encode("a\u200bb \ue000x, 北")
    assert enc.tokens == ["ab", "[UNK]", ",", "北"]
    assert enc.offsets == [(0, 3), (4, 6), (6, 7), (8, 9)]


def test_build_pair(tokenizers):
    tok = tokenizers[True][0]
    ids, types = tok.build_pair([5, 6], [7])
    assert ids == [tok.cls_id, 5, 6, tok.sep_id, 7, tok.sep_id]
    assert types == [0, 0, 0, 0, 1, 1]


def test_pickle_keeps_the_settings(vocab_file):
    tok = WordPieceTokenizer(vocab_file, do_lower_case=False, max_input_chars_per_word=5)
    copy = pickle.loads(pickle.dumps(tok))
    assert (copy.do_lower_case, copy.max_input_chars_per_word) == (False, 5)
    assert copy.tokenize("Héllo abcdef") == tok.tokenize("Héllo abcdef") == ["[UNK]", "[UNK]"]


# ---- bad vocab files ---------------------------------------------------------------------------


def test_missing_vocab_file(tmp_path):
    with pytest.raises(ConfigError, match="vocab file not found: .*nope.txt"):
        WordPieceTokenizer(tmp_path / "nope.txt")


def test_vocab_of_random_bytes(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_bytes(b"[PAD]\n[UNK]\nok\n" + bytes(random.Random(0).randrange(256) for _ in range(64)))
    with pytest.raises(ConfigError) as e:
        WordPieceTokenizer(path)
    message = str(e.value)
    assert str(path) in message and "not UTF-8" in message
    # Where the first bad byte sequence starts: the end of the longest prefix that decodes.
    data = path.read_bytes()
    offset = max(i for i in range(len(data) + 1) if _decodes(data[:i]))
    line = data[:offset].count(b"\n") + 1
    assert f"byte {offset} (line {line})" in message


def _decodes(prefix: bytes) -> bool:
    try:
        prefix.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize("content, message", [("", "vocab file is empty"),
                                              ("\n\n", "vocab lacks the special tokens")])
def test_empty_vocab(tmp_path, content, message):
    path = tmp_path / "vocab.txt"
    path.write_text(content)
    with pytest.raises(ConfigError, match=rf"vocab\.txt: {message}"):
        WordPieceTokenizer(path)


@pytest.mark.parametrize("missing", ["[UNK]", "[CLS]", "[SEP]"])
def test_vocab_without_a_special_token(tmp_path, missing):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello")
                              if t != missing) + "\n")
    with pytest.raises(ConfigError, match=rf"vocab\.txt: vocab lacks the special tokens \{missing}"):
        WordPieceTokenizer(path)


def test_vocab_lines_as_google_reads_them(tmp_path):
    """CRLF line ends and surrounding spaces are stripped; ids are line numbers; a repeated
    token keeps its later id; a lone CR is not a line end (Google splits at LF only)."""
    path = tmp_path / "vocab.txt"
    path.write_bytes(b"[PAD]\r\n[UNK]\n [CLS] \n[SEP]\nx\ry\nhello\nhello\n")
    tok = WordPieceTokenizer(path)
    assert tok.vocab == {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "x\ry": 4, "hello": 6}
    assert tok.pad_id == 0 and tok.mask_id is None
