"""Preparing pretraining data from 150 real articles: input layouts give the same data, the
output is written atomically, and bad input gets a clear error."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from ptdata_helpers import make_config, stored, wiki_lines

from bertforge.data.pretraining import PretrainingDataset, prepare_pretraining_data, read_manifest
from bertforge.data.pretraining import prepare as prepare_module
from bertforge.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def small_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("small") / "wiki150.jsonl"
    path.write_text("".join(wiki_lines(150)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def reference(small_file, vocab_file, tmp_path_factory) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("reference")
    prepare_pretraining_data(make_config(out, str(small_file), vocab_file, num_workers=2,
                                         chunk_chars=20_000, held_out_fraction=0.1), progress=False)
    return stored(out)


def _same_data(directory: Path, reference: dict[str, np.ndarray]) -> bool:
    data = stored(directory)
    return data.keys() == reference.keys() and all(
        np.array_equal(data[k], reference[k]) for k in data)


def test_plain_text_input_gives_the_same_data(reference, vocab_file, tmp_path):
    # Google's layout: one or more sentences a line, a blank line between documents.
    texts = [json.loads(line)["text"] for line in wiki_lines(150)]
    plain = tmp_path / "corpus.txt"
    documents = ["\n".join(p for p in t.split("\n") if p.strip()) for t in texts]
    plain.write_text("\n\n".join(documents) + "\n", encoding="utf-8")
    prepare_pretraining_data(make_config(tmp_path / "out", str(plain), vocab_file, num_workers=0,
                                         chunk_chars=20_000, held_out_fraction=0.1), progress=False)
    assert _same_data(tmp_path / "out", reference)
    assert read_manifest(tmp_path / "out")["splits"]["train"]["instances"] > 0


def test_directory_and_list_input_give_the_same_data(reference, vocab_file, tmp_path):
    lines = wiki_lines(150)
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "a.jsonl").write_text("".join(lines[:60]), encoding="utf-8")
    (corpus / "b.data").write_text("".join(lines[60:100]), encoding="utf-8")  # JSON by content
    (corpus / "sub" / "c.json").write_text("".join(lines[100:]), encoding="utf-8")
    (corpus / ".hidden.jsonl").write_text("not json\n", encoding="utf-8")
    listed = ",".join(str(corpus / n) for n in ("a.jsonl", "b.data", "sub/c.json"))
    for name, spec in (("dir", str(corpus)), ("list", listed), ("glob", str(corpus / "*"))):
        cfg = make_config(tmp_path / name, spec, vocab_file, num_workers=0, chunk_chars=20_000,
                          held_out_fraction=0.1)
        prepare_pretraining_data(cfg, progress=False)
        assert _same_data(tmp_path / name, reference), name


def test_plain_text_without_blank_lines_is_cut_into_bounded_documents(vocab_file, tmp_path, caplog):
    texts = [json.loads(line)["text"] for line in wiki_lines(40)]
    plain = tmp_path / "one_block.txt"
    plain.write_text("\n".join(texts) + "\n", encoding="utf-8")
    cfg = make_config(tmp_path / "out", str(plain), vocab_file, num_workers=0, chunk_chars=5_000)
    summary = prepare_pretraining_data(cfg, progress=False)
    total = sum(len(line.strip()) for t in texts for line in t.split("\n"))
    # every document but the last holds at least 5,000 characters
    assert 2 <= summary["docs"] <= total // 5_000 + 1 and summary["instances"] > 0
    assert "documents longer than 5000 characters cut" in caplog.text


def test_manifest_is_written_last(small_file, vocab_file, tmp_path, monkeypatch):
    renamed: list[str] = []
    real_replace = os.replace

    def record(src, dst):
        renamed.append(Path(dst).name)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", record)
    prepare_pretraining_data(make_config(tmp_path, str(small_file), vocab_file, num_workers=0,
                                         shard_size=100), progress=False)
    manifest = read_manifest(tmp_path)
    shards = [s[k] for info in manifest["splits"].values() for s in info["shards"]
              for k in ("tokens", "index")]
    assert len(shards) >= 6 and renamed[-1] == "manifest.json"
    assert set(shards) <= set(renamed[:-1])
    # nothing else is left behind: no temporary files
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        shards + ["manifest.json", "vocab.txt"])


def test_crash_leaves_no_manifest(small_file, vocab_file, tmp_path, monkeypatch):
    real = prepare_module.create_chunk_instances

    def crash_on_third(settings, chunk):
        if chunk.index == 2:
            raise RuntimeError("killed")
        return real(settings, chunk)

    monkeypatch.setattr(prepare_module, "create_chunk_instances", crash_on_third)
    cfg = make_config(tmp_path, str(small_file), vocab_file, num_workers=0, shard_size=50,
                      chunk_chars=10_000)
    with pytest.raises(RuntimeError, match="killed"):
        prepare_pretraining_data(cfg, progress=False)
    assert any(tmp_path.glob("train-*.tokens.npy")) and not (tmp_path / "manifest.json").exists()
    with pytest.raises(DataError, match="manifest"):
        PretrainingDataset(tmp_path)
    monkeypatch.setattr(prepare_module, "create_chunk_instances", real)
    with pytest.raises(ConfigError, match="overwrite"):
        prepare_pretraining_data(cfg, progress=False)
    cfg.overwrite = True
    summary = prepare_pretraining_data(cfg, progress=False)
    assert PretrainingDataset(tmp_path).num_samples == summary["splits"]["train"]["instances"]


def test_a_killed_runs_temporary_files_count_as_prepared_data(small_file, vocab_file, tmp_path):
    # What a run killed while writing a shard leaves: atomic_write's temporary file.
    (tmp_path / ".train-00003.tokens.npy.k2j4h5l6.tmp").write_bytes(b"partial")
    (tmp_path / ".notes.tmp").write_bytes(b"someone else's")
    cfg = make_config(tmp_path, str(small_file), vocab_file, num_workers=0)
    with pytest.raises(ConfigError, match="overwrite"):
        prepare_pretraining_data(cfg, progress=False)
    prepare_pretraining_data(make_config(tmp_path, str(small_file), vocab_file, num_workers=0,
                                         overwrite=True), progress=False)
    assert not (tmp_path / ".train-00003.tokens.npy.k2j4h5l6.tmp").exists()
    assert (tmp_path / ".notes.tmp").exists()


# ---- errors --------------------------------------------------------------------------------

def test_bad_inputs_name_file_and_line(vocab_file, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine."}\n{"text": 3}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: .*'text'"):
        prepare_pretraining_data(make_config(tmp_path / "o", str(bad), vocab_file, num_workers=0),
                                 progress=False)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine."}\n{"text": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"broken\.jsonl:2: not valid JSON"):
        prepare_pretraining_data(make_config(tmp_path / "o", str(broken), vocab_file, num_workers=0,
                                             overwrite=True), progress=False)
    with pytest.raises(DataError, match="does not exist"):
        prepare_pretraining_data(make_config(tmp_path / "o", str(tmp_path / "missing.txt"),
                                             vocab_file), progress=False)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("fine.\ncaf\u00e9 au lait.\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt:2: not UTF-8 text \(invalid .* at byte 3\)"):
        prepare_pretraining_data(make_config(tmp_path / "o", str(latin1), vocab_file,
                                             num_workers=0, overwrite=True), progress=False)
