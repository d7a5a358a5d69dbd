"""Sentence pairs against Google's `create_instances_from_document` (tests/google_pretraining.py,
written out from create_pretraining_data.py): on the first 300 Wikipedia articles, one chunk's
instances are Google's, instance for instance, given the same sentences and the same seeded
generator. In particular a one-sentence chunk always pairs with a random next segment, so the
share of random-next pairs is Google's (about two thirds on these short articles), not one half.

The sentences (sentencex, WordPiece, bertforge's cut of over-long sentences) are bertforge's on
both sides: what is compared is the pairing."""

from __future__ import annotations

import random

import numpy as np
import pytest
from google_pretraining import create_instances_from_document as google_instances
from ptdata_helpers import wiki_lines

from bertforge.data.pretraining.chunks import Chunk
from bertforge.data.pretraining.corpus import iter_documents
from bertforge.data.pretraining.instances import (CreateSettings, create_chunk_instances, split_long_sentences,
                                                  tokenize_documents)
from bertforge.tokenization import WordPieceTokenizer

N_DOCS, SEED = 300, 12345


@pytest.fixture(scope="module")
def chunk(tmp_path_factory) -> Chunk:
    path = tmp_path_factory.mktemp("pairs") / "wiki.jsonl"
    path.write_text("".join(wiki_lines(N_DOCS)), encoding="utf-8")
    docs = [d.lines for d in iter_documents(path, 1 << 20) if d.lines]
    assert len(docs) == N_DOCS
    return Chunk("train", 0, docs, list(range(N_DOCS)))


@pytest.mark.parametrize("max_seq_length, dupe_factor", [(128, 1), (64, 2)])
def test_instances_are_googles(chunk, vocab_file, max_seq_length, dupe_factor):
    settings = CreateSettings(vocab_file=str(vocab_file), do_lower_case=True, max_seq_length=max_seq_length,
                              short_seq_prob=0.1, dupe_factor=dupe_factor, random_seed=SEED, language="en",
                              token_dtype="uint16")
    ours = create_chunk_instances(settings, chunk)

    tokenizer = WordPieceTokenizer(vocab_file, do_lower_case=True)
    documents = [split_long_sentences(doc, max_seq_length - 3)
                 for doc in tokenize_documents(chunk.docs, tokenizer, "en") if doc]
    rng = random.Random(f"{SEED}/train/0")  # the chunk's generator: (seed, split, chunk number)
    want = [pair for _ in range(dupe_factor) for d in range(len(documents))
            for pair in google_instances(documents, d, max_seq_length, 0.1, rng)]

    ends = np.cumsum(ours.lengths)
    got = []
    for end, length, b_start, random_next in zip(ends, ours.lengths, ours.b_starts, ours.random_next, strict=True):
        ids = ours.tokens[end - length:end].tolist()
        assert ids[0] == tokenizer.cls_id and ids[b_start - 1] == ids[-1] == tokenizer.sep_id
        got.append((ids[1:b_start - 1], ids[b_start:-1], bool(random_next)))
    assert len(got) == len(want)
    first_difference = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
    assert first_difference is None, (first_difference, got[first_difference], want[first_difference])

    share = np.mean([random_next for _, _, random_next in want])
    # Google's rule, not a balanced coin: one-sentence chunks (short articles, leftovers) always
    # take a random next segment.
    assert 0.6 < share < 0.72, share
