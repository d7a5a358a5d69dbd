"""The benchmark's batches: random full-length sequences, or real SQuAD dev features with their
padding. Each is one host batch (in pinned memory for an accelerator) that both models read:
bertforge's keys with the host-known `seq_lengths`, and transformers' keyword arguments (the same
tensors, labels in its format) under "hf". Steps move them to the device as training does."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bertforge.bench.config import BenchmarkArgs
from bertforge.config import BertConfig
from bertforge.errors import ConfigError, DataError


@dataclass
class Batch:
    data: dict  # host tensors (bertforge's keys), "seq_lengths", and "hf": transformers' kwargs
    lengths: list[int]  # real tokens per sequence
    full: bool  # no padding anywhere (known on the host, where the data was made)


def synthetic_batch(cfg: BenchmarkArgs, config: BertConfig, g: torch.Generator) -> dict[str, Tensor]:
    """Random full-length sequences: ids avoid 0 ([PAD]); the second half is segment B."""
    B, T = cfg.batch_size, cfg.seq_length
    batch = {"input_ids": torch.randint(1, config.vocab_size, (B, T), generator=g),
             "token_type_ids": torch.zeros(B, T, dtype=torch.long),
             "attention_mask": torch.ones(B, T, dtype=torch.long)}
    if config.type_vocab_size > 1:
        batch["token_type_ids"][:, T // 2:] = 1
    if cfg.task == "qa":
        batch["start_positions"] = torch.randint(0, T, (B,), generator=g)
        batch["end_positions"] = torch.randint(0, T, (B,), generator=g)
        return batch
    P = cfg.num_masked
    # P distinct positions per row, never [CLS] (position 0), in increasing order.
    positions = torch.rand(B, T - 1, generator=g).argsort(dim=1)[:, :P].sort(dim=1).values + 1
    batch.update(masked_lm_positions=positions,
                 masked_lm_ids=torch.randint(1, config.vocab_size, (B, P), generator=g),
                 masked_lm_weights=torch.ones(B, P),
                 next_sentence_labels=torch.randint(0, 2, (B,), generator=g))
    return batch


def squad_batches(cfg: BenchmarkArgs, config: BertConfig, vocab_file: Path, do_lower_case: bool,
                  count: int) -> list[dict[str, Tensor]]:
    """`count` batches of real SQuAD dev features (max_seq_length = seq_length, Google's stride
    128 and query limit 64), padded as stored: in file order for inference, shuffled (seeded)
    for training, as the two use them."""
    from bertforge.data import squad
    from bertforge.tokenization import WordPieceTokenizer

    path = Path(cfg.squad_file)
    if not path.is_file():
        raise DataError(f"SQuAD file not found: {path.resolve()}; pass --squad_file (a SQuAD v1.1 JSON "
                        f"file such as dev-v1.1.json)")
    tokenizer = WordPieceTokenizer(vocab_file, do_lower_case=do_lower_case)
    if len(tokenizer) > config.vocab_size:
        raise ConfigError(f"vocab file {vocab_file} has {len(tokenizer)} tokens but the model's "
                          f"vocab_size is {config.vocab_size}; pass a matching --vocab_file")
    needed = count * cfg.batch_size
    examples, _ = squad.read_squad_examples(path, is_training=False)
    # Every question yields at least one window, so the first `needed` questions are enough.
    features = squad.convert_examples_to_features(examples[:needed], tokenizer,
                                                  max_seq_length=cfg.seq_length, progress=False)
    order = np.arange(len(features))
    if cfg.mode == "train":
        order = np.random.default_rng(cfg.seed).permutation(order)
    order = np.resize(order, needed)  # repeats only if the file is smaller than asked for
    arrays = features.batch(order)
    rng = np.random.default_rng(cfg.seed)
    batches = []
    for i in range(count):
        b = {k: torch.from_numpy(np.ascontiguousarray(v[i * cfg.batch_size:(i + 1) * cfg.batch_size]))
             for k, v in arrays.items() if k in ("input_ids", "token_type_ids", "attention_mask")}
        b = {k: v.long() for k, v in b.items()}
        if cfg.mode == "train":  # labels inside each sequence (the span loss ignores what they are)
            lengths = b["attention_mask"].sum(1).numpy()
            start = rng.integers(0, lengths)
            b["start_positions"] = torch.from_numpy(start)
            b["end_positions"] = torch.from_numpy(np.minimum(start + rng.integers(0, 4, len(start)), lengths - 1))
        batches.append(b)
    return batches


def hf_inputs(batch: dict[str, Tensor], cfg: BenchmarkArgs) -> dict[str, Tensor]:
    """transformers' keyword arguments for the same batch; labels in its format when training."""
    out = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    if cfg.mode != "train":
        return out
    if cfg.task == "qa":
        return {**out, "start_positions": batch["start_positions"], "end_positions": batch["end_positions"]}
    labels = torch.full_like(batch["input_ids"], -100)  # -100: not predicted
    labels.scatter_(1, batch["masked_lm_positions"], batch["masked_lm_ids"])
    return {**out, "labels": labels, "next_sentence_label": batch["next_sentence_labels"]}


def vocab_for(cfg: BenchmarkArgs, checkpoint_vocab: Path | None) -> Path:
    vocab = Path(cfg.model.vocab_file) if cfg.model.vocab_file else checkpoint_vocab
    if vocab is None:
        raise ConfigError("--data squad needs a WordPiece vocabulary to make features: pass --vocab_file "
                          "(or --init_checkpoint with its vocab.txt)")
    if not vocab.is_file():
        raise DataError(f"vocab file not found: {vocab.resolve()}; pass --vocab_file")
    return vocab


def make_batches(cfg: BenchmarkArgs, config: BertConfig, device: torch.device,
                 checkpoint_vocab: Path | None = None) -> list[Batch]:
    """warmup + steps host batches (synthetic or SQuAD), pinned for an accelerator."""
    count = cfg.warmup + cfg.steps
    if cfg.data == "squad":
        lower = cfg.model.do_lower_case if cfg.model.do_lower_case is not None else True
        raw = squad_batches(cfg, config, vocab_for(cfg, checkpoint_vocab), lower, count)
    else:
        g = torch.Generator().manual_seed(cfg.seed)
        raw = [synthetic_batch(cfg, config, g) for _ in range(count)]
    pin = device.type != "cpu"
    batches = []
    for b in raw:
        if pin:
            b = {k: v.pin_memory() for k, v in b.items()}
        lengths = b["attention_mask"].sum(dim=1).tolist()
        data = {**b, "seq_lengths": lengths, "hf": hf_inputs(b, cfg)}
        batches.append(Batch(data, lengths, full=all(n == cfg.seq_length for n in lengths)))
    return batches
