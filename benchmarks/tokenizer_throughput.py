"""Tokenizer throughput on one core: bertforge's WordPiece vs the pure-Python reference
(transformers' BertTokenizerLegacy, Google's algorithm), on every SQuAD v1.1 dev context and
question. Also re-checks that the ids are identical.

    taskset -c 0 python benchmarks/tokenizer_throughput.py [--vocab ...] [--squad ...]
One core: RAYON_NUM_THREADS=1 keeps the Rust tokenizer to one thread; taskset pins the process.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy  # noqa: E402

from bertforge.tokenization import WordPieceTokenizer  # noqa: E402

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", default=str(SHARED / "vocab" / "bert-base-uncased" / "vocab.txt"))
    ap.add_argument("--squad", default=str(SHARED / "squad" / "v1.1" / "dev-v1.1.json"))
    args = ap.parse_args()
    data = json.loads(Path(args.squad).read_text(encoding="utf-8"))["data"]
    texts = [p["context"] for a in data for p in a["paragraphs"]]
    texts += [q["question"] for a in data for p in a["paragraphs"] for q in p["qas"]]
    print(f"{len(texts)} texts, {sum(map(len, texts)) / 1e6:.2f} M characters, "
          f"cores allowed: {len(os.sched_getaffinity(0))}")
    for lower in (True, False):
        ours = WordPieceTokenizer(args.vocab, do_lower_case=lower)
        ref = BertTokenizerLegacy(args.vocab, do_lower_case=lower)
        t = time.perf_counter()
        batch = ours.ids_batch(texts)
        t_batch = time.perf_counter() - t
        t = time.perf_counter()
        single = [ours.ids(x) for x in texts]
        t_single = time.perf_counter() - t
        t = time.perf_counter()
        expected = [ref.convert_tokens_to_ids(ref.tokenize(x)) for x in texts]
        t_ref = time.perf_counter() - t
        same = sum(a == b for a, b in zip(batch, expected))
        assert single == batch
        print(f"do_lower_case={lower}: identical ids {same}/{len(texts)}; "
              f"bertforge batch {len(texts) / t_batch:,.0f} texts/s, one at a time "
              f"{len(texts) / t_single:,.0f} texts/s; reference {len(texts) / t_ref:,.0f} texts/s; "
              f"speedup {t_ref / t_batch:.1f}x (batch), {t_ref / t_single:.1f}x (one at a time)")


if __name__ == "__main__":
    main()
