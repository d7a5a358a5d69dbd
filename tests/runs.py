"""Builders for the tests that replay whole runs on a tiny model on the CPU: the command line of
a four-step SQuAD run, a snapshot of a directory, the metrics a run wrote, and a small file
system that fills up (a tmpfs, where the tests may mount one)."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

TINY = {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 37, "max_position_embeddings": 128}


def write_tiny_config(path: Path, **overrides) -> Path:
    """L=2, H=32 with BERT's uncased vocabulary, 128 positions."""
    path.write_text(json.dumps({**TINY, **overrides}))
    return path


def squad_argv(out: Path, tiny: Path, vocab_file: Path, squad_dev_file: Path, *extra: str) -> list[str]:
    return ["finetune", "squad", "--do_train", "--train_file", str(squad_dev_file), "--train_articles", "0:1",
            "--max_seq_length", "64", "--doc_stride", "32", "--max_query_length", "16",
            "--bert_model", str(tiny), "--vocab_file", str(vocab_file), "--do_lower_case", "true",
            "--max_steps", "4", "--train_batch_size", "8", "--learning_rate", "1e-3", "--log_every", "1",
            "--device", "cpu", "--output_dir", str(out), *extra]


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` (the lock file aside) and its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != ".bertforge.lock"}


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def copy_run(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination


@contextlib.contextmanager
def small_filesystem(path: Path, size: str, options: str = "") -> Iterator[Path]:
    """A tmpfs of `size` ("4m") at `path`, so that a disk really fills up; the test is skipped
    where none can be mounted (mounting needs root). Tests that must always run inject the
    write error instead."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (f",{options}" if options else "")
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True)
    except OSError:
        done = None
    if done is None or done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the injected-error tests cover this case")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(directory: Path, leave: int) -> None:
    """Fill the file system holding `directory` until `leave` bytes are free."""
    free = shutil.disk_usage(directory).free
    with open(directory / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))
