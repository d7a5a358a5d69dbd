"""Masks drawn at read time on 150 real articles: whole-word masking and the prediction cap."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ptdata_helpers import all_batches, make_config, wiki_lines

from bertforge.data.pretraining import PretrainingDataset, prepare_pretraining_data
from bertforge.tokenization import WordPieceTokenizer


@pytest.fixture(scope="module")
def tokenizer(vocab_file) -> WordPieceTokenizer:
    return WordPieceTokenizer(vocab_file)


@pytest.fixture(scope="module")
def small_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("small") / "wiki150.jsonl"
    path.write_text("".join(wiki_lines(150)), encoding="utf-8")
    return path


def _word_groups(ids: list[int], is_piece) -> list[list[int]]:
    """Positions of each word of one row: a '##' piece belongs to the token before it."""
    groups: list[list[int]] = []
    for pos in range(1, len(ids)):
        if is_piece(ids[pos]) and groups and groups[-1][-1] == pos - 1:
            groups[-1].append(pos)
        else:
            groups.append([pos])
    return groups


def _partially_masked_words(ds: PretrainingDataset, tokenizer) -> tuple[int, int]:
    """(words of several pieces masked whole, words masked only in part) over the data set."""
    pieces = {i for t, i in tokenizer.vocab.items() if t.startswith("##")}
    specials = {tokenizer.cls_id, tokenizer.sep_id}
    whole = partial = 0
    batch = all_batches(ds)
    for row in range(ds.num_samples):
        ids = ds.instance(row)[0].tolist()
        real = batch["masked_lm_weights"][row] > 0
        masked = set(batch["masked_lm_positions"][row][real].tolist())
        for group in _word_groups(ids, lambda t: t in pieces):
            if ids[group[0]] in specials:
                continue
            hit = sum(p in masked for p in group)
            whole += len(group) > 1 and hit == len(group)
            partial += 0 < hit < len(group)
    return whole, partial


def test_whole_word_masking_masks_whole_words(small_file, vocab_file, tokenizer, tmp_path):
    wwm = make_config(tmp_path / "wwm", str(small_file), vocab_file, num_workers=0,
                      do_whole_word_mask=True, dupe_factor=2)
    prepare_pretraining_data(wwm, progress=False)
    whole, partial = _partially_masked_words(PretrainingDataset(tmp_path / "wwm"), tokenizer)
    assert partial == 0 and whole > 100
    # the same check finds split words without whole-word masking
    plain = make_config(tmp_path / "plain", str(small_file), vocab_file, num_workers=0, dupe_factor=2)
    prepare_pretraining_data(plain, progress=False)
    assert _partially_masked_words(PretrainingDataset(tmp_path / "plain"), tokenizer)[1] > 50


def test_max_predictions_caps_the_masks(small_file, vocab_file, tmp_path):
    cfg = make_config(tmp_path, str(small_file), vocab_file, num_workers=0,
                      max_predictions_per_seq=5)
    prepare_pretraining_data(cfg, progress=False)
    b = all_batches(PretrainingDataset(tmp_path))
    assert b["masked_lm_positions"].shape[1] == 5
    predicted = b["masked_lm_weights"].sum(1)
    maskable = b["attention_mask"].sum(1) - 3
    capped = maskable * 0.15 >= 5.5  # round() would give 6 or more
    assert capped.sum() > 100
    assert torch.all(predicted[capped] == 5) and torch.all(predicted <= 5)
