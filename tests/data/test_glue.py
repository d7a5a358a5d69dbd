"""GLUE reading, features and submission files.

Real files (../shared/data/glue) are checked against GLUE's published sizes and against an
independent plain-Python parse; the tasks without real files here are read from fixtures in
GLUE's exact layout (tests/fixtures/glue/<TASK>/). Features are compared with transformers'
BertTokenizerLegacy plus Google's `_truncate_seq_pair` re-written in this file.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, shared
from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

from bertforge.data.glue import (
    TASKS,
    GlueExample,
    encode_examples,
    get_task,
    named_labels,
    read_file,
    read_split,
    write_submission,
)
from bertforge.errors import ConfigError, DataError
from bertforge.tokenization import WordPieceTokenizer

GLUE_FIXTURES = FIXTURES / "glue"


@pytest.fixture(scope="module")
def glue_dir() -> Path:
    return shared("glue")


# ---------------------------------------------------------------------------------------------
# Task registry


@pytest.mark.parametrize("alias, name", [
    ("cola", "cola"), ("CoLA", "cola"), ("SST-2", "sst2"), ("sst2", "sst2"), ("sts-b", "stsb"),
    ("STS-B", "stsb"), ("MNLI", "mnli"), ("qqp", "qqp"), ("QNLI", "qnli"), ("Rte", "rte"),
    ("WNLI", "wnli"), ("mrpc", "mrpc"),
])
def test_get_task_accepts_glue_names(alias: str, name: str) -> None:
    assert get_task(alias).name == name


def test_unknown_task_lists_valid_tasks() -> None:
    with pytest.raises(ConfigError) as e:
        get_task("squad")
    for name in ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"):
        assert name in str(e.value)
    assert "'squad'" in str(e.value)


def test_registry_matches_glue_release() -> None:
    assert {t.glue_name for t in TASKS.values()} == {
        "CoLA", "SST-2", "MRPC", "STS-B", "QQP", "MNLI", "QNLI", "RTE", "WNLI"}
    assert get_task("stsb").labels is None
    assert get_task("mnli").labels == ("contradiction", "entailment", "neutral")
    submission_files = {s.submission_file for t in TASKS.values() for s in t.splits
                        if s.submission_file}
    assert submission_files == {"CoLA.tsv", "SST-2.tsv", "MRPC.tsv", "STS-B.tsv", "QQP.tsv",
                                "MNLI-m.tsv", "MNLI-mm.tsv", "QNLI.tsv", "RTE.tsv", "WNLI.tsv"}
    mnli = get_task("mnli")
    assert [s.file for s in mnli.splits_of("dev")] == ["dev_matched.tsv", "dev_mismatched.tsv"]
    assert [s.file for s in mnli.splits_of("test")] == ["test_matched.tsv",
                                                         "test_mismatched.tsv"]


# Each class's name, as Hugging Face's `glue` data sets name them (their ClassLabel names), in
# GLUE's class order.
CLASS_NAMES = {
    "cola": ("unacceptable", "acceptable"), "sst2": ("negative", "positive"),
    "mrpc": ("not_equivalent", "equivalent"), "qqp": ("not_duplicate", "duplicate"),
    "mnli": ("contradiction", "entailment", "neutral"), "qnli": ("entailment", "not_entailment"),
    "rte": ("entailment", "not_entailment"), "wnli": ("not_entailment", "entailment"), "stsb": None,
}


def test_classes_have_names_and_files_keep_glue_labels() -> None:
    assert {name: t.label_names for name, t in TASKS.items()} == CLASS_NAMES
    assert get_task("mrpc").labels == ("0", "1")  # what the files and submissions write


@pytest.mark.parametrize("task, spelling, class_id", [
    ("mnli", "ENTAILMENT", 1), ("mnli", "Neutral", 2), ("mnli", "contradiction", 0),
    ("sst2", "NEGATIVE", 0), ("sst2", "positive", 1), ("sst2", "1", 1),
    ("mrpc", "not_equivalent", 0), ("mrpc", "Not-Equivalent", 0), ("mrpc", "equivalent", 1), ("mrpc", "0", 0),
    ("qnli", "NOT ENTAILMENT", 1), ("wnli", "not_entailment", 0), ("cola", "acceptable", 1),
    ("mnli", "LABEL_0", None), ("mrpc", "paraphrase", None), ("stsb", "0", None),
])
def test_class_id_reads_names_and_file_labels_in_any_case(task: str, spelling: str, class_id: int | None) -> None:
    assert get_task(task).class_id(spelling) == class_id


def test_named_labels_names_a_glue_checkpoints_file_labels() -> None:
    assert named_labels("glue/mrpc", ["0", "1"]) == ["not_equivalent", "equivalent"]
    assert named_labels("glue/sst2", ["1", "0"]) == ["positive", "negative"]
    assert named_labels("glue/mnli", ["ENTAILMENT", "neutral", "contradiction"]) == [
        "entailment", "neutral", "contradiction"]
    # Kept: labels of no GLUE task, or not all the task's, or repeated.
    assert named_labels(None, ["0", "1"]) == ["0", "1"]
    assert named_labels("squad", ["0", "1"]) == ["0", "1"]
    assert named_labels("glue/mrpc", ["0", "yes"]) == ["0", "yes"]
    assert named_labels("glue/mrpc", ["1", "1"]) == ["1", "1"]


def test_unknown_split_lists_valid_splits(glue_dir: Path) -> None:
    with pytest.raises(ConfigError, match="dev_matched"):
        read_split("mnli", glue_dir, "dev")


# ---------------------------------------------------------------------------------------------
# Real files: published sizes and an independent parse


@pytest.mark.parametrize("task, split, size", [
    ("mrpc", "train", 3668), ("mrpc", "dev", 408), ("mrpc", "test", 1725),
    ("sst2", "train", 67349), ("sst2", "dev", 872),
    ("cola", "train", 8551), ("cola", "dev", 1043),
])
def test_real_files_have_published_sizes(glue_dir: Path, task: str, split: str, size: int
                                         ) -> None:
    assert len(read_split(task, glue_dir, split)) == size


def _plain_parse(path: Path, label_col: int | None, text_cols: tuple[int, ...],
                 header: bool) -> list[tuple]:
    """An independent reader: strip the BOM, split lines and tabs, no quote handling."""
    lines = path.read_text(encoding="utf-8-sig").split("\n")
    rows = [line.split("\t") for line in lines[1 if header else 0:] if line]
    return [(*(r[c] for c in text_cols), r[label_col] if label_col is not None else None)
            for r in rows]


@pytest.mark.parametrize("task, folder, file, label_col, text_cols, header", [
    ("mrpc", "MRPC", "train.tsv", 0, (3, 4), True),
    ("mrpc", "MRPC", "dev.tsv", 0, (3, 4), True),
    ("mrpc", "MRPC", "test.tsv", None, (3, 4), True),
    ("mrpc", "MRPC", "msr_paraphrase_train.txt", 0, (3, 4), True),
    ("mrpc", "MRPC", "msr_paraphrase_test.txt", 0, (3, 4), True),
    ("sst2", "SST-2", "train.tsv", 1, (0,), True),
    ("sst2", "SST-2", "dev.tsv", 1, (0,), True),
    ("cola", "CoLA", "train.tsv", 1, (3,), False),
    ("cola", "CoLA", "dev.tsv", 1, (3,), False),
])
def test_real_files_equal_plain_parse(task: str, folder: str, file: str, label_col: int | None,
                                      text_cols: tuple[int, ...], header: bool) -> None:
    path = shared("glue", folder, file)
    examples = read_file(task, path)
    got = [(e.text_a, e.text_b, e.label) if len(text_cols) == 2 else (e.text_a, e.label)
           for e in examples]
    assert got == _plain_parse(path, label_col, text_cols, header)


def test_mrpc_original_files_sizes_and_labels() -> None:
    train = read_file("mrpc", shared("glue", "MRPC", "msr_paraphrase_train.txt"))
    test = read_file("mrpc", shared("glue", "MRPC", "msr_paraphrase_test.txt"))
    assert (len(train), len(test)) == (4076, 1725)
    assert all(e.label in ("0", "1") for e in train + test)
    # GLUE's unlabelled MRPC test.tsv holds the same pairs in the same order.
    glue_test = read_split("mrpc", shared("glue"), "test")
    assert [(e.text_a, e.text_b) for e in glue_test] == [(e.text_a, e.text_b) for e in test]


def test_real_files_keep_quotes_and_index(glue_dir: Path) -> None:
    dev = read_split("mrpc", glue_dir, "dev")
    # A bare leading quote that a CSV quote parser would treat as opening a quoted field.
    assert dev[0].text_b == ('"The foodservice pie business does not fit our long-term '
                             'growth strategy.')
    assert dev[0].label == "1"
    test = read_split("mrpc", glue_dir, "test")
    assert [e.guid for e in test] == [str(i) for i in range(1725)]
    assert all(e.label is None for e in test)
    cola = read_split("cola", glue_dir, "dev")
    # dev.tsv's last line has no newline.
    assert cola[-1] == GlueExample("dev-1042", "John talked to Bill about himself.", None, "1")


# ---------------------------------------------------------------------------------------------
# Fixtures in GLUE's layout for the tasks without real files here


# GLUE's column names, written down here from the GLUE release (not taken from the code):
# folder, id column, text column(s), label column.
GLUE_LAYOUT = {
    "qqp": ("QQP", "id", ("question1", "question2"), "is_duplicate"),
    "mnli": ("MNLI", "index", ("sentence1", "sentence2"), "gold_label"),
    "qnli": ("QNLI", "index", ("question", "sentence"), "label"),
    "rte": ("RTE", "index", ("sentence1", "sentence2"), "label"),
    "wnli": ("WNLI", "index", ("sentence1", "sentence2"), "label"),
    "stsb": ("STS-B", "index", ("sentence1", "sentence2"), "score"),
    "cola": ("CoLA", "index", ("sentence",), "label"),
    "sst2": ("SST-2", "index", ("sentence",), "label"),
}
TRAIN_LABELS = {
    "qqp": ["0", "1", "0", "1", "0"],
    "mnli": ["neutral", "entailment", "entailment", "entailment", "neutral", "contradiction"],
    "qnli": ["entailment", "not_entailment", "not_entailment", "entailment"],
    "rte": ["not_entailment", "entailment", "entailment"],
    "wnli": ["1", "1", "1", "0"],
    "stsb": [5.0, 3.8, 3.8, 2.6, 0.0],
}
FIXTURE_SPLITS = [
    *[(task, split) for task in ("qqp", "qnli", "rte", "wnli", "stsb")
      for split in ("train", "dev", "test")],
    *[("mnli", split) for split in ("train", "dev_matched", "dev_mismatched", "test_matched",
                                    "test_mismatched")],
    ("cola", "test"), ("sst2", "test"),
]


def _plain_parse_by_header(path: Path, id_col: str, text_cols: tuple[str, ...], label_col: str
                           ) -> list[tuple]:
    """An independent reader for headed files: columns looked up by GLUE's names."""
    header, *rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]
    assert all(len(r) == len(header) for r in rows)
    cols = [header.index(c) for c in (id_col, *text_cols)]
    label = header.index(label_col) if label_col in header else None
    return [(*(r[c] for c in cols), r[label] if label is not None else None) for r in rows]


@pytest.mark.parametrize("task, split", FIXTURE_SPLITS,
                         ids=[f"{t}-{s}" for t, s in FIXTURE_SPLITS])
def test_fixture_files_equal_plain_parse(task: str, split: str) -> None:
    folder, id_col, text_cols, label_col = GLUE_LAYOUT[task]
    file = "dev.tsv" if split == "dev" else f"{split}.tsv"
    expected = _plain_parse_by_header(GLUE_FIXTURES / folder / file, id_col, text_cols, label_col)
    examples = read_split(task, GLUE_FIXTURES, split)
    got = [(e.guid, e.text_a, e.text_b, e.label) if e.text_b is not None
           else (e.guid, e.text_a, e.label) for e in examples]
    if task == "stsb":
        expected = [(*row[:-1], float(row[-1]) if row[-1] is not None else None)
                    for row in expected]
    assert got == expected
    assert (split.startswith("test")) == all(e.label is None for e in examples)


@pytest.mark.parametrize("task", list(TRAIN_LABELS))
def test_fixture_train_labels(task: str) -> None:
    labels = [e.label for e in read_split(task, GLUE_FIXTURES, "train")]
    assert labels == TRAIN_LABELS[task]


def test_fixture_labels_and_bare_quotes() -> None:
    mnli = read_split("mnli", GLUE_FIXTURES, "dev_mismatched")
    assert [e.label for e in mnli] == ["contradiction", "contradiction", "entailment",
                                       "contradiction"]
    assert mnli[3].text_a == '"A recent study" found the knitting mills lost ground.'
    assert [e.label for e in read_split("stsb", GLUE_FIXTURES, "train")] == [
        5.0, 3.8, 3.8, 2.6, 0.0]
    qqp = read_split("qqp", GLUE_FIXTURES, "test")
    assert [e.guid for e in qqp] == ["0", "1", "2"]
    assert qqp[2].text_a == 'How do I use "Instagram" for business?'


def test_task_folder_or_glue_root_both_work() -> None:
    from_root = read_split("rte", GLUE_FIXTURES, "train")
    from_task_dir = read_split("rte", GLUE_FIXTURES / "RTE", "train")
    assert from_root == from_task_dir


# ---------------------------------------------------------------------------------------------
# Line ends, BOM, last line


@pytest.mark.parametrize("transform", [
    pytest.param(lambda b: b.replace(b"\n", b"\r\n"), id="crlf"),
    pytest.param(lambda b: b"\xef\xbb\xbf" + b, id="bom"),
    pytest.param(lambda b: b.rstrip(b"\n"), id="no-final-newline"),
    pytest.param(lambda b: b"\xef\xbb\xbf" + b.replace(b"\n", b"\r\n").rstrip(b"\r\n"),
                 id="bom-crlf-no-final-newline"),
])
def test_encodings_and_line_ends(tmp_path: Path, transform) -> None:
    source = GLUE_FIXTURES / "MNLI" / "dev_mismatched.tsv"
    variant = tmp_path / "dev_mismatched.tsv"
    variant.write_bytes(transform(source.read_bytes()))
    assert read_file("mnli", variant) == read_file("mnli", source)


@pytest.mark.parametrize("task, parts", [("mnli", ("MNLI", "dev_mismatched.tsv")),
                                         ("cola", ("CoLA", "dev.tsv"))])
def test_old_mac_cr_only_line_ends(tmp_path: Path, glue_dir: Path, task: str,
                                   parts: tuple[str, str]) -> None:
    """A file whose lines all end with CR alone reads as Python's universal newlines (and so
    Hugging Face's GLUE readers) read it: the same rows as with LF."""
    source = glue_dir.joinpath(*parts) if task == "cola" else GLUE_FIXTURES.joinpath(*parts)
    variant = tmp_path / source.name
    variant.write_bytes(source.read_bytes().replace(b"\n", b"\r"))
    assert b"\n" not in variant.read_bytes()
    assert read_file(task, variant) == read_file(task, source)


def test_a_file_that_is_one_long_line_is_not_dumped_in_the_message(tmp_path: Path) -> None:
    path = tmp_path / "train.tsv"
    path.write_text("no header here " * 1000, encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_file("sst2", path)
    message = str(e.value)
    assert f"{path}:1: expected a GLUE SST-2 header" in message
    assert len(message) < 600 and "... (" in message


def test_cola_headerless_crlf(tmp_path: Path) -> None:
    path = tmp_path / "train.tsv"
    path.write_bytes(b"gj04\t1\t\tThe pond froze solid.\r\ngj04\t0\t*\tHarry coughed himself.")
    assert read_file("cola", path) == [
        GlueExample("train-0", "The pond froze solid.", None, "1"),
        GlueExample("train-1", "Harry coughed himself.", None, "0")]


# ---------------------------------------------------------------------------------------------
# Bad input


def test_wrong_column_count_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "train.tsv"
    path.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tentailment\n",
                    encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_file("rte", path)
    assert f"{path}:3" in str(e.value)
    assert "expected 4 tab-separated fields, found 3" in str(e.value)


def test_headerless_wrong_column_count(tmp_path: Path) -> None:
    path = tmp_path / "dev.tsv"
    path.write_text("gj04\t1\t\tFine.\ngj04\t1\tFine too.\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"dev\.tsv:2: expected 4"):
        read_file("cola", path)


def test_label_outside_label_set(tmp_path: Path) -> None:
    path = tmp_path / "dev_matched.tsv"
    lines = (GLUE_FIXTURES / "MNLI" / "dev_matched.tsv").read_text(encoding="utf-8").splitlines()
    lines[2] = lines[2].rsplit("\t", 1)[0] + "\tentails"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_file("mnli", path)
    assert f"{path}:3" in str(e.value) and "'entails'" in str(e.value)
    assert "contradiction" in str(e.value)


def test_bad_score(tmp_path: Path) -> None:
    path = tmp_path / "dev.tsv"
    lines = (GLUE_FIXTURES / "STS-B" / "dev.tsv").read_text(encoding="utf-8").splitlines()
    lines[1] = lines[1].rsplit("\t", 1)[0] + "\tfive"
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(DataError, match=r"dev\.tsv:2: expected a finite score"):
        read_file("stsb", path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found") as e:
        read_split("qnli", tmp_path, "train")
    assert str(tmp_path / "train.tsv") in str(e.value)


def test_missing_header(tmp_path: Path) -> None:
    path = tmp_path / "train.tsv"
    path.write_text("0\tWhy?\tBecause.\tentailment\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.tsv:1: expected a GLUE QNLI header"):
        read_file("qnli", path)


def test_train_split_without_labels_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "train.tsv").write_bytes((GLUE_FIXTURES / "RTE" / "test.tsv").read_bytes())
    with pytest.raises(DataError, match="label column 'label'"):
        read_split("rte", tmp_path, "train")


def test_qqp_skips_broken_rows_with_a_warning(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    # The real QQP train.tsv has rows split in two by a newline inside a question.
    lines = (GLUE_FIXTURES / "QQP" / "train.tsv").read_text(encoding="utf-8").splitlines()
    broken = ["97931\t163224\t163225\tWho was Muhammad?\t",
              '"\tWas Muhammad a real historical figure? What is the evidence?\t0']
    path = tmp_path / "train.tsv"
    path.write_text("\n".join(lines[:3] + broken + lines[3:]) + "\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="bertforge.data.glue"):
        examples = read_file("qqp", path)
    assert examples == read_file("qqp", GLUE_FIXTURES / "QQP" / "train.tsv")
    assert "skipped 2 malformed row(s)" in caplog.text and "line(s) 4, 5" in caplog.text


def test_other_tasks_do_not_skip_broken_rows(tmp_path: Path) -> None:
    lines = (GLUE_FIXTURES / "QNLI" / "train.tsv").read_text(encoding="utf-8").splitlines()
    path = tmp_path / "train.tsv"
    path.write_text("\n".join(lines[:2] + ["9\tWhat?\tentailment"] + lines[2:]) + "\n",
                    encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.tsv:3"):
        read_file("qnli", path)


# ---------------------------------------------------------------------------------------------
# Features against transformers' BertTokenizerLegacy


def _google_truncate_seq_pair(tokens_a: list, tokens_b: list, max_length: int) -> None:
    """Google's run_classifier._truncate_seq_pair, written out again."""
    while len(tokens_a) + len(tokens_b) > max_length:
        if len(tokens_a) > len(tokens_b):
            tokens_a.pop()
        else:
            tokens_b.pop()


def _reference_features(ref: BertTokenizerLegacy, example: GlueExample, max_len: int
                        ) -> tuple[list[int], list[int]]:
    a = ref.tokenize(example.text_a)
    if example.text_b is None:
        tokens = ["[CLS]", *a[:max_len - 2], "[SEP]"]
        segments = [0] * len(tokens)
    else:
        b = ref.tokenize(example.text_b)
        _google_truncate_seq_pair(a, b, max_len - 3)
        tokens = ["[CLS]", *a, "[SEP]", *b, "[SEP]"]
        segments = [0] * (len(a) + 2) + [1] * (len(b) + 1)
    return ref.convert_tokens_to_ids(tokens), segments


@pytest.mark.parametrize("max_len", [8, 13, 32, 128])
@pytest.mark.parametrize("task, split", [("mrpc", "dev"), ("sst2", "dev"), ("cola", "dev")])
def test_features_match_bert_tokenizer_legacy(vocab_file: Path, glue_dir: Path, task: str,
                                              split: str, max_len: int) -> None:
    examples = read_split(task, glue_dir, split)[:60]
    features = encode_examples(examples, WordPieceTokenizer(vocab_file), max_len, task)
    ref = BertTokenizerLegacy(str(vocab_file), do_lower_case=True)
    assert features.input_ids.shape == (len(examples), max_len)
    for i, example in enumerate(examples):
        ids, segments = _reference_features(ref, example, max_len)
        n = len(ids)
        assert features.input_ids[i].tolist() == ids + [0] * (max_len - n)
        assert features.token_type_ids[i].tolist() == segments + [0] * (max_len - n)
        assert features.attention_mask[i].tolist() == [1] * n + [0] * (max_len - n)
    labels = [int(e.label) for e in examples]
    assert features.labels.dtype == np.int64 and features.labels.tolist() == labels
    assert list(features.guids) == [e.guid for e in examples]


def test_truncation_ties_pop_from_b(vocab_file: Path) -> None:
    tok = WordPieceTokenizer(vocab_file)
    example = GlueExample("x", "one two three four", "five six seven eight", "1")
    features = encode_examples([example], tok, 3 + 5, "mrpc")
    # 4 + 4 words into 5: b loses two (ties), a one: a = 3 words, b = 2 words.
    expected = [tok.cls_id, *tok.ids("one two three"), tok.sep_id, *tok.ids("five six"),
                tok.sep_id]
    assert features.input_ids[0].tolist() == expected


def test_feature_labels_by_task(vocab_file: Path) -> None:
    tok = WordPieceTokenizer(vocab_file)
    mnli = encode_examples(read_split("mnli", GLUE_FIXTURES, "dev_mismatched"), tok, 32, "mnli")
    assert mnli.labels.tolist() == [0, 0, 1, 0]
    stsb = encode_examples(read_split("stsb", GLUE_FIXTURES, "dev"), tok, 32, "stsb")
    assert stsb.labels.dtype == np.float32
    np.testing.assert_array_equal(stsb.labels, np.array([5.0, 4.75, 2.615], dtype=np.float32))
    test = encode_examples(read_split("rte", GLUE_FIXTURES, "test"), tok, 32, "rte")
    assert test.labels is None and len(test) == 3


def test_encode_errors(vocab_file: Path) -> None:
    tok = WordPieceTokenizer(vocab_file)
    with pytest.raises(ConfigError, match="max_seq_length 2"):
        encode_examples([GlueExample("x", "a", "b", "1")], tok, 2, "mrpc")
    with pytest.raises(DataError, match="text_b is missing"):
        encode_examples([GlueExample("x", "a", None, "1")], tok, 16, "mrpc")
    with pytest.raises(DataError, match="has no label"):
        encode_examples([GlueExample("x", "a", None, "1"), GlueExample("y", "b", None, None)],
                        tok, 16, "sst2")


def test_sst2_train_encodes_whole(vocab_file: Path, glue_dir: Path) -> None:
    examples = read_split("sst2", glue_dir, "train")
    features = encode_examples(examples, WordPieceTokenizer(vocab_file), 64, "sst2")
    assert features.input_ids.shape == (67349, 64)
    labels = [int(r[-1]) for r in _plain_parse(shared("glue", "SST-2", "train.tsv"), 1, (0,), True)]
    assert features.labels.tolist() == labels
    lengths = features.attention_mask.sum(axis=1)
    # [CLS] ... [SEP]: the last attended token is [SEP] in every row.
    assert (features.input_ids[np.arange(len(lengths)), lengths - 1] == 102).all()


# ---------------------------------------------------------------------------------------------
# Submission files


def _read_tsv(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def test_submission_round_trip_mnli(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(7, 3))
    path = write_submission(tmp_path / "sub", "MNLI", logits, "test_mismatched")
    assert path == tmp_path / "sub" / "MNLI-mm.tsv"
    rows = _read_tsv(path)
    names = ["contradiction", "entailment", "neutral"]
    assert rows[0] == ["index", "prediction"]
    assert rows[1:] == [[str(i), names[int(np.argmax(row))]] for i, row in enumerate(logits)]
    assert sorted(p.name for p in path.parent.iterdir()) == ["MNLI-mm.tsv"]


@pytest.mark.parametrize("task, file, ids, names", [
    ("rte", "RTE.tsv", [0, 1, 1], ["entailment", "not_entailment", "not_entailment"]),
    ("qnli", "QNLI.tsv", [1, 0], ["not_entailment", "entailment"]),
    ("mrpc", "MRPC.tsv", [1, 0, 1], ["1", "0", "1"]),
    ("qqp", "QQP.tsv", [0, 1], ["0", "1"]),
    ("sst2", "SST-2.tsv", [1, 1, 0], ["1", "1", "0"]),
    ("cola", "CoLA.tsv", [0], ["0"]),
    ("wnli", "WNLI.tsv", [1, 0], ["1", "0"]),
])
def test_submission_label_names(tmp_path: Path, task: str, file: str, ids: list[int],
                                names: list[str]) -> None:
    path = write_submission(tmp_path, task, np.array(ids), "test")
    assert path.name == file
    rows = _read_tsv(path)
    assert rows[0] == ["index", "prediction"]
    assert rows[1:] == [[str(i), n] for i, n in enumerate(names)]


def test_submission_stsb_clipped_and_explicit_path(tmp_path: Path) -> None:
    scores = np.array([-0.4, 2.25, 5.7, 4.999])
    path = write_submission(tmp_path / "mine.tsv", "sts-b", scores,
                            indices=["10", "11", "12", "13"])
    rows = _read_tsv(path)
    assert rows[0] == ["index", "prediction"]
    assert [r[0] for r in rows[1:]] == ["10", "11", "12", "13"]
    np.testing.assert_array_equal([float(r[1]) for r in rows[1:]], np.clip(scores, 0, 5))


def test_submission_overwrites_atomically(tmp_path: Path) -> None:
    write_submission(tmp_path, "rte", np.array([0, 0, 0]))
    path = write_submission(tmp_path, "rte", np.array([1]))
    assert len(_read_tsv(path)) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["RTE.tsv"]


def test_submission_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="test splits"):
        write_submission(tmp_path, "rte", np.array([0]), "dev")
    with pytest.raises(DataError, match="logits have 2 columns"):
        write_submission(tmp_path, "mnli", np.zeros((3, 2)), "test_matched")
    with pytest.raises(DataError, match=r"\[0, 2\)"):
        write_submission(tmp_path, "rte", np.array([0, 2]))
    with pytest.raises(DataError, match="2 indices for 3 predictions"):
        write_submission(tmp_path, "rte", np.array([0, 1, 0]), indices=[0, 1])
    assert list(tmp_path.iterdir()) == []


def test_the_package_exports_each_modules_public_names():
    """bertforge.data.glue is a package (tasks, reading, features, submissions); every public
    name of its modules is importable from the package, as it was from the one module."""
    import importlib

    import bertforge.data.glue as glue

    for module in ("tasks", "reading", "features", "submissions"):
        m = importlib.import_module(f"bertforge.data.glue.{module}")
        public = {n for n, v in vars(m).items() if not n.startswith("_") and getattr(v, "__module__", None) == m.__name__}
        assert public <= set(glue.__all__), (module, public - set(glue.__all__))
        for name in public:
            assert getattr(glue, name) is getattr(m, name)
    assert glue.TASKS["mrpc"] is glue.get_task("MRPC")
