"""The table of formats: each format's `detect` accepts exactly the checkpoints of that format
(and, where the table's order decides, what it is documented to share with an earlier entry),
detection takes the first, and loading gives a checkpoint of that format."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from bertforge.checkpoint import detect_format, load_checkpoint, save_native
from bertforge.checkpoint.args import FORMAT_NAMES, TARGET_NAMES
from bertforge.checkpoint.formats import FORMATS, TARGETS
from bertforge.errors import CheckpointError
from bertforge.model import build_model
from conftest import FIXTURES, hf_checkpoint, tiny_config

TF_DIR = FIXTURES / "tf" / "uncased_L-2_H-16_A-2"
TF_SHARDED = FIXTURES / "tf" / "squad_sharded"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """One checkpoint of each format, in each form a user may name it, with the formats whose
    detect must accept it (in table order: the first is what it is read as)."""
    tmp = tmp_path_factory.mktemp("formats")
    cfg = tiny_config()
    native = save_native(tmp / "native", build_model(cfg, "qa"), cfg)
    hf, _ = hf_checkpoint(tmp, "pretraining")
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    torch.save(load_file(str(hf / "model.safetensors")), bin_dir / "pytorch_model.bin")
    (bin_dir / "config.json").write_text((hf / "config.json").read_text())
    dle = tmp / "dle"
    dle.mkdir()
    torch.save({"model": load_file(str(hf / "model.safetensors"))}, dle / "bert_base.pt")
    (dle / "bert_config.json").write_text(json.dumps(cfg.to_dict()))
    return {
        "native directory": (native, ["native", "hf"]),  # it holds a model.safetensors too
        "hf directory": (hf, ["hf"]),
        "hf weights file": (hf / "model.safetensors", ["hf"]),
        "hf pytorch_model.bin directory": (bin_dir, ["hf"]),
        "hf pytorch_model.bin": (bin_dir / "pytorch_model.bin", ["hf"]),
        "tf directory": (TF_DIR, ["tf"]),
        "tf prefix, no file of that name": (TF_DIR / "bert_model.ckpt", ["tf"]),
        "tf index": (TF_DIR / "bert_model.ckpt.index", ["tf"]),
        "tf data shard": (TF_DIR / "bert_model.ckpt.data-00000-of-00001", ["tf"]),
        "tf sharded directory": (TF_SHARDED, ["tf"]),
        "dle directory": (dle, ["nvidia"]),
        "dle file": (dle / "bert_base.pt", ["nvidia"]),
    }


def _accepting(path) -> list[str]:
    return [name for name, spec in FORMATS.items() if spec.detect(path)]


@pytest.mark.parametrize("case", [
    "native directory", "hf directory", "hf weights file", "hf pytorch_model.bin directory",
    "hf pytorch_model.bin", "tf directory", "tf prefix, no file of that name", "tf index",
    "tf data shard", "tf sharded directory", "dle directory", "dle file",
])
def test_each_checkpoint_is_detected_by_exactly_its_formats(checkpoints, case):
    path, expected = checkpoints[case]
    assert _accepting(path) == expected
    assert detect_format(path) == expected[0]
    assert load_checkpoint(path).format == expected[0]


def test_what_is_no_checkpoint_is_detected_by_none(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    two_pts = tmp_path / "two"
    two_pts.mkdir()
    (two_pts / "a.pt").write_bytes(b"")
    (two_pts / "b.pt").write_bytes(b"")
    h5 = tmp_path / "weights.h5"
    h5.write_bytes(b"\x89HDF")
    for path in (empty, two_pts, h5, tmp_path / "nothing.safetensors", tmp_path / "nothing.pt"):
        assert _accepting(path) == [], path
    with pytest.raises(CheckpointError, match="no checkpoint in this directory .*bertforge.json.*one DLE"):
        detect_format(two_pts)
    with pytest.raises(CheckpointError, match=r"unknown checkpoint file type \(expected a directory, "):
        detect_format(h5)
    with pytest.raises(CheckpointError, match="^checkpoint not found: "):
        detect_format(tmp_path / "nothing.pt")


def test_the_formats_written_are_those_with_a_save():
    assert TARGETS == ("native", "hf")
    assert all((FORMATS[name].save is not None) == (name in TARGETS) for name in FORMATS)


def test_convert_flags_name_the_tables_formats():
    """`bertforge convert --format/--to` take their names from a module without torch: the table's."""
    assert FORMAT_NAMES == tuple(FORMATS)
    assert TARGET_NAMES == TARGETS
