"""Text without line breaks or sentence punctuation: read in bounded pieces, and paired so that
its tokens make it into instances instead of being truncated away."""

from __future__ import annotations

import json
import logging
import random
import tracemalloc
from pathlib import Path

import pytest
import sentencex
from hypothesis import given
from hypothesis import strategies as st
from ptdata_helpers import make_config, wiki_lines

from bertforge.data.pretraining import PretrainingDataset, prepare_pretraining_data
from bertforge.data.pretraining import prepare as prepare_module
from bertforge.data.pretraining.chunks import iter_chunks
from bertforge.data.pretraining.corpus import MAX_LINE_CHARS, cut_at_whitespace, iter_documents
from bertforge.data.pretraining.instances import split_long_sentences
from bertforge.errors import DataError
from bertforge.tokenization import WordPieceTokenizer, load_vocab

N_WORDS = 200_000


def _words(vocab_file: Path, n: int, seed: int = 0) -> list[str]:
    """n words drawn from the vocabulary's plain lower-case ASCII words: no punctuation."""
    pool = [w for w in load_vocab(vocab_file) if w.isascii() and w.isalpha() and w.islower()
            and len(w) > 2]
    rng = random.Random(seed)
    return [rng.choice(pool) for _ in range(n)]


@pytest.fixture(scope="module")
def long_line(vocab_file) -> str:
    return " ".join(_words(vocab_file, N_WORDS))


# ---- cutting lines at whitespace -----------------------------------------------------------

_word = st.text(st.sampled_from("abcxyz\u00e9\u4e00"), min_size=1, max_size=12)
_space = st.text(st.sampled_from(" \t\u3000\u00a0"), min_size=1, max_size=3)


@given(words=st.lists(st.tuples(_word, _space), max_size=60), limit=st.integers(12, 40),
       part=st.integers(1, 50))
def test_cut_at_whitespace_keeps_every_word_within_the_limit(words, limit, part):
    text = "".join(w + s for w, s in words)
    parts = [text[i:i + part] for i in range(0, len(text), part)]
    pieces = list(cut_at_whitespace(parts, limit))
    assert all(0 < len(p) <= limit and p == p.strip() for p in pieces)
    # words are shorter than the limit, so none is cut: the words are those of the text
    assert [w for p in pieces for w in p.split()] == text.split()


def test_cut_at_whitespace_fills_pieces_and_cuts_text_without_spaces():
    words = [w * n for w, n in zip("abcdefghij", [3, 5, 2, 7, 1, 4, 6, 2, 3, 5], strict=True)]
    pieces = list(cut_at_whitespace([" ".join(words)], 12))
    assert pieces == ["aaa bbbbb cc", "ddddddd e", "ffff gggggg", "hh iii jjjjj"]
    # each piece is as long as it can be: the next word would not have fitted
    for piece, following in zip(pieces, pieces[1:]):
        assert len(piece) + 1 + len(following.split()[0]) > 12
    assert " ".join(pieces) == " ".join(words)
    solid = "x" * 25
    assert list(cut_at_whitespace([solid[:7], solid[7:]], 10)) == ["x" * 10, "x" * 10, "x" * 5]


# ---- reading ---------------------------------------------------------------------------------

def test_a_long_plain_text_line_is_read_in_bounded_pieces(tmp_path):
    line = " ".join(f"w{i % 9973}" for i in range(800_000))  # ~5 MB, one line
    path = tmp_path / "one_line.txt"
    path.write_text(line + "\n\nanother document.\n", encoding="utf-8")
    max_chars = 100_000
    tracemalloc.start()
    try:
        docs = [(len(d.lines), max(map(len, d.lines), default=0), sum(map(len, d.lines)),
                 d.continued, d.lines[0].partition(" ")[0] if d.lines else None)
                for d in iter_documents(path, max_chars)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # never the whole line in memory: a document's worth of text and the reader's buffers
    assert peak < 2 * max_chars + 8 * MAX_LINE_CHARS < len(line) / 4
    parts = [d for d in docs if d[0]]
    assert all(longest <= MAX_LINE_CHARS for _, longest, _, _, _ in parts)
    assert all(chars < max_chars + MAX_LINE_CHARS for _, _, chars, _, _ in parts)
    assert len(parts) > len(line) // (max_chars + MAX_LINE_CHARS)
    # the line's parts continue one document; the next document starts afresh
    assert [d[3] for d in parts] == [False] + [True] * (len(parts) - 2) + [False]
    assert parts[-1][4] == "another"


def test_characters_split_between_reads_and_bad_bytes_deep_in_a_line(tmp_path):
    # "é" is two bytes: the first ends the first read of the line, the second starts the next
    line = "a" * (MAX_LINE_CHARS - 1) + "\u00e9 b " + "c" * 10
    path = tmp_path / "split_char.txt"
    path.write_bytes(line.encode("utf-8") + b"\n")
    docs = [d for d in iter_documents(path, 10 * MAX_LINE_CHARS) if d.lines]
    assert len(docs) == 1 and " ".join(docs[0].lines) == line
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine.\n" + b"x " * 50_000 + b"\xff" + b" y" * 10 + b"\n")
    with pytest.raises(DataError, match=r"bad\.txt:2: not UTF-8 text \(invalid start byte at "
                                         r"byte 100000\)"):
        list(iter_documents(bad, 10 * MAX_LINE_CHARS))


def test_the_parts_of_a_cut_document_stay_in_one_split(tmp_path, vocab_file, long_line):
    path = tmp_path / "corpus.jsonl"
    docs = [long_line[:300_000], *(json.loads(x)["text"] for x in wiki_lines(40))]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs), encoding="utf-8")
    for seed in range(4):
        cfg = make_config(tmp_path / "out", str(path), vocab_file, chunk_chars=40_000,
                          held_out_fraction=0.5, random_seed=seed)
        split_of: dict[int, str] = {}
        for chunk in iter_chunks([path], cfg):
            split_of.update(dict.fromkeys(chunk.doc_ids, chunk.split))
        # document 0 is the long text, cut into parts 0..k; the articles follow
        parts = len(split_of) - 40
        assert parts >= 300_000 // (40_000 + MAX_LINE_CHARS)
        assert len({split_of[i] for i in range(parts)}) == 1, seed
        assert len({split_of[i] for i in range(parts, len(split_of))}) == 2, seed


# ---- pairing ---------------------------------------------------------------------------------

@pytest.mark.parametrize("max_num_tokens", [125, 126, 509])
def test_split_long_sentences_cuts_only_long_ones_into_halves(max_num_tokens):
    half_down, half_up = max_num_tokens // 2, max_num_tokens - max_num_tokens // 2
    for n in (1, max_num_tokens, max_num_tokens + 1, 2 * max_num_tokens + 5, 1000, 1001):
        sentence = list(range(n))
        short = [7, 8, 9]
        document = split_long_sentences([short, sentence, short], max_num_tokens)
        assert document[0] is short and document[-1] is short
        pieces = document[1:-1]
        assert [t for p in pieces for t in p] == sentence
        if n <= max_num_tokens:
            assert pieces == [sentence]
            continue
        assert len(pieces) == -(-2 * n // max_num_tokens)
        # whole pieces alternate between the two halves; any two neighbours fill one instance
        sizes = [len(p) for p in pieces[:-1]]
        assert sizes == [(half_down, half_up)[k % 2] for k in range(len(sizes))]
        assert all(a + b == max_num_tokens for a, b in zip(sizes, sizes[1:]))
        assert 0 < len(pieces[-1]) <= half_up


def _own_segments(data_dir: Path) -> list[list[int]]:
    """Each stored instance's text from its own document: A, and B unless it is random."""
    segments = []
    for split in ("train", "held_out"):
        ds = PretrainingDataset(data_dir, split)
        for i in range(ds.num_samples):
            ids, b_start, random_next, _ = ds.instance(i)
            segments.append(ids[1:b_start - 1].tolist())
            if not random_next:
                segments.append(ids[b_start:-1].tolist())
    return segments


@pytest.mark.parametrize("layout", ["txt", "jsonl"])
def test_text_without_punctuation_makes_it_into_instances(tmp_path, vocab_file, long_line,
                                                          layout):
    path = tmp_path / f"corpus.{layout}"
    path.write_text(json.dumps({"text": long_line}) + "\n" if layout == "jsonl"
                    else long_line + "\n", encoding="utf-8")
    summary = prepare_pretraining_data(make_config(tmp_path / "out", str(path), vocab_file,
                                                   num_workers=0), progress=False)
    source = WordPieceTokenizer(vocab_file).ids(long_line)
    assert len(source) >= N_WORDS and summary["source_tokens"] == len(source)
    # Find every stored segment in the source (by its first 8 tokens: random words make
    # 8-grams unique) and mark the tokens it holds.
    at = {tuple(source[i:i + 8]): i for i in range(len(source) - 7)}
    covered = bytearray(len(source))
    for segment in _own_segments(tmp_path / "out"):
        if len(segment) < 8:
            continue
        start = at[tuple(segment[:8])]
        assert source[start:start + len(segment)] == segment
        assert not any(covered[start:start + len(segment)])  # each token in one instance
        covered[start:start + len(segment)] = b"\x01" * len(segment)
    assert sum(covered) >= 0.9 * len(source)
    assert summary["source_token_share"] >= sum(covered) / len(source)


def test_pieces_handed_to_the_splitter_and_tokenizer_are_bounded(tmp_path, vocab_file,
                                                                 long_line, monkeypatch):
    assert len(long_line) > 15 * MAX_LINE_CHARS
    seen = {"segment": 0, "tokenize": 0, "chunk": 0}
    segment, ids = sentencex.segment, WordPieceTokenizer.ids
    create = prepare_module.create_chunk_instances

    def record(kind, size):
        seen[kind] = max(seen[kind], size)

    monkeypatch.setattr(sentencex, "segment",
                        lambda lang, text: record("segment", len(text)) or segment(lang, text))
    monkeypatch.setattr(WordPieceTokenizer, "ids",
                        lambda self, text: record("tokenize", len(text)) or ids(self, text))
    monkeypatch.setattr(prepare_module, "create_chunk_instances", lambda settings, chunk: record(
        "chunk", sum(len(s) for doc in chunk.docs for s in doc)) or create(settings, chunk))
    path = tmp_path / "corpus.txt"
    path.write_text(long_line + "\n", encoding="utf-8")
    chunk_chars = 100_000
    prepare_pretraining_data(make_config(tmp_path / "out", str(path), vocab_file, num_workers=0,
                                         chunk_chars=chunk_chars), progress=False)
    assert 0 < seen["segment"] <= MAX_LINE_CHARS and 0 < seen["tokenize"] <= MAX_LINE_CHARS
    # a chunk closes at chunk_chars; its last document adds at most chunk_chars + one piece,
    # and a short final chunk (< chunk_chars / 2) is merged into the one before
    assert 0 < seen["chunk"] < 2.5 * chunk_chars + MAX_LINE_CHARS


def test_low_source_token_share_is_reported(tmp_path, vocab_file, caplog):
    # Sentences of 28 tokens at 29 per instance: two fill a chunk, and truncation halves it.
    words = _words(vocab_file, 27 * 400, seed=1)
    text = " ".join(" ".join(words[i:i + 27]) + "." for i in range(0, len(words), 27))
    path = tmp_path / "corpus.txt"
    path.write_text(text + "\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        summary = prepare_pretraining_data(make_config(tmp_path / "out", str(path), vocab_file,
                                                       max_seq_length=32, num_workers=0),
                                           progress=False)
    used = sum(len(s) for s in _own_segments(tmp_path / "out"))
    assert summary["source_tokens"] == 28 * 400
    assert summary["source_token_share"] == used / (28 * 400) < 0.75
    assert "made it into instances" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        wiki = tmp_path / "wiki.jsonl"
        wiki.write_text("".join(wiki_lines(100)), encoding="utf-8")
        prepare_pretraining_data(make_config(tmp_path / "wiki_out", str(wiki), vocab_file,
                                             num_workers=0), progress=False)
    assert "made it into instances" not in caplog.text
