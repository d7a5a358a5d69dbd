"""Would a token budget help TRAINING? Counted, not timed: real SQuAD v1.1 training features
(dev articles 0-37 at 384 tokens, stride 128, the accuracy split's training half), one epoch of
the Trainer's random batches of 32, against batches of the same random order cut at a token
budget instead (as many features as fit in the mean tokens of a 32-feature batch).

    python benchmarks/token_budget.py [--model large] [--articles 0:38] [--batch 32]

Per scheme: sequences and real tokens per step (min / mean / max, coefficient of variation), and
model FLOPs for the epoch (bench.meter's count: real tokens only, x3 for training) on the unpadded
path (FlashAttention varlen on NVIDIA GPUs in bf16/fp16: attention costs sum L^2) and with
attention on the padded grid (fp32/tf32 on CUDA, other accelerators: B x T_longest^2 per batch).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def features_lengths(articles: str, seq: int) -> np.ndarray:
    from bertforge.data import squad
    from bertforge.tasks.squad import parse_slice
    from bertforge.tokenization import WordPieceTokenizer

    tokenizer = WordPieceTokenizer(SHARED / "vocab" / "bert-base-uncased" / "vocab.txt", do_lower_case=True)
    examples, _ = squad.read_squad_examples(SHARED / "squad" / "v1.1" / "dev-v1.1.json", is_training=True,
                                            articles=parse_slice(articles, "articles"))
    features = squad.convert_examples_to_features(examples, tokenizer, is_training=True, max_seq_length=seq,
                                                  progress=False)
    return features.attention_mask.sum(axis=1).astype(np.int64)


def fixed_rows(order: np.ndarray, batch: int) -> list[np.ndarray]:
    return [order[i:i + batch] for i in range(0, len(order) - batch + 1, batch)]  # the loader drops the rest


def token_budget(order: np.ndarray, lengths: np.ndarray, budget: int) -> list[np.ndarray]:
    """Consecutive features of the random order while their real tokens fit the budget."""
    batches, start, tokens = [], 0, 0
    for i, idx in enumerate(order):
        if i > start and tokens + lengths[idx] > budget:
            batches.append(order[start:i])
            start, tokens = i, 0
        tokens += lengths[idx]
    return batches  # the last incomplete batch is dropped, as the loader does


def describe(batches: list[np.ndarray], lengths: np.ndarray, config, seq: int) -> dict:
    from bertforge.model import model_flops_per_token

    rows = np.array([len(b) for b in batches])
    tokens = np.array([int(lengths[b].sum()) for b in batches])
    H, L = config.hidden_size, config.num_hidden_layers
    # one layer's attention: 2 matmuls (scores, values) of 2 FLOPs per MAC, x3 for training
    attention = 3 * L * 4 * H
    linear = sum(float(lengths[b].sum()) * model_flops_per_token(config, 0, True) for b in batches)
    varlen = sum(attention * float((lengths[b] ** 2).sum()) for b in batches)
    grid = sum(attention * len(b) * min(seq, -(-int(lengths[b].max()) // 8) * 8) ** 2 for b in batches)
    return {"steps": len(batches), "sequences_per_step": [int(rows.min()), float(rows.mean()), int(rows.max())],
            "tokens_per_step": [int(tokens.min()), float(tokens.mean()), int(tokens.max())],
            "tokens_cv": float(tokens.std() / tokens.mean()),
            "tflop_unpadded_varlen": (linear + varlen) / 1e12, "tflop_attention_on_padded_grid": (linear + grid) / 1e12}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="large")
    parser.add_argument("--articles", default="0:38")
    parser.add_argument("--seq", type=int, default=384)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    from bertforge.config import resolve_config

    config = resolve_config(args.model)
    lengths = features_lengths(args.articles, args.seq)
    order = np.random.default_rng([args.seed, 0]).permutation(len(lengths))  # the loader's epoch 0
    budget = int(round(lengths.mean() * args.batch))
    schemes = {f"{args.batch} features per step": fixed_rows(order, args.batch),
               f"token budget {budget}": token_budget(order, lengths, budget)}
    out = {"features": len(lengths), "real_tokens_mean": float(lengths.mean()), "model": args.model,
           "schemes": {name: describe(b, lengths, config, args.seq) for name, b in schemes.items()}}
    print(json.dumps(out, indent=1))
    print(f"\n| scheme | steps | sequences/step min-mean-max | tokens/step min-mean-max | tokens CV | "
          f"TFLOP unpadded (varlen) | TFLOP, attention on padded grid |\n|---|---|---|---|---|---|---|")
    for name, d in out["schemes"].items():
        s, t = d["sequences_per_step"], d["tokens_per_step"]
        print(f"| {name} | {d['steps']} | {s[0]}-{s[1]:.1f}-{s[2]} | {t[0]}-{t[1]:.0f}-{t[2]} | "
              f"{100 * d['tokens_cv']:.1f}% | {d['tflop_unpadded_varlen']:.1f} | {d['tflop_attention_on_padded_grid']:.1f} |")


if __name__ == "__main__":
    main()
