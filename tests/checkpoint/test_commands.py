"""`bertforge convert` into a directory that already holds something."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from bertforge.checkpoint import detect_format, load_checkpoint, load_into
from bertforge.checkpoint.commands import ConvertArgs, convert
from bertforge.errors import ConfigError
from bertforge.model import build_model
from conftest import hf_checkpoint


def _convert(src, dst, to, force=False):
    return convert(ConvertArgs(src=str(src), dst=str(dst), to=to, force=force))


def test_force_hf_over_native_conversion_leaves_a_clean_hf_directory(tmp_path):
    """A native conversion's bertforge.json left behind would make bertforge read the HF
    directory as native, with every tensor under the wrong name."""
    src, _ = hf_checkpoint(tmp_path, "pretraining")
    (src / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    dst = tmp_path / "out"
    _convert(src, dst, "native")
    assert detect_format(dst) == "native"
    (dst / ".tmp-left-by-a-crash").mkdir()  # an interrupted earlier write
    (src / "vocab.txt").unlink()  # the new source has no vocabulary: the old one must not stay
    _convert(src, dst, "hf", force=True)
    assert sorted(p.name for p in dst.iterdir()) == ["config.json", "model.safetensors"]
    assert detect_format(dst) == "hf"
    ckpt = load_checkpoint(dst)
    load_into(build_model(ckpt.config, "pretraining"), ckpt, require_head=True)
    original = load_file(str(src / "model.safetensors"))
    written = load_file(str(dst / "model.safetensors"))
    assert all(torch.equal(written[k], original[k]) for k in written)


def test_force_refuses_a_directory_holding_other_files_and_deletes_nothing(tmp_path):
    src, _ = hf_checkpoint(tmp_path, "base")
    dst = tmp_path / "out"
    _convert(src, dst, "native")
    (dst / "notes.txt").write_text("mine")
    (dst / "runs").mkdir()
    before = sorted(p.name for p in dst.iterdir())
    with pytest.raises(ConfigError, match=r"not part of a checkpoint: notes\.txt, runs") as err:
        _convert(src, dst, "hf", force=True)
    assert str(dst) in str(err.value)
    assert sorted(p.name for p in dst.iterdir()) == before
    assert (dst / "notes.txt").read_text() == "mine"
    assert detect_format(dst) == "native"


def test_non_empty_destination_needs_force(tmp_path):
    src, _ = hf_checkpoint(tmp_path, "base")
    dst = tmp_path / "out"
    _convert(src, dst, "native")
    with pytest.raises(ConfigError, match="exists and is not empty; pass --force"):
        _convert(src, dst, "hf")
    assert detect_format(dst) == "native"


def test_force_refuses_to_replace_the_source_itself(tmp_path):
    src, _ = hf_checkpoint(tmp_path, "base")
    native = tmp_path / "native"
    _convert(src, native, "native")
    for source in (native, native / "model.safetensors"):
        with pytest.raises(ConfigError, match="holds what is being converted"):
            _convert(source, native, "hf", force=True)
    with pytest.raises(ConfigError, match=r"holds what is being converted \(.*vocab\.txt\)"):
        (native / "vocab.txt").write_text("[PAD]\n")
        convert(ConvertArgs(src=str(src), dst=str(native), to="hf", force=True,
                            vocab_file=str(native / "vocab.txt")))
    assert detect_format(native) == "native"
    ckpt = load_checkpoint(native)
    load_into(build_model(ckpt.config, "base"), ckpt, require_head=True)
