"""What used to give wrong results without a word: a SQuAD v2.0 model converted to Hugging Face
decoding as v1.1, a --bert_model ignored beside a checkpoint, prepared pretraining data read
while HDF5/TFRecord files beside it were left out, and a damaged HDF5 file failing mid-run in a
long traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import pytest
import transformers
from pretraining_writers import synthetic_samples, write_google_tfrecord, write_nvidia_hdf5
from runs import squad_argv

import bertforge
from bertforge.checkpoint import load_checkpoint
from bertforge.cli import main
from bertforge.errors import ConfigError, DataError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny, vocab_file, squad_dev_file) -> Path:
    out = tmp_path_factory.mktemp("runs") / "finished"
    assert main(squad_argv(out, tiny, vocab_file, squad_dev_file, "--max_steps", "1")) == 0
    return out


def test_a_squad_v2_model_stays_v2_through_hugging_face(finished, tmp_path):
    v2 = shutil.copytree(finished, tmp_path / "v2")
    meta = json.loads((v2 / "bertforge.json").read_text())
    (v2 / "bertforge.json").write_text(json.dumps({**meta, "version_2_with_negative": True}))
    assert main(["convert", str(v2), str(tmp_path / "hf"), "--to", "hf"]) == 0
    # transformers' own reading of the config: its field for the task fine-tuned on
    assert transformers.BertConfig.from_pretrained(tmp_path / "hf").finetuning_task == "squad_v2"
    assert load_checkpoint(tmp_path / "hf").meta == {"task": "squad", "version_2_with_negative": True}
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "back"), "--to", "native"]) == 0
    back = json.loads((tmp_path / "back" / "bertforge.json").read_text())
    assert back["version_2_with_negative"] is True and back["task"] == "squad"
    assert main(["convert", str(finished), str(tmp_path / "hf1"), "--to", "hf"]) == 0
    assert transformers.BertConfig.from_pretrained(tmp_path / "hf1").finetuning_task == "squad"


def test_a_bert_model_that_is_another_model_than_the_checkpoint_is_an_error(finished, tiny, squad_dev_file,
                                                                            tmp_path, capsys):
    argv = ["predict", "squad", "--init_checkpoint", str(finished), "--predict_file", str(squad_dev_file),
            "--predict_articles", "0:1", "--device", "cpu", "--output_dir", str(tmp_path / "p")]
    assert main(argv + ["--bert_model", "mini"]) == 2
    err = capsys.readouterr().err
    assert f"--bert_model mini is another model than --init_checkpoint {finished}" in err
    assert "hidden_size 256 vs 32" in err  # mini: L=4 H=256 (Google's BERT-Mini)
    assert not (tmp_path / "p").exists()
    with pytest.raises(ConfigError, match="is another model than"):
        bertforge.load(finished, bert_config="mini", device="cpu")
    assert bertforge.load(finished, bert_config=str(tiny), device="cpu").head == "qa"  # the same model


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, vocab_file) -> Path:
    from conftest import prepare_wiki_slice

    return prepare_wiki_slice(tmp_path_factory.mktemp("wiki"), 20, vocab_file)


@pytest.mark.parametrize("kind", ["HDF5", "TFRecord"])
def test_prepared_data_beside_files_of_another_kind_is_refused(prepared, tmp_path, kind):
    from bertforge.data.pretraining import open_pretraining_data

    mixed = shutil.copytree(prepared, tmp_path / "mixed")
    samples = synthetic_samples(8, 32, 5, seed=0)
    if kind == "HDF5":
        write_nvidia_hdf5(mixed / "part_0.hdf5", samples)
    else:
        write_google_tfrecord(mixed / "part-00000-of-00001", samples)
    with pytest.raises(DataError, match=f"files of several kinds: prepared data \\(manifest.json\\) and 1 {kind}"):
        open_pretraining_data(str(mixed), flag="--input_dir", seed=0)


def test_a_damaged_hdf5_chunk_is_one_line_naming_the_file(tmp_path, tiny, vocab_file, capsys):
    path = write_nvidia_hdf5(tmp_path / "part_0.hdf5", synthetic_samples(64, 32, 5, seed=0))
    with h5py.File(path, "r") as f:
        chunk = f["input_ids"].id.get_chunk_info(0)  # gzip-compressed, as NVIDIA's files are
    with open(path, "r+b") as f:
        f.seek(chunk.byte_offset + 16)
        f.write(b"\xff" * 64)
    assert main(["pretrain", "--input_dir", str(path), "--bert_model", str(tiny), "--vocab_file", str(vocab_file),
                 "--do_lower_case", "true", "--max_steps", "1", "--train_batch_size", "8", "--do_eval", "false",
                 "--device", "cpu", "--output_dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if ": error:" in line]
    assert "Traceback" not in err and len(lines) == 1
    assert f"{path}: field input_ids cannot be read" in lines[0] and "damaged" in lines[0]
