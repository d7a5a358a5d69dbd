"""Pretraining data from 500 real Wikipedia articles: the instances stored and the batches read.

Statistics are measured on the batches themselves (what the model sees), against the
definitions of Google's create_pretraining_data.py and the project's deviations from it
(docs/pretraining_data.md): 15% of the maskable tokens, 80/10/10, Google's share of random-next
pairs, whole words, [CLS] A [SEP] B [SEP] with token types.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from ptdata_helpers import MAX_PRED, SEQ, all_batches, as_text, make_config, wiki_lines

from bertforge.data.pretraining import PretrainingDataset, prepare_pretraining_data, read_manifest
from bertforge.errors import CheckpointError
from bertforge.tokenization import WordPieceTokenizer

N_DOCS = 500


# ---- the main data set: 500 real articles, 2 workers, dupe_factor 10 -----------------------

@pytest.fixture(scope="module")
def wiki_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("wiki") / "wiki.jsonl"
    path.write_text("".join(wiki_lines(N_DOCS)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def prepared(wiki_file, vocab_file, tmp_path_factory):
    # dupe_factor 10 (Google's) gives ~8k training instances from 500 articles: enough that
    # the NSP tolerance of 2% is 3.5 standard errors. Small chunks and shards: several of each.
    out = tmp_path_factory.mktemp("prepared")
    cfg = make_config(out, str(wiki_file), vocab_file, num_workers=2, dupe_factor=10,
                      held_out_fraction=0.1, chunk_chars=40_000, shard_size=2_000)
    return out, prepare_pretraining_data(cfg, progress=False)


@pytest.fixture(scope="module")
def train(prepared) -> PretrainingDataset:
    return PretrainingDataset(prepared[0], "train")


@pytest.fixture(scope="module")
def train_batch(train) -> dict[str, torch.Tensor]:
    return all_batches(train)


@pytest.fixture(scope="module")
def tokenizer(vocab_file) -> WordPieceTokenizer:
    return WordPieceTokenizer(vocab_file)


def test_summary_and_manifest(prepared, vocab_file, train):
    out, summary = prepared
    manifest = read_manifest(out)
    with_text = sum(bool(json.loads(line)["text"].strip()) for line in wiki_lines(N_DOCS))
    assert summary["docs"] == with_text == N_DOCS
    assert summary["splits"]["train"]["docs"] + summary["splits"]["held_out"]["docs"] == N_DOCS
    assert 0.05 < summary["splits"]["held_out"]["docs"] / N_DOCS < 0.15
    held_out = PretrainingDataset(out, "held_out")
    assert summary["instances"] == train.num_samples + held_out.num_samples
    assert summary["instances"] > 8_000 and summary["peak_rss_mb"] > 0
    assert manifest["vocab"]["sha256"] == hashlib.sha256(vocab_file.read_bytes()).hexdigest()
    assert manifest["vocab"]["size"] == 30522 and manifest["token_dtype"] == "uint16"
    cfg = manifest["config"]
    assert (cfg["max_seq_length"], cfg["max_predictions_per_seq"], cfg["masked_lm_prob"],
            cfg["do_whole_word_mask"], cfg["random_seed"]) == (SEQ, MAX_PRED, 0.15, False, 12345)
    for info in manifest["splits"].values():
        assert sum(s["instances"] for s in info["shards"]) == info["instances"]
        tokens = [np.load(out / s["tokens"], mmap_mode="r") for s in info["shards"]]
        assert sum(len(t) for t in tokens) == info["tokens"]
        assert all(t.dtype == np.uint16 for t in tokens)
    assert len(manifest["splits"]["train"]["shards"]) >= 3


def test_source_token_share(prepared, tokenizer):
    out, summary = prepared
    # Source tokens, counted on each article tokenized whole (sentence splits fall on spaces).
    texts = [json.loads(line)["text"] for line in wiki_lines(N_DOCS)]
    assert summary["source_tokens"] == sum(len(ids) for ids in tokenizer.ids_batch(texts))
    # The article's own tokens in each stored instance: A, and B unless it is a random next.
    used = 0
    for split in ("train", "held_out"):
        ds = PretrainingDataset(out, split)
        for i in range(ds.num_samples):
            ids, b_start, random_next, _ = ds.instance(i)
            used += (b_start - 2) + (0 if random_next else len(ids) - b_start - 1)
    assert summary["used_tokens"] == used
    assert summary["source_token_share"] == used / (10 * summary["source_tokens"])
    # Google's pairing keeps nearly all of these short articles (truncation takes the rest).
    assert 0.9 < summary["source_token_share"] <= 1.0
    manifest = read_manifest(out)
    assert sum(manifest["splits"][s]["used_tokens"] for s in manifest["splits"]) == used


def test_shapes_lengths_and_token_types(train_batch, tokenizer):
    b = train_batch
    n = len(b["next_sentence_labels"])
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert b[key].shape == (n, SEQ) and b[key].dtype == torch.int64
    for key in ("masked_lm_positions", "masked_lm_ids"):
        assert b[key].shape == (n, MAX_PRED) and b[key].dtype == torch.int64
    assert b["masked_lm_weights"].dtype == torch.float32
    assert b["next_sentence_labels"].dtype == torch.int64
    lengths = b["attention_mask"].sum(1)
    # the attention mask is a prefix of ones: exactly the real tokens
    assert torch.equal(b["attention_mask"], (torch.arange(SEQ) < lengths[:, None]).long())
    assert lengths.max() <= SEQ and lengths.min() >= 5
    # rows reach the full length; these articles are short (~100 tokens), so many rows are too
    assert (lengths == SEQ).sum() > 1_000 and lengths.float().mean() > 64
    ids, types = b["input_ids"], b["token_type_ids"]
    assert torch.all(ids[:, 0] == tokenizer.cls_id)
    real = b["attention_mask"].bool()
    assert torch.all(ids[~real] == tokenizer.pad_id) and torch.all(types[~real] == 0)
    for row in range(n):
        seps = torch.nonzero(ids[row] == tokenizer.sep_id).flatten().tolist()
        assert len(seps) == 2 and seps[1] == lengths[row] - 1, row
        expected = torch.zeros(SEQ, dtype=torch.int64)
        expected[seps[0] + 1:seps[1] + 1] = 1
        assert torch.equal(types[row], expected), row


def test_masked_fraction_is_15_percent_of_maskable_tokens(train_batch):
    b = train_batch
    maskable = b["attention_mask"].sum(1) - 3  # all but [CLS] and the two [SEP]
    predicted = b["masked_lm_weights"].sum(1)
    # At 128 tokens the cap of 20 never binds: round(0.15 * 125) = 19.
    assert predicted.max() <= MAX_PRED and torch.all(maskable * 0.15 < MAX_PRED)
    assert torch.all(predicted >= 1)
    fraction = predicted.sum().item() / maskable.sum().item()
    assert abs(fraction - 0.15) < 0.01, fraction


def test_mask_replacement_80_10_10(train_batch, tokenizer):
    b = train_batch
    real = b["masked_lm_weights"] > 0
    seen = torch.gather(b["input_ids"], 1, b["masked_lm_positions"])[real]
    labels = b["masked_lm_ids"][real]
    n = len(labels)
    assert n > 50_000
    masked = (seen == tokenizer.mask_id).float().mean().item()
    kept = (seen == labels).float().mean().item()
    replaced = ((seen != labels) & (seen != tokenizer.mask_id)).float().mean().item()
    assert abs(masked - 0.8) < 0.02 and abs(kept - 0.1) < 0.02 and abs(replaced - 0.1) < 0.02
    # a random replacement is never a special token ([UNK] in the text may be kept as it is)
    random_tokens = seen[(seen != labels) & (seen != tokenizer.mask_id)]
    assert not torch.isin(random_tokens, torch.tensor(sorted(tokenizer.special_ids))).any()


def test_special_tokens_never_masked_and_padding_is_zero(train_batch, tokenizer):
    b = train_batch
    real = b["masked_lm_weights"] > 0
    labels = b["masked_lm_ids"][real]
    specials = torch.tensor([tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id])
    assert not torch.isin(labels, specials).any()
    positions = b["masked_lm_positions"]
    assert torch.all(positions[~real] == 0) and torch.all(b["masked_lm_ids"][~real] == 0)
    assert torch.all(b["masked_lm_weights"][~real] == 0)
    # real predictions come first, at distinct increasing positions inside the row
    assert torch.all(real[:, :-1] | ~real[:, 1:])
    lengths = b["attention_mask"].sum(1, keepdim=True)
    assert torch.all((positions > 0) & (positions < lengths - 1) | ~real)
    gaps = positions[:, 1:] - positions[:, :-1]
    assert torch.all((gaps > 0) | ~real[:, 1:])


def test_nsp_labels_are_googles_pairs(train_batch, prepared):
    """The labels read are the pairs stored, and their share is that of Google's pairing
    (test_pretraining_pairs.py compares the pairs one by one): a one-sentence chunk always takes
    a random next segment, which on these short articles makes about two thirds random."""
    labels = train_batch["next_sentence_labels"]
    assert set(labels.unique().tolist()) == {0, 1}
    assert len(labels) > 7_500  # standard error of the rate < 0.58%
    assert labels.sum().item() == read_manifest(prepared[0])["splits"]["train"]["random_next"]
    assert 0.6 < labels.float().mean().item() < 0.7


def _doc_token_strings(tokenizer: WordPieceTokenizer) -> list[str]:
    """Each document's WordPiece ids as ' id id ... ' (tokenized whole, not by sentence)."""
    docs = [json.loads(line)["text"] for line in wiki_lines(N_DOCS)]
    return [as_text(ids) for ids in tokenizer.ids_batch(docs)]


def _contains(haystack: str, ids) -> bool:
    return as_text(ids) in haystack


def test_instances_come_from_their_documents_and_splits_are_disjoint(prepared, tokenizer):
    out, _ = prepared
    docs = _doc_token_strings(tokenizer)
    splits = {s: PretrainingDataset(out, s) for s in ("train", "held_out")}
    owners = {}
    for name, ds in splits.items():
        owners[name] = {ds.instance(i)[3] for i in range(ds.num_samples)}
    assert owners["train"].isdisjoint(owners["held_out"])
    assert owners["train"] | owners["held_out"] == set(range(N_DOCS))
    checked_random = 0
    for name, ds in splits.items():
        same_split = "".join(docs[d] for d in sorted(owners[name]))
        for i in range(0, ds.num_samples, 7):
            ids, b_start, random_next, doc = ds.instance(i)
            a, b = ids[1:b_start - 1], ids[b_start:-1]
            assert len(a) >= 1 and len(b) >= 1 and len(ids) <= SEQ
            assert _contains(docs[doc], a), (name, i)
            if not random_next:
                # B follows A in the document (truncation may have cut the end of A or the
                # start of B, so not necessarily right after it)
                a_text, b_text = as_text(a), as_text(b)
                a_at = docs[doc].find(a_text)
                assert docs[doc].find(b_text, a_at + len(a_text) - 1) >= 0, (name, i)
            elif len(b) >= 8:
                # B comes from another document of the same split
                assert _contains(same_split, b) and not _contains(docs[doc], b), (name, i)
                checked_random += 1
    assert checked_random > 300


def test_masks_are_fresh_each_epoch_and_reproducible(prepared):
    a, b = PretrainingDataset(prepared[0]), PretrainingDataset(prepared[0])
    ids = a.instance(3)[0]
    first = a.mask(ids, 0, 3)
    again = b.mask(ids, 0, 3)
    assert all(np.array_equal(x, y) for x, y in zip(first, again, strict=True))
    different = sum(not np.array_equal(a.mask(a.instance(i)[0], 0, i)[1],
                                       a.mask(a.instance(i)[0], 1, i)[1]) for i in range(50))
    assert different >= 45


# ---- order, distribution, resume ------------------------------------------------------------

def _equal(x: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> bool:
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_two_ranks_see_the_one_rank_batch_in_halves(prepared):
    one = PretrainingDataset(prepared[0]).batches(64)
    r0 = PretrainingDataset(prepared[0]).batches(64, rank=0, world_size=2)
    r1 = PretrainingDataset(prepared[0]).batches(64, rank=1, world_size=2)
    for _ in range(3):
        whole, half0, half1 = next(one), next(r0), next(r1)
        assert half0["input_ids"].shape[0] == 32
        assert _equal(whole, {k: torch.cat([half0[k], half1[k]]) for k in whole})


def test_epoch_order_is_a_fresh_permutation(train):
    first, second = train.epoch_order(0), train.epoch_order(1)
    assert np.array_equal(np.sort(first), np.arange(train.num_samples))
    assert np.array_equal(np.sort(second), np.arange(train.num_samples))
    assert not np.array_equal(first, second)


def test_resume_returns_the_identical_next_batch(prepared):
    global_batch = 1024
    ds = PretrainingDataset(prepared[0])
    per_epoch = ds.num_samples // global_batch
    run = ds.batches(global_batch)
    states, batches = [], []
    for _ in range(per_epoch + 2):
        batches.append(next(run))
        states.append(ds.state_dict())
    assert states[per_epoch - 1]["epoch"] == 0 and states[per_epoch]["epoch"] == 1
    # resume mid-epoch, at the epoch's end, and in the next epoch, on a fresh object
    for k in (1, per_epoch - 1, per_epoch):
        resumed = PretrainingDataset(prepared[0])
        resumed.load_state_dict(json.loads(json.dumps(states[k])))
        assert _equal(next(resumed.batches(global_batch)), batches[k + 1]), k
    # resuming with two ranks instead of one continues with the same rows
    r0, r1 = PretrainingDataset(prepared[0]), PretrainingDataset(prepared[0])
    r0.load_state_dict(states[1])
    r1.load_state_dict(states[1])
    halves = next(r0.batches(global_batch, 0, 2)), next(r1.batches(global_batch, 1, 2))
    assert _equal(batches[2], {k: torch.cat([halves[0][k], halves[1][k]]) for k in halves[0]})


def test_resume_rejects_other_data(prepared):
    ds = PretrainingDataset(prepared[0])
    state = ds.state_dict()
    with pytest.raises(CheckpointError, match="num_samples"):
        ds.load_state_dict({**state, "num_samples": state["num_samples"] + 1})
    with pytest.raises(CheckpointError, match="seed"):
        PretrainingDataset(prepared[0], seed=7).load_state_dict(state)


def test_dataset_pickles_small_and_reads_the_same(prepared):
    ds = PretrainingDataset(prepared[0])
    expected = next(ds.batches(16))
    state = ds.state_dict()
    data = pickle.dumps(ds)
    shard_bytes = sum(p.stat().st_size for p in prepared[0].glob("train-*.npy"))
    assert len(data) < shard_bytes / 3  # shards are reopened, not copied
    clone = pickle.loads(data)
    assert clone.state_dict() == state
    clone.load_state_dict({**state, "position": 0})
    assert _equal(next(clone.batches(16)), expected)


def test_pad_to_longest(prepared):
    ds = PretrainingDataset(prepared[0], "held_out", pad_to_longest=True)
    batch = next(ds.eval_batches(8))
    assert batch["input_ids"].shape[1] == batch["attention_mask"].sum(1).max()

