"""Character offsets of SQuAD answers in their context: `postprocess`'s n-best entries say where
each answer lies (start, end), checked against the gold `answer_start` of the dev file."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from bertforge.data import squad
from bertforge.tokenization import WordPieceTokenizer


def oracle_nbest(examples, tokenizer, **settings):
    """Perfect logits (10 at the gold start/end token of each window holding the answer)."""
    features = squad.convert_examples_to_features(examples, tokenizer, is_training=True,
                                                  progress=False, **settings)
    start = np.zeros(features.input_ids.shape, dtype=np.float32)
    end = np.zeros_like(start)
    rows = np.arange(len(features))
    start[rows, features.start_positions] = 10.0
    end[rows, features.end_positions] = 10.0
    return squad.postprocess(examples, features, start, end, progress=False)


def squeeze(text: str) -> str:
    """Runs of the characters SQuAD splits words on, as one space (as answers join words)."""
    return re.sub("[ \t\r\n\u202f]+", " ", text)


def test_oracle_answers_start_at_the_gold_answer_start(squad_dev_file, vocab_file):
    examples, problems = squad.read_squad_examples(squad_dev_file, is_training=True)
    assert problems == []
    examples = examples[::4]  # 2,643 questions from every article
    tokenizer = WordPieceTokenizer(vocab_file, do_lower_case=True)
    predictions, nbest = oracle_nbest(examples, tokenizer, max_seq_length=192, doc_stride=64,
                                      max_query_length=64)
    exact = 0
    for example in examples:
        best = nbest[example.qas_id][0]
        assert best["text"] == predictions[example.qas_id]
        # Always: the span holds the text (up to whitespace between words) ...
        assert squeeze(example.context_text[best["start"]:best["end"]]) == best["text"]
        gold = example.answers[0]
        if best["text"] == squeeze(gold["text"]):
            # ... and where the text is the gold answer, the span is the gold span.
            assert best["start"] == gold["answer_start"], example.qas_id
            assert best["end"] == gold["answer_start"] + len(gold["text"]), example.qas_id
            exact += 1
    print(f"\n{exact} of {len(examples)} oracle answers are the gold text")
    assert exact >= 0.97 * len(examples)


def test_offsets_follow_the_contexts_own_whitespace(tmp_path, vocab_file):
    context = "  Born\u00a0in  Paris\t(1895-1943),\n\n she wrote  Les Misérables  twice. "
    answers = {"year": "1895", "city": "Paris", "book": "Les Misérables", "she": "she wrote  Les"}
    qas = [{"id": qid, "question": f"Which {qid}?",
            "answers": [{"text": text, "answer_start": context.index(text)}]}
           for qid, text in answers.items()]
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "T", "paragraphs": [
        {"context": context, "qas": qas}]}]}))
    examples, problems = squad.read_squad_examples(path, is_training=True)
    assert problems == []
    tokenizer = WordPieceTokenizer(vocab_file, do_lower_case=True)
    # Windows of 12 tokens: every answer comes from a later window too.
    predictions, nbest = oracle_nbest(examples, tokenizer, max_seq_length=16, doc_stride=3,
                                      max_query_length=4)
    for qid, text in answers.items():
        best = nbest[qid][0]
        assert (best["start"], best["end"]) == (context.index(text), context.index(text) + len(text))
    assert predictions["she"] == "she wrote Les"  # Google's text joins words with one space


def test_final_text_span_is_where_get_final_text_cuts():
    for pred, orig, lower in [("steve smith", "Steve Smith's", True), ("1895", "(1895-1943).", True),
                              ("nothing", "Else entirely", True), ("ab", "AB", False)]:
        start, end = squad.final_text_span(pred, orig, lower)
        assert orig[start:end] == squad.get_final_text(pred, orig, lower)
    assert squad.final_text_span("steve smith", "Steve Smith's", True) == (0, 11)
    assert squad.final_text_span("nothing", "Else entirely", True) == (0, 13)
