"""PrepareConfig documents and checks itself; the package's worker side stays free of torch."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bertforge.cli import main
from bertforge.data.pretraining import PrepareConfig
from bertforge.errors import ConfigError

REQUIRED = dict(input_file="corpus.txt", output_dir="out", vocab_file="vocab.txt")


def test_help_documents_every_flag(capsys):
    assert main(["prepare", "pretraining", "--help"]) == 0
    described, flag = {}, None
    for line in capsys.readouterr().out.splitlines():
        # a flag's row: the flag, its default or type, its description (on the lines below too)
        row = re.match(r"  (--[a-z_]+)(?: \S+)?(?:\s{2,}(.*))?$", line)
        if row:
            flag = row.group(1)
            described[flag] = (row.group(2) or "").split()
        elif flag and line.startswith(" " * 10):
            described[flag] += line.split()
        else:
            flag = None
    for f in dataclasses.fields(PrepareConfig):
        assert len(described.get(f"--{f.name}", [])) >= 3, (f.name, described.get(f"--{f.name}"))


@pytest.mark.parametrize("field,value,message", [
    ("max_seq_length", 4, "in [5, 65535]"),
    ("max_predictions_per_seq", 0, ">= 1"),
    ("masked_lm_prob", 1.5, "in (0, 1)"),
    ("masked_lm_prob", 0.0, "in (0, 1)"),
    ("short_seq_prob", -0.1, "in [0, 1]"),
    ("dupe_factor", 0, ">= 1"),
    ("dupe_factor", "10", "must be int"),
    ("num_workers", -1, ">= 0 or null"),
    ("held_out_fraction", 1.0, "in [0, 1)"),
    ("shard_size", 0, ">= 1"),
    ("chunk_chars", 0, ">= 1"),
    ("do_lower_case", "yes", "must be bool"),
    ("input_file", "", "is required"),
])
def test_bad_values_are_rejected_when_built_naming_the_flag(field, value, message):
    with pytest.raises(ConfigError, match=re.escape(f"--{field} ") + ".*" + re.escape(message)):
        PrepareConfig(**{**REQUIRED, field: value})


def test_changed_copies_are_checked_and_misspelt_fields_rejected():
    cfg = PrepareConfig(**REQUIRED)
    with pytest.raises(ConfigError, match="--dupe_factor"):
        dataclasses.replace(cfg, dupe_factor=0)
    with pytest.raises(AttributeError):
        cfg.dupe_factr = 2  # type: ignore[attr-defined]


def test_paths_are_kept_as_strings():
    cfg = PrepareConfig(input_file=[Path("a.txt"), "b.txt"], output_dir=Path("out"),
                        vocab_file=Path("vocab.txt"))
    assert (cfg.input_file, cfg.output_dir, cfg.vocab_file) == (["a.txt", "b.txt"], "out",
                                                                "vocab.txt")


def test_cli_rejects_a_bad_flag_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["prepare", "pretraining", "--input_file", str(tmp_path / "missing.txt"),
                 "--output_dir", str(out), "--vocab_file", "vocab.txt", "--dupe_factor", "0"])
    assert code == 2 and "--dupe_factor must be >= 1, got 0" in capsys.readouterr().err
    assert not out.exists()


def test_the_worker_side_does_not_import_torch():
    # Spawned workers import the package to reach `instances`; torch would cost each of them
    # seconds and hundreds of MB. The reader, which needs torch, still comes from the package.
    code = ("import sys, bertforge.data.pretraining.instances; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "from bertforge.data.pretraining import PretrainingDataset; "
            "assert 'torch' in sys.modules and PretrainingDataset.__name__ == 'PretrainingDataset'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
