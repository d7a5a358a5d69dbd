"""`prepare_pretraining_data`: a text corpus -> shards of unmasked masked-LM/NSP instances.

Pipeline: input files -> documents, read lazily in bounded pieces (`corpus`) -> chunks of
about `chunk_chars` of text (`chunks`) -> a process pool, at most 2 chunks per worker in flight,
that splits sentences, tokenizes and pairs (`instances`) -> one shard writer per split, holding
at most one shard in memory (`shards`) -> `manifest.json`, written last. Memory stays bounded
whatever the corpus size; the output is the same for any number of workers.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from bertforge.data.pretraining.chunks import Chunk, iter_chunks
from bertforge.data.pretraining.config import PrepareConfig
from bertforge.data.pretraining.corpus import SPLITS, resolve_input_files
from bertforge.data.pretraining.instances import (ChunkResult, CreateSettings,
                                                  create_chunk_instances, sentence_splitter)
from bertforge.data.pretraining.shards import (VOCAB, ShardWriter, SplitStats,
                                               prepare_output_dir, vocab_info, write_manifest)
from bertforge.errors import DataError
from bertforge.fileio import atomic_write

logger = logging.getLogger(__name__)

# Below this share of source tokens in instances, say so. Wikipedia text keeps 86-100% at 32 to
# 512 tokens (measured); the pairing keeps about half even of text whose sentences all just
# fit an instance (two fill a chunk, truncation drops one), so a lower threshold would never fire.
LOW_SOURCE_TOKEN_SHARE = 0.75


def _run_chunks(chunks: Iterator[Chunk], settings: CreateSettings, num_workers: int
                ) -> Iterator[ChunkResult]:
    """Results of `create_chunk_instances` in chunk order, with at most 2 chunks per worker in
    flight (so reading never runs far ahead of the pool: bounded memory)."""
    if num_workers == 0:
        for chunk in chunks:
            yield create_chunk_instances(settings, chunk)
        return
    # spawn, not fork: the caller may hold threads (torch, tokenizers) that fork would copy
    # in an undefined state; workers import only numpy, tokenizers and sentencex.
    with ProcessPoolExecutor(num_workers, mp_context=get_context("spawn")) as pool:
        pending: deque[Future[ChunkResult]] = deque()
        for chunk in chunks:
            pending.append(pool.submit(create_chunk_instances, settings, chunk))
            if len(pending) >= 2 * num_workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _peak_rss_mb() -> tuple[float | None, float | None]:
    """Peak resident memory of this process and of its largest finished child, in MiB."""
    try:
        import resource
    except ImportError:  # Windows
        return None, None
    scale = 1 / 1024**2 if os.uname().sysname == "Darwin" else 1 / 1024  # bytes vs KiB
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale)


def _listed(files: list[Path], shown: int = 3) -> str:
    names = ", ".join(map(str, files[:shown]))
    return names + (f" and {len(files) - shown} more" if len(files) > shown else "")


def prepare_pretraining_data(cfg: PrepareConfig, progress: bool = True) -> dict[str, Any]:
    """Create the shards and manifest of `cfg.output_dir`; returns a summary.

    Summary keys: docs, instances, tokens (in instances, with [CLS]/[SEP]), source_tokens
    (WordPiece tokens of the documents), used_tokens (source tokens that made it into instances
    as their own text, over all dupe_factor passes), source_token_share (used_tokens per pass /
    source_tokens), per-split counts under `splits`, seconds, docs_per_s, peak_rss_mb (this
    process), peak_rss_worker_mb (the largest worker process), num_workers, output_dir. Workers
    are spawned processes: a script that calls this with num_workers != 0 needs the usual
    `if __name__ == "__main__":` guard.
    """
    start = time.perf_counter()
    splitter = sentence_splitter(cfg.language)  # fails before any work when sentencex is missing
    files = resolve_input_files(cfg.input_file)
    total_bytes = sum(f.stat().st_size for f in files)
    if total_bytes == 0:
        raise DataError(f"input_file: {_listed(files)} {'is' if len(files) == 1 else 'are'} empty; "
                        "nothing to prepare")
    vocab_file = Path(cfg.vocab_file)
    vocab = vocab_info(vocab_file)
    token_dtype = "uint16" if vocab["size"] <= 65536 else "int32"
    out = Path(cfg.output_dir)
    prepare_output_dir(out, cfg.overwrite, vocab_file)
    atomic_write(out / VOCAB, lambda f: f.write(vocab_file.read_bytes()))
    settings = CreateSettings(
        vocab_file=str(vocab_file.resolve()), do_lower_case=cfg.do_lower_case,
        max_seq_length=cfg.max_seq_length, short_seq_prob=cfg.short_seq_prob,
        dupe_factor=cfg.dupe_factor, random_seed=cfg.random_seed, language=cfg.language,
        token_dtype=token_dtype)
    writers = {s: ShardWriter(out, s, cfg.shard_size, cfg.dupe_factor) for s in SPLITS}
    num_workers = (os.cpu_count() or 1) if cfg.num_workers is None else cfg.num_workers
    with tqdm(total=total_bytes, unit="B", unit_scale=True, desc="prepare pretraining data",
              disable=not progress) as bar:
        docs = 0
        for result in _run_chunks(iter_chunks(files, cfg), settings, num_workers):
            writers[result.split].add(result)
            docs += result.docs
            bar.update(result.nbytes)
            rate = docs / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(docs=docs, docs_s=f"{rate:.0f}", refresh=False)
    stats = {s: w.close() for s, w in writers.items()}
    if stats["train"].instances == 0:  # no manifest: the directory is not a data set to train on
        raise DataError(f"input_file: {_listed(files)} gave no training instances ({docs} document(s)): "
                        "is it the text you meant? (one sentence a line, documents separated by blank "
                        "lines, or JSON lines with a text field)")
    write_manifest(out, cfg, vocab, token_dtype, files, splitter, stats)
    seconds = time.perf_counter() - start
    rss, rss_worker = _peak_rss_mb()
    total = SplitStats.combined(stats.values())
    share = total.source_token_share
    if share is not None and share < LOW_SOURCE_TOKEN_SHARE:
        logger.warning(
            "only %.1f%% of the %d source tokens made it into instances; the rest was truncated "
            "away (sentences or segments longer than max_seq_length=%d allows): check the "
            "input's sentence and document boundaries", 100 * share, total.source_tokens,
            cfg.max_seq_length)
    totals = {k: v for k, v in total.summary().items() if k != "shards"}
    return {**totals, "splits": {s: st.summary() for s, st in stats.items()},
            "seconds": seconds, "docs_per_s": total.docs / seconds, "peak_rss_mb": rss,
            "peak_rss_worker_mb": rss_worker, "num_workers": num_workers, "output_dir": str(out)}
