"""SQuAD v1.1 data: reading, windowed features and answer postprocessing.

The reference is Google's run_squad.py algorithm, written out again in `google_squad.py` in its
own plain style (dict features, per-word tokenization with Google's tokenizer as written out in
`google_tokenization.py`, Python sorts), and compared with bertforge's array implementation on
real dev questions.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from google_squad import (google_features, google_final_text, google_predictions,
                          google_whitespace_split)
from google_tokenization import GoogleTokenizer

from bertforge.data import squad
from bertforge.errors import ConfigError, DataError
from bertforge.evaluate.squad import evaluate
from bertforge.tokenization import WordPieceTokenizer

SMALL = dict(max_seq_length=96, doc_stride=32, max_query_length=16)  # many windows per context


def assert_same_nbest(nbest, expected_nbest):
    assert list(nbest) == list(expected_nbest)
    for qid, entries in nbest.items():
        assert [e["text"] for e in entries] == [e["text"] for e in expected_nbest[qid]]
        for ours, theirs in zip(entries, expected_nbest[qid]):
            assert ours["start_logit"] == theirs["start_logit"]
            assert ours["end_logit"] == theirs["end_logit"]
            assert ours["probability"] == pytest.approx(theirs["probability"], abs=1e-12)
        assert sum(e["probability"] for e in entries) == pytest.approx(1.0)
        assert 1 <= len(entries) <= 20


# ---- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dev_examples(squad_dev_file):
    examples, problems = squad.read_squad_examples(squad_dev_file, is_training=True)
    assert problems == []
    return examples


@pytest.fixture(scope="module")
def sample(dev_examples):
    """Every 40th dev question: 265 questions from all 48 articles."""
    return dev_examples[::40]


@pytest.fixture(scope="module")
def tokenizers(vocab_file):
    return {lower: (WordPieceTokenizer(vocab_file, do_lower_case=lower),
                    GoogleTokenizer(vocab_file, do_lower_case=lower))
            for lower in (True, False)}


def write_squad(tmp_path, paragraphs, name="squad.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "T", "paragraphs": paragraphs}]}))
    return path


def qa(qid, question="What?", answers=(("cat", 4),)):
    return {"id": qid, "question": question,
            "answers": [{"text": t, "answer_start": s} for t, s in answers]}


# ---- reading ---------------------------------------------------------------------------------


def test_dev_file_is_read_whole(dev_examples, squad_dev_file):
    raw = json.loads(squad_dev_file.read_text())
    qas = [(q, p["context"]) for a in raw["data"] for p in a["paragraphs"] for q in p["qas"]]
    assert len(dev_examples) == len(qas) == 10570
    for example, (q, context) in zip(dev_examples, qas):
        assert example.qas_id == q["id"] and example.question_text == q["question"]
        assert example.context_text == context
        assert example.answers == q["answers"]
        words = " ".join(example.doc_tokens[example.start_position:example.end_position + 1])
        assert " ".join(q["answers"][0]["text"].split()) in words


@pytest.mark.parametrize("text", [
    "plain words here", "  leading and trailing  ", "tab\tnew\nline\r\nx",
    "narrow\u202fno-break", "nbsp\u00a0stays inside", "", "   ", "a  b\u2009c",
])
def test_whitespace_split_is_googles(text):
    words, offsets = squad.split_whitespace(text)
    expected_words, expected_offsets = google_whitespace_split(text)
    assert words == expected_words
    assert offsets.tolist() == expected_offsets


def test_articles_slice(squad_dev_file):
    raw = json.loads(squad_dev_file.read_text())
    ids = [q["id"] for a in raw["data"][38:48] for p in a["paragraphs"] for q in p["qas"]]
    examples, _ = squad.read_squad_examples(squad_dev_file, False, articles=slice(38, 48))
    assert [e.qas_id for e in examples] == ids


def test_malformed_json_names_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"data": [\n  {"paragraphs": [}\n]}')
    with pytest.raises(DataError, match=r"bad\.json.*line 2, column 19"):
        squad.read_squad_examples(path, is_training=True)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        squad.read_squad_examples(tmp_path / "nope.json", is_training=False)


@pytest.mark.parametrize("content, message", [
    ({"version": "1.1"}, "'data' list"),
    ({"data": [{"title": "x"}]}, r"data\[0\] has no 'paragraphs'"),
    ({"data": [{"paragraphs": [{"qas": []}]}]}, r"data\[0\]\.paragraphs\[0\] has no 'context'"),
    ({"data": [{"paragraphs": [{"context": "a"}]}]}, "has no 'qas'"),
    ({"data": [{"paragraphs": [{"context": "a", "qas": [{"question": "q", "answers": []}]}]}]},
     r"qas\[0\] has no 'id'"),
    ({"data": [{"paragraphs": [{"context": "a", "qas": [{"id": "x", "answers": []}]}]}]},
     r"qas\[0\] has no 'question'"),
    ({"data": [{"paragraphs": [{"context": "a", "qas": [{"id": "x", "question": "q"}]}]}]},
     r"qas\[0\] has no 'answers'"),
    ({"data": [{"paragraphs": [{"context": 5, "qas": []}]}]}, "context must be a string"),
    ({"data": [{"paragraphs": [{"context": "a", "qas": [qa("x", answers=(("a", "0"),))]}]}]},
     r"qas\[0\]\.answers\[0\]\.answer_start must be an integer, got str"),
])
def test_wrong_structure_is_a_data_error(tmp_path, content, message):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(content))
    with pytest.raises(DataError, match=message):
        squad.read_squad_examples(path, is_training=True)


def test_mismatched_answer_is_skipped_in_training_only(tmp_path):
    path = write_squad(tmp_path, [{"context": "The cat sat on the mat.", "qas": [
        qa("good", answers=[("cat", 4)]),
        qa("moved", answers=[("mat", 4)]),       # answer_start points at "cat"
        qa("outside", answers=[("mat", 40)]),
        qa("empty", answers=[("", 0)]),
        qa("none", answers=[]),
        qa("good2", answers=[("mat.", 19), ("the mat", 15)]),
    ]}])
    examples, problems = squad.read_squad_examples(path, is_training=True)
    assert [e.qas_id for e in examples] == ["good", "good2"]
    assert [(e.start_position, e.end_position) for e in examples] == [(1, 1), (5, 5)]
    by_id = {p.qas_id: p.message for p in problems}
    assert list(by_id) == ["moved", "outside", "empty", "none"]
    assert "could not find first answer 'mat'" in by_id["moved"] and "'cat'" in by_id["moved"]
    assert "outside the context" in by_id["outside"]

    examples, problems = squad.read_squad_examples(path, is_training=False)
    assert problems == []
    positions = {e.qas_id: e.start_position for e in examples}
    assert positions == {"good": 1, "moved": None, "outside": None, "empty": None, "none": None,
                         "good2": 5}


def test_empty_context_and_repeated_ids_are_problems(tmp_path):
    path = write_squad(tmp_path, [
        {"context": "  \n ", "qas": [qa("e1"), qa("e2")]},
        {"context": "The cat sat.", "qas": [qa("a"), qa("a", "Again?"), qa("b")]},
    ])
    for is_training in (True, False):
        examples, problems = squad.read_squad_examples(path, is_training)
        assert [e.qas_id for e in examples] == ["a", "b"]
        assert examples[0].question_text == "What?"
        assert [(p.qas_id, p.message) for p in problems] == [
            ("e1", "context is empty"), ("e2", "context is empty"),
            ("a", "question id repeats an earlier question's id")]


def test_prediction_files_may_omit_answers(tmp_path):
    path = write_squad(tmp_path, [{"context": "The cat sat.", "qas": [{"id": "q", "question": "Who?"}]}])
    examples, problems = squad.read_squad_examples(path, is_training=False)
    assert problems == [] and examples[0].answers == [] and examples[0].start_position is None


# ---- features --------------------------------------------------------------------------------


@pytest.mark.parametrize("lower", [True, False])
@pytest.mark.parametrize("settings", [{}, SMALL], ids=["384-128-64", "96-32-16"])
def test_features_match_google(sample, tokenizers, lower, settings):
    ours_tok, google_tok = tokenizers[lower]
    features = squad.convert_examples_to_features(sample, ours_tok, is_training=True,
                                                  progress=False, **settings)
    expected = google_features(sample, google_tok, **settings)
    assert len(features) == len(expected)
    for n, g in enumerate(expected):
        assert features.input_ids[n].tolist() == g["input_ids"]
        assert features.attention_mask[n].tolist() == g["input_mask"]
        assert features.token_type_ids[n].tolist() == g["segment_ids"]
        assert (features.start_positions[n], features.end_positions[n]) == (g["start"], g["end"])
        assert features.example_index[n] == g["example_index"]
        assert features.tokens(n) == g["tokens"]
        assert features.token_to_orig_map(n) == g["token_to_orig_map"]
        flagged = np.flatnonzero(features.token_is_max_context[n]).tolist()
        assert flagged == [p for p, v in g["token_is_max_context"].items() if v]
    if settings:
        assert len(features) > 3 * len(sample)  # the small setting really makes many windows


def test_single_window_features_by_hand(dev_examples, tokenizers):
    """Short contexts: [CLS] question [SEP] context [SEP] with Google's tokenizer."""
    ours, google = tokenizers[True]
    short = [e for e in dev_examples if len(e.context_text) < 400][:20]
    features = squad.convert_examples_to_features(short, ours, progress=False)
    assert len(features) == len(short)
    for n, example in enumerate(short):
        question = google.tokenize(example.question_text)
        context = [t for w in example.doc_tokens for t in google.tokenize(w)]
        tokens = ["[CLS]", *question, "[SEP]", *context, "[SEP]"]
        assert features.input_ids[n, :len(tokens)].tolist() == google.convert_tokens_to_ids(tokens)
        assert not features.input_ids[n, len(tokens):].any()
        assert features.token_is_max_context[n].sum() == len(context)


def test_windows_overlap_and_max_context_is_unique(sample, tokenizers):
    tok = tokenizers[True][0]
    features = squad.convert_examples_to_features(sample, tok, progress=False, **SMALL)
    for i in range(len(sample)):
        rows = np.flatnonzero(features.example_index == i)
        ctx = features.contexts[features.context_index[rows[0]]]
        starts = features.doc_span_start[rows]
        lengths = features.doc_span_length[rows]
        assert starts[0] == 0 and starts[-1] + lengths[-1] == len(ctx.ids)
        assert (np.diff(starts) == SMALL["doc_stride"]).all()
        max_context_count = np.zeros(len(ctx.ids), dtype=int)
        for n, start, length in zip(rows, starts, lengths):
            first = features.doc_offset[n]
            # The window shows context tokens start .. start+length-1, followed by [SEP].
            assert (features.input_ids[n, first:first + length] == ctx.ids[start:start + length]).all()
            assert features.input_ids[n, first + length] == tok.sep_id
            flags = features.token_is_max_context[n]
            assert not flags[:first].any() and not flags[first + length:].any()
            max_context_count[start:start + length] += flags[first:first + length]
        assert (max_context_count == 1).all()


def test_answer_positions_point_at_the_answer(sample, tokenizers):
    tok = tokenizers[True][0]
    features = squad.convert_examples_to_features(sample, tok, is_training=True, progress=False, **SMALL)
    has_answer = features.start_positions > 0
    assert has_answer.any() and (~has_answer).any()
    assert (features.end_positions[~has_answer] == 0).all()
    for n in np.flatnonzero(has_answer):
        example = sample[features.example_index[n]]
        s, e = features.start_positions[n], features.end_positions[n]
        assert features.doc_offset[n] <= s <= e < features.doc_offset[n] + features.doc_span_length[n]
        # Either exactly the answer's tokens ("1895" inside "(1895-1943)."), or, where the
        # answer is part of a token ("Japan" in "Japanese"), all tokens of its words.
        words = example.doc_tokens[example.start_position:example.end_position + 1]
        assert features.tokens(n)[s:e + 1] in (tok.tokenize(example.answers[0]["text"]),
                                                 [t for w in words for t in tok.tokenize(w)])


def test_subset_shard_and_batch(sample, tokenizers):
    features = squad.convert_examples_to_features(sample, tokenizers[True][0], progress=False, **SMALL)
    world = 3
    shards = [features.shard(r, world) for r in range(world)]
    assert sum(len(s) for s in shards) == len(features)
    for r, shard in enumerate(shards):
        assert (shard.input_ids == features.input_ids[r::world]).all()
        assert (shard.example_index == features.example_index[r::world]).all()
        assert shard.token_to_orig_map(0) == features.token_to_orig_map(r)
    picked = features.subset([5, 2])
    assert picked.tokens(0) == features.tokens(5) and picked.tokens(1) == features.tokens(2)
    batch = features.batch([0, 1])
    assert {k: (v.dtype, v.shape) for k, v in batch.items()} == {
        "input_ids": (np.int64, (2, 96)), "token_type_ids": (np.int64, (2, 96)),
        "attention_mask": (np.int64, (2, 96)), "start_positions": (np.int64, (2,)),
        "end_positions": (np.int64, (2,))}
    with pytest.raises(ValueError):
        features.shard(3, 3)


def test_feature_settings_are_checked(sample, tokenizers):
    tok = tokenizers[True][0]
    with pytest.raises(ConfigError, match="max_query_length"):
        squad.convert_examples_to_features(sample, tok, max_seq_length=64, max_query_length=64)
    with pytest.raises(ConfigError, match="doc_stride"):
        squad.convert_examples_to_features(sample, tok, doc_stride=0)


def test_training_features_need_answer_positions(tmp_path, tokenizers):
    path = write_squad(tmp_path, [{"context": "The cat sat.", "qas": [qa("q", answers=[("dog", 4)])]}])
    examples, _ = squad.read_squad_examples(path, is_training=False)
    with pytest.raises(ValueError, match="q"):
        squad.convert_examples_to_features(examples, tokenizers[True][0], is_training=True)


# ---- postprocessing --------------------------------------------------------------------------


@pytest.mark.parametrize("lower", [True, False])
def test_postprocess_matches_google(sample, tokenizers, lower):
    ours_tok, google_tok = tokenizers[lower]
    features = squad.convert_examples_to_features(sample, ours_tok, progress=False, **SMALL)
    expected_features = google_features(sample, google_tok, **SMALL)
    rng = np.random.default_rng(0)
    shape = features.input_ids.shape
    # Noisy logits with a bump at the gold tokens: realistic n-best lists, and some windows
    # whose best spans are all invalid (questions with no candidate at all).
    start = (2 * rng.standard_normal(shape)).astype(np.float32)
    end = (2 * rng.standard_normal(shape)).astype(np.float32)
    start[np.arange(shape[0]), features.start_positions] += 3
    end[np.arange(shape[0]), features.end_positions] += 3
    # Google ranks padding too; bertforge leaves it out, which is the same when it scores lowest.
    padding = features.attention_mask == 0
    start[padding] = end[padding] = -1e30
    predictions, nbest = squad.postprocess(sample, features, start, end, progress=False)
    expected, expected_nbest = google_predictions(
        sample, expected_features, start.astype(np.float64).tolist(),
        end.astype(np.float64).tolist(), lower)
    assert predictions == expected
    assert_same_nbest(nbest, expected_nbest)
    assert sum(p == "" for p in predictions.values()) < len(sample) / 2


def test_oracle_round_trip_on_all_dev_questions(dev_examples, squad_dev_file, tokenizers):
    """Perfect logits (10 at the gold start/end token, 0 elsewhere, gold of windows without
    the answer at [CLS]) through the real postprocessing and the official metric."""
    tok = tokenizers[True][0]
    t0 = time.perf_counter()
    features = squad.convert_examples_to_features(dev_examples, tok, max_seq_length=384,
                                                  doc_stride=128, max_query_length=64,
                                                  is_training=True, progress=False)
    t1 = time.perf_counter()
    start = np.zeros(features.input_ids.shape, dtype=np.float32)
    end = np.zeros_like(start)
    rows = np.arange(len(features))
    start[rows, features.start_positions] = 10.0
    end[rows, features.end_positions] = 10.0
    predictions, _ = squad.postprocess(dev_examples, features, start, end, progress=False)
    t2 = time.perf_counter()
    scores = evaluate(squad_dev_file, predictions)
    print(f"\noracle dev: {len(dev_examples)} questions -> {len(features)} features "
          f"(features {t1 - t0:.2f} s, postprocess {t2 - t1:.2f} s): "
          f"EM {scores['exact_match']:.4f}, F1 {scores['f1']:.4f}")
    assert len(predictions) == 10570
    assert scores["f1"] >= 99.0 and scores["exact_match"] >= 97.0


def test_every_example_gets_a_prediction(tmp_path, tokenizers):
    # A context whose only word is a control character has no WordPiece token and no window.
    path = write_squad(tmp_path, [{"context": "\x07", "qas": [qa("void", answers=[("\x07", 0)])]},
                                  {"context": "The cat sat.", "qas": [qa("cat")]}])
    examples, _ = squad.read_squad_examples(path, is_training=False)
    features = squad.convert_examples_to_features(examples, tokenizers[True][0], max_seq_length=32,
                                                  max_query_length=8, progress=False)
    assert features.example_index.tolist() == [1]
    logits = np.zeros(features.input_ids.shape)
    predictions, nbest = squad.postprocess(examples, features, logits, logits, progress=False)
    assert predictions["void"] == "" and nbest["void"][0]["probability"] == 1.0
    assert predictions["cat"] in {"The", "cat", "sat.", "The cat", "cat sat.", "The cat sat."}


def test_max_answer_length_and_n_best_size(sample, tokenizers):
    features = squad.convert_examples_to_features(sample, tokenizers[True][0], progress=False)
    rng = np.random.default_rng(1)
    start = rng.standard_normal(features.input_ids.shape)
    end = rng.standard_normal(features.input_ids.shape)
    _, nbest = squad.postprocess(sample, features, start, end, n_best_size=5,
                                 max_answer_length=3, progress=False)
    assert all(len(entries) <= 5 for entries in nbest.values())
    # Up to 3 WordPiece tokens never span more than 3 whitespace words.
    assert all(len(e["text"].split()) <= 3 for entries in nbest.values() for e in entries)
    with pytest.raises(ValueError, match="shape"):
        squad.postprocess(sample, features, start[:, :10], end[:, :10])


@pytest.fixture(scope="module")
def short(dev_examples, tokenizers):
    """Questions about short contexts at Google's 384-128-64 (every window has padding), their
    features, and Google's features of the same."""
    examples = [e for e in dev_examples[::7] if len(e.context_text) < 800][:200]
    ours_tok, google_tok = tokenizers[True]
    features = squad.convert_examples_to_features(examples, ours_tok, is_training=True,
                                                  progress=False)
    return examples, features, google_features(examples, google_tok)


def gold_bump_logits(features, seed):
    """Noise with a bump at the gold tokens, (N, T) float32, padding included."""
    rng = np.random.default_rng(seed)
    shape = features.input_ids.shape
    start = (2 * rng.standard_normal(shape)).astype(np.float32)
    end = (2 * rng.standard_normal(shape)).astype(np.float32)
    start[np.arange(shape[0]), features.start_positions] += 3
    end[np.arange(shape[0]), features.end_positions] += 3
    return start, end


def test_padding_never_takes_an_n_best_place(short):
    """Padding scored above every real token must not change a prediction, whether the
    logits come full width, trimmed to the longest window, or padded with any value."""
    sample, features, expected_features = short
    start, end = gold_bump_logits(features, seed=2)
    padding = features.attention_mask == 0
    assert padding.any(axis=1).all()  # every window has padding to tempt the top 20
    lowest = [np.where(padding, -1e30, x) for x in (start, end)]
    expected = google_predictions(sample, expected_features, lowest[0].astype(np.float64).tolist(),
                                  lowest[1].astype(np.float64).tolist(), True)
    high = [np.where(padding, 50.0, x) for x in (start, end)]
    # Google's ranking over all positions would let such padding crowd out real answers.
    crowded = google_predictions(sample, expected_features, high[0].astype(np.float64).tolist(),
                                 high[1].astype(np.float64).tolist(), True)
    assert crowded[0] != expected[0]

    longest = int(features.attention_mask.sum(axis=1).max())
    assert longest < features.max_seq_length - 50
    rng = np.random.default_rng(3)
    # As gathered from length-sorted batches: -inf padding up to the batch's width, 0.0 after.
    cut = rng.integers(features.attention_mask.sum(axis=1), longest + 1)[:, None]
    positions = np.arange(features.max_seq_length)[None, :]
    gathered = [np.where(padding & (positions < cut), -np.inf, np.where(padding, 0.0, x))
                for x in (start, end)]
    variants = {
        "full width, high padding": high,
        "trimmed, high padding": [x[:, :longest] for x in high],
        "padding -1e9": [np.where(padding, -1e9, x) for x in (start, end)],
        "padding +1e9": [np.where(padding, 1e9, x) for x in (start, end)],
        "padding 0.0": [np.where(padding, 0.0, x) for x in (start, end)],
        "padding -inf": [np.where(padding, -np.inf, x) for x in (start, end)],
        "gathered batches, trimmed": [x[:, :longest] for x in gathered],
    }
    for name, (s_logits, e_logits) in variants.items():
        predictions, nbest = squad.postprocess(sample, features, s_logits, e_logits,
                                               progress=False)
        assert predictions == expected[0], name
        assert_same_nbest(nbest, expected[1])


def test_minus_inf_marks_impossible_positions(short):
    sample, features, expected_features = short
    start, end = gold_bump_logits(features, seed=4)
    real = features.attention_mask == 1
    rng = np.random.default_rng(5)
    impossible = real & (rng.random(start.shape) < 0.3)
    impossible[np.arange(len(features)), features.start_positions] = True  # even the gold start
    # With at least 20 finite real positions a window, -inf and a very low score are the same
    # to Google's ranking (given padding ranks lowest too).
    assert ((real & ~impossible).sum(axis=1) >= 20).all()
    start = np.where(impossible, -np.inf, start)
    predictions, nbest = squad.postprocess(sample, features, start, end, progress=False)
    lowest = [np.where(~real, -1e30, np.where(impossible, -1e30, start)), np.where(real, end, -1e30)]
    expected = google_predictions(sample, expected_features, lowest[0].astype(np.float64).tolist(),
                                  lowest[1].astype(np.float64).tolist(), True)
    assert predictions == expected[0]
    starts = {e["start_logit"] for es in nbest.values() for e in es}
    assert all(math.isfinite(x) for x in starts)
    assert all(math.isfinite(e["probability"]) for es in nbest.values() for e in es)


def test_logit_shape_contract(short):
    sample, features, _ = short
    start, end = gold_bump_logits(features, seed=6)
    longest = int(features.attention_mask.sum(axis=1).max())
    for bad in (start[:, :longest - 1], np.pad(start, ((0, 0), (0, 1))), start[1:], start[0]):
        with pytest.raises(ValueError, match=rf"start_logits must have shape .* = \({len(features)}, W\)"):
            squad.postprocess(sample, features, bad, end, progress=False)
    for value in (np.nan, np.inf):
        broken = end.copy()
        broken[0, 5] = value
        with pytest.raises(ValueError, match="end_logits contain NaN or \\+inf"):
            squad.postprocess(sample, features, start, broken, progress=False)


@pytest.mark.parametrize("pred, orig, lower, expected", [
    ("steve smith", "Steve Smith's", True, "Steve Smith"),
    ("1895", "(1895-1943).", True, "1895"),
    ("creme brulee", "Crème Brûlée,", True, "Crème Brûlée"),
    ("Crème", "Crème Brûlée,", False, "Crème"),
    ("tokyo", "東京 Tokyo", True, "Tokyo"),
    ("nowhere", "Steve Smith's", True, "Steve Smith's"),
    ("\u03bf\u03b4\u03bf\u03c2", "\u039f\u0394\u039f\u03a3.", True,
     "\u039f\u0394\u039f\u03a3"),  # Greek final sigma, as Python lower-cases it
])
def test_get_final_text(pred, orig, lower, expected):
    assert squad.get_final_text(pred, orig, lower) == expected
    assert google_final_text(pred, orig, lower) == expected


def test_write_predictions_is_atomic_json(tmp_path):
    out = tmp_path / "run"
    predictions = {"q1": "Crème", "q2": ""}
    nbest = {"q1": [{"text": "Crème", "probability": 1.0, "start_logit": 1.0, "end_logit": 2.0}],
             "q2": [{"text": "", "probability": 1.0, "start_logit": 0.0, "end_logit": 0.0}]}
    out.mkdir()
    (out / "predictions.json").write_text("stale")
    paths = squad.write_predictions(out, predictions, nbest)
    assert json.loads(paths[0].read_text(encoding="utf-8")) == predictions
    assert json.loads(paths[1].read_text(encoding="utf-8")) == nbest
    assert sorted(p.name for p in out.iterdir()) == ["nbest_predictions.json", "predictions.json"]
