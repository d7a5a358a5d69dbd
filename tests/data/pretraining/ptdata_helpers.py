"""Builders shared by the pretraining-data tests (plain functions, not fixtures)."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import numpy as np
import torch
from conftest import shared

from bertforge.data.pretraining import PrepareConfig, PretrainingDataset, read_manifest

SEQ = 128
MAX_PRED = 20


def wiki_lines(n: int) -> list[str]:
    """The first n articles of the shared Wikipedia sample, as JSON lines."""
    with shared("text", "wiki_summaries_en.jsonl").open(encoding="utf-8") as f:
        return list(islice(f, n))


def make_config(out: Path, input_file, vocab_file: Path, **kw) -> PrepareConfig:
    """A config writing to `out`, at SEQ tokens and MAX_PRED predictions unless `kw` says else."""
    settings = dict(max_seq_length=SEQ, max_predictions_per_seq=MAX_PRED) | kw
    return PrepareConfig(input_file=input_file, output_dir=str(out), vocab_file=str(vocab_file),
                         **settings)


def all_batches(ds: PretrainingDataset, batch: int = 512) -> dict[str, torch.Tensor]:
    """Every sample of `ds` in stored order, as one batch."""
    parts = list(ds.eval_batches(batch))
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def stored(directory: Path) -> dict[str, np.ndarray]:
    """Every split's shards, concatenated (tokens and index records)."""
    manifest = read_manifest(directory)
    out = {}
    for split, info in manifest["splits"].items():
        for kind in ("tokens", "index"):
            arrays = [np.load(directory / s[kind]) for s in info["shards"]]
            out[f"{split}.{kind}"] = np.concatenate(arrays) if arrays else np.zeros(0)
    return out


def as_text(ids) -> str:
    """Token ids as ' id id ... ', so that `in` finds contiguous runs."""
    return " " + " ".join(map(str, ids)) + " "
