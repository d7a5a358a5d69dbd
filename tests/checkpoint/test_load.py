"""Format detection from what is on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from bertforge.checkpoint import detect_format, load_checkpoint
from bertforge.errors import CheckpointError
from conftest import FIXTURES

TF_DIR = FIXTURES / "tf" / "uncased_L-2_H-16_A-2"


def test_tf_prefix_is_detected_although_no_file_has_that_name():
    prefix = TF_DIR / "bert_model.ckpt"
    assert not prefix.exists() and Path(f"{prefix}.index").is_file()
    assert detect_format(prefix) == "tf"
    assert load_checkpoint(prefix).format == "tf"


def test_unknown_file_type(tmp_path):
    path = tmp_path / "weights.h5"
    path.write_bytes(b"\x89HDF")
    with pytest.raises(CheckpointError, match="unknown checkpoint file type"):
        detect_format(path)
