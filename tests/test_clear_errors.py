"""Failures that were already caught but told wrongly, or too late, each in the one line that
names the file and what is wrong: disk-full messages without a path, an unreadable weights
file called missing, a read-only file system called a permission problem, a damaged TFRecord
called unrecognized, an empty corpus prepared without complaint, a SQuAD file with a byte-order
mark, a GLUE dev label found only after training, a huge SQuAD paragraph, the Python API's
inputs, and downloads cut off or oversized."""

from __future__ import annotations

import errno
import json
import shutil
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from conftest import shared
from pretraining_writers import synthetic_samples, write_google_tfrecord
from runs import fill, small_filesystem, squad_argv

import bertforge
from bertforge import download, fileio
from bertforge.checkpoint import save_native
from bertforge.cli import main
from bertforge.config import BertConfig
from bertforge.errors import ConfigError, DataError, WriteError
from bertforge.model import build_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if ": error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def qa_model(tmp_path_factory, tiny, vocab_file) -> Path:
    """A tiny QA model with random weights, as a bertforge checkpoint directory."""
    config = BertConfig.from_json(tiny)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("models") / "qa"
    save_native(out, build_model(config, "qa"), config, vocab_file=vocab_file, do_lower_case=True,
                extra={"task": "squad"})
    return out


# ---- the file a failed write names ----------------------------------------------------------


def test_a_failed_result_write_names_its_file(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")  # as os.fsync raises it: no file name

    monkeypatch.setattr(fileio.os, "fsync", full)
    with pytest.raises(WriteError, match=f"cannot write {tmp_path / 'predictions.json'}: no space left on the "
                                         r"device \(.* needed, .* free\)"):
        fileio.atomic_write_json(tmp_path / "predictions.json", {"q1": "an answer"})
    assert list(tmp_path.iterdir()) == []  # no temporary file left


def test_prepare_on_a_full_disk_names_the_shard(tmp_path, vocab_file, capsys, monkeypatch):
    from bertforge.data.pretraining import shards

    def full(f, array):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shards.np, "save", full)
    docs = tmp_path / "docs.txt"
    docs.write_text("The first sentence is here. The second one follows it.\n\nAnother document. It ends.\n")
    assert main(["prepare", "pretraining", "--input_file", str(docs), "--output_dir", str(tmp_path / "out"),
                 "--vocab_file", str(vocab_file), "--max_seq_length", "32", "--num_workers", "0"]) == 2
    line = one_error(capsys.readouterr().err)
    assert f"cannot write {tmp_path / 'out' / 'train-00000.tokens.npy'}: no space left on the device" in line


def test_export_on_a_full_disk_names_its_directory(tmp_path, qa_model, capsys, monkeypatch):
    from bertforge import export

    def full(serving, config, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export, "_write_torch_export", full)
    out = tmp_path / "export"
    assert main(["export", str(qa_model), str(out), "--format", "torch_export", "--noverify"]) == 2
    assert f"cannot write {out}: no space left on the device" in one_error(capsys.readouterr().err)
    assert not out.exists()


def test_predictions_onto_a_full_disk(tmp_path, qa_model, squad_dev_file, capsys):
    with small_filesystem(tmp_path / "disk", "4m") as disk:
        out = disk / "predictions"
        out.mkdir()
        fill(disk, leave=96 * 1024)  # room for predictions.json, not for nbest_predictions.json
        assert main(["predict", "squad", "--init_checkpoint", str(qa_model), "--predict_file", str(squad_dev_file),
                     "--predict_articles", "0:1", "--max_seq_length", "64", "--doc_stride", "32",
                     "--max_query_length", "16", "--device", "cpu", "--output_dir", str(out)]) == 2
        line = one_error(capsys.readouterr().err)
        assert f"cannot write {out}/" in line and "no space left on the device" in line


# ---- what a file-system error is called -----------------------------------------------------


def test_an_unreadable_weights_file_is_not_called_missing(qa_model, capsys, monkeypatch):
    from bertforge.checkpoint import common

    weights = qa_model / "model.safetensors"

    def guarded_open(path, *args, **kwargs):  # what a file without read permission does (root reads anything)
        if Path(path) == weights:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return open(path, *args, **kwargs)

    monkeypatch.setattr(common, "open", guarded_open, raising=False)
    assert main(["info", str(qa_model)]) == 2
    line = one_error(capsys.readouterr().err)
    assert f"{weights}: cannot read safetensors file: permission denied" in line


def test_a_read_only_file_system_is_called_read_only(tmp_path, tiny, vocab_file, squad_dev_file, capsys):
    with small_filesystem(tmp_path / "ro", "1m", options="ro") as ro:
        assert main(squad_argv(ro / "run", tiny, vocab_file, squad_dev_file)) == 2
        assert "is on a read-only file system" in one_error(capsys.readouterr().err)


def test_a_tfrecord_with_a_damaged_length_checksum_is_called_corrupt(tmp_path):
    from bertforge.data.pretraining import open_pretraining_data
    from bertforge.data.pretraining.tfrecord import verifies_checksums

    if not verifies_checksums():
        pytest.skip("google-crc32c is not installed: TFRecord checksums are not read")
    path = write_google_tfrecord(tmp_path / "part-00000-of-00001", synthetic_samples(4, 32, 5, seed=0))
    data = bytearray(path.read_bytes())
    data[8] ^= 0xFF  # the first record's length checksum
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="length checksum does not match: a corrupt TFRecord file"):
        open_pretraining_data(str(path), flag="--input_dir", seed=0)


# ---- data ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "  \n\n \n"])
def test_prepare_of_an_empty_corpus_fails(tmp_path, vocab_file, capsys, text):
    docs = tmp_path / "docs.txt"
    docs.write_text(text)
    assert main(["prepare", "pretraining", "--input_file", str(docs), "--output_dir", str(tmp_path / "out"),
                 "--vocab_file", str(vocab_file), "--num_workers", "0"]) == 2
    line = one_error(capsys.readouterr().err)
    assert str(docs) in line and ("is empty" if not text else "gave no training instances") in line
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_squad_file_with_a_byte_order_mark_is_read(tmp_path, squad_dev_file):
    from bertforge.data.squad import read_squad_examples

    bom = tmp_path / "dev-bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + Path(squad_dev_file).read_bytes())
    with_bom, _ = read_squad_examples(bom, is_training=False, articles=slice(0, 2))
    plain, _ = read_squad_examples(squad_dev_file, is_training=False, articles=slice(0, 2))
    assert [(e.qas_id, e.question_text, e.context_text) for e in with_bom] == \
        [(e.qas_id, e.question_text, e.context_text) for e in plain]


def test_a_glue_dev_label_error_is_found_before_training(tmp_path, tiny, vocab_file, capsys):
    mrpc = shutil.copytree(shared("glue", "MRPC"), tmp_path / "MRPC")
    lines = (mrpc / "dev.tsv").read_text(encoding="utf-8-sig").splitlines()
    fields = lines[3].split("\t")
    lines[3] = "\t".join(["yes", *fields[1:]])  # MRPC's labels are 0 and 1
    (mrpc / "dev.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    assert main(["finetune", "glue", "--task", "mrpc", "--data_dir", str(mrpc), "--do_train", "--do_eval",
                 "--bert_model", str(tiny), "--vocab_file", str(vocab_file), "--do_lower_case", "true",
                 "--max_steps", "1", "--device", "cpu", "--output_dir", str(out)]) == 2
    assert f"{mrpc / 'dev.tsv'}:4: label 'yes' is not one of" in one_error(capsys.readouterr().err)
    assert not out.exists()  # found before anything was trained or written


def test_a_huge_squad_paragraph_is_warned_about(tmp_path, caplog):
    from bertforge.data.squad import read_squad_examples

    context = "word " * 60_000  # 300,000 characters
    path = tmp_path / "long.json"
    path.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{"context": context, "qas": [
        {"id": "q", "question": "which word?", "answers": [{"text": "word", "answer_start": 0}]}]}]}]}))
    read_squad_examples(path, is_training=True)
    assert f"{path}: data[0].paragraphs[0].context has 300,000 characters" in caplog.text


# ---- the Python API -------------------------------------------------------------------------


def test_the_python_api_refuses_what_the_server_refuses(qa_model):
    qa = bertforge.load(qa_model, device="cpu")
    short = {"max_seq_length": 64, "doc_stride": 32, "max_query_length": 16}  # the tiny model's 128 positions
    with pytest.raises(DataError, match="question must be a string or a list of strings, got NoneType"):
        qa.answer(None, "Mary Shelley wrote Frankenstein.", **short)
    with pytest.raises(DataError, match="context must be a string or a list of strings, got NoneType"):
        qa.answer(["Who wrote it?"], None, **short)
    for empty in ("", "   "):
        with pytest.raises(DataError, match="text is empty"):
            qa.encode(empty)
    with pytest.raises(DataError, match="text 1 is empty"):
        qa.encode(["a sentence", ""])
    with pytest.raises(ConfigError, match="unknown head 'ner'; heads: base, pretraining, qa, classification"):
        bertforge.load(qa_model, head="ner", device="cpu")


# ---- downloads --------------------------------------------------------------------------------


class CutOffHandler(SimpleHTTPRequestHandler):
    """Serves a file without Content-Length: `server.cut` bytes of it (then closes), or the
    file with `server.extra` bytes appended; honours `Range: bytes=N-`."""

    def do_GET(self):
        data = Path(self.translate_path(self.path)).read_bytes()
        start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-")) if self.headers.get("Range") else 0
        self.send_response(206 if start else 200)
        self.send_header("Connection", "close")
        self.end_headers()
        body = data[start:] + b"x" * self.server.extra
        if self.server.cut is not None:
            body = body[:self.server.cut]
        self.wfile.write(body)
        self.server.sent.append(len(body))

    def log_message(self, *args):
        pass


@pytest.fixture
def cut_off_server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / "dev-v1.1.json").symlink_to(shared("squad", "v1.1", "dev-v1.1.json"))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(CutOffHandler, directory=str(root)))
    httpd.cut, httpd.extra, httpd.sent = None, 0, []
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd
    httpd.shutdown()
    httpd.server_close()


def test_a_cut_off_download_keeps_its_part_and_continues(cut_off_server, tmp_path, capsys):
    url, httpd = cut_off_server
    size = download.SQUAD_FILES["dev"].size
    httpd.cut = size // 3
    argv = ["download", "squad", "--splits", "dev", "--cache_dir", str(tmp_path / "cache"), "--mirror", url]
    assert main(argv) == 2
    assert f"stopped at byte {size // 3} of {size}" in one_error(capsys.readouterr().err)
    part = tmp_path / "cache" / "squad" / "v1.1" / "dev-v1.1.json.part"
    assert part.stat().st_size == size // 3
    httpd.cut = None
    assert main(argv) == 0
    assert httpd.sent[-1] == size - size // 3  # only the rest was fetched
    assert (part.parent / "dev-v1.1.json").read_bytes() == shared("squad", "v1.1", "dev-v1.1.json").read_bytes()


def test_an_oversized_download_is_cut_off_at_the_published_size(cut_off_server, tmp_path, capsys, monkeypatch):
    url, httpd = cut_off_server
    httpd.extra = 4 << 20
    size = download.SQUAD_FILES["dev"].size

    class Progress:  # counts the bytes the download writes
        written = 0

        def __init__(self, *args, **kwargs):
            pass

        def update(self, n):
            Progress.written += n

        def close(self):
            pass

    monkeypatch.setattr(download, "tqdm", Progress)
    assert main(["download", "squad", "--splits", "dev", "--cache_dir", str(tmp_path / "cache"),
                 "--mirror", url]) == 2
    assert f"sends more than the published {size} bytes" in one_error(capsys.readouterr().err)
    assert Progress.written <= size  # not the whole body first
    assert list((tmp_path / "cache" / "squad" / "v1.1").iterdir()) == []
