"""Reading prepared pretraining data as masked-LM/NSP batches, with masks drawn at read time.

Shards are memory-mapped; a batch reads only its rows. Each sample's mask is drawn from
(seed, split, epoch, sample index) as Google's `create_masked_lm_predictions` draws them, with
two deviations: 15% of the maskable tokens (Google counts [CLS] and [SEP] in the base), and
random replacements never special tokens. Epoch e visits the samples in a permutation drawn from
(seed, e); batching, sharding across ranks and the resumable cursor are `EpochCursor`'s.
docs/pretraining_data.md has the details and the reasons.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from bertforge.data.pretraining.corpus import SPLITS
from bertforge.data.pretraining.sampling import Batch, EpochCursor
from bertforge.data.pretraining.shards import MANIFEST, VOCAB, read_manifest
from bertforge.errors import DataError
from bertforge.tokenization import SPECIAL_TOKENS, load_vocab

# Stream tags, so the permutation and mask generators never share a seed sequence.
_ORDER_STREAM = 0
_MASK_STREAM = 1


class PretrainingDataset(EpochCursor):
    """One split of a prepared data set, read as batches of dicts of tensors.

    Batch keys and shapes (B rows, T = max_seq_length, or the longest row with
    `pad_to_longest`; P = max_predictions_per_seq):
        input_ids (B, T) int64, token_type_ids (B, T) int64, attention_mask (B, T) int64,
        masked_lm_positions (B, P) int64, masked_lm_ids (B, P) int64,
        masked_lm_weights (B, P) float32 (1.0 real, 0.0 padding; padded positions and ids 0),
        next_sentence_labels (B,) int64 (0 = B follows A, 1 = B is random).

    `seed` defaults to the manifest's random_seed.
    """

    def __init__(self, data_dir: str | Path, split: str = "train", *, seed: int | None = None,
                 pad_to_longest: bool = False):
        self.data_dir = Path(data_dir)
        self.split = split
        manifest = read_manifest(self.data_dir)
        if split not in manifest["splits"]:
            raise DataError(f"{self.data_dir / MANIFEST}: no split {split!r} "
                            f"(splits: {', '.join(manifest['splits'])})")
        cfg = manifest["config"]
        self.max_seq_length: int = cfg["max_seq_length"]
        self.max_predictions_per_seq: int = cfg["max_predictions_per_seq"]
        self.masked_lm_prob: float = cfg["masked_lm_prob"]
        self.do_whole_word_mask: bool = cfg["do_whole_word_mask"]
        self.do_lower_case: bool = cfg["do_lower_case"]
        self.vocab_file = self.data_dir / VOCAB
        self.seed: int = cfg["random_seed"] if seed is None else seed
        # in every random stream, so that the splits' sample i do not share masks
        self._split_tag = SPLITS.index(split)
        self.pad_to_longest = pad_to_longest
        self._shards: list[dict[str, Any]] = manifest["splits"][split]["shards"]
        self._ends = np.cumsum([s["instances"] for s in self._shards], dtype=np.int64)
        self._init_vocab(self.data_dir / VOCAB)
        self._open_shards()
        self.source = f"split {split!r} of {self.data_dir}"
        self._init_cursor()
        self._order_cache: tuple[int, np.ndarray] | None = None

    # ---- setup ----------------------------------------------------------------------------

    def _init_vocab(self, vocab_file: Path) -> None:
        vocab = load_vocab(vocab_file)
        size = max(vocab.values()) + 1
        self.pad_id = vocab.get("[PAD]", 0)
        self.mask_id = vocab.get("[MASK]")
        if self.mask_id is None:
            raise DataError(f"{vocab_file}: vocab has no [MASK] token; masked LM needs one")
        self._unmaskable = np.zeros(size, dtype=bool)
        self._unmaskable[[vocab["[CLS]"], vocab["[SEP]"], self.pad_id]] = True
        self._continuation = np.zeros(size, dtype=bool)
        self._continuation[[i for t, i in vocab.items() if t.startswith("##")]] = True
        special = [vocab[t] for t in SPECIAL_TOKENS if t in vocab]
        self._random_ids = np.setdiff1d(np.arange(size), special)

    def _open_shards(self) -> None:
        """Memory-map every shard, checking it holds what the manifest says."""
        self._tokens, self._index = [], []
        for shard in self._shards:
            for name in (shard["tokens"], shard["index"]):
                if not (self.data_dir / name).is_file():
                    raise DataError(f"{self.data_dir / MANIFEST} names {name}, which is missing")
            tokens = np.load(self.data_dir / shard["tokens"], mmap_mode="r")
            index = np.load(self.data_dir / shard["index"], mmap_mode="r")
            if len(tokens) != shard["num_tokens"] or len(index) != shard["instances"]:
                raise DataError(f"{self.data_dir / shard['tokens']}: holds {len(tokens)} tokens "
                                f"and {len(index)} instances; {MANIFEST} says "
                                f"{shard['num_tokens']} and {shard['instances']}")
            self._tokens.append(tokens)
            self._index.append(index)

    def __getstate__(self) -> dict[str, Any]:
        # Memory maps would pickle as copies of the data: reopen them in the new process.
        # The epoch permutation (4 bytes a sample) is recomputed there too.
        state = self.__dict__.copy()
        del state["_tokens"], state["_index"]
        state["_order_cache"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open_shards()

    # ---- samples --------------------------------------------------------------------------

    @property
    def num_samples(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def instance(self, i: int) -> tuple[np.ndarray, int, int, int]:
        """Sample i unmasked: (input_ids (L,) int64, start of segment B, NSP label, document)."""
        if not 0 <= i < self.num_samples:
            raise IndexError(f"sample {i} out of range [0, {self.num_samples})")
        shard = int(np.searchsorted(self._ends, i, side="right"))
        local = i - (int(self._ends[shard - 1]) if shard else 0)
        rec = self._index[shard][local]
        start, length = int(rec["start"]), int(rec["length"])
        ids = np.asarray(self._tokens[shard][start:start + length], dtype=np.int64)
        return ids, int(rec["b_start"]), int(rec["random_next"]), int(rec["doc"])

    def target_counts(self, max_samples: int = 50_000) -> np.ndarray:
        """How often each vocabulary id is a masked-LM candidate (any token but [CLS], [SEP] and
        [PAD]) in up to `max_samples` samples spread evenly over the split: (vocab size,) int64."""
        picks = np.unique(np.linspace(0, self.num_samples - 1, min(max_samples, self.num_samples)).astype(np.int64))
        ids = np.concatenate([self.instance(int(i))[0] for i in picks]) if len(picks) else np.zeros(0, np.int64)
        counts = np.bincount(ids, minlength=len(self._unmaskable))
        counts[self._unmaskable] = 0
        return counts

    def mask(self, input_ids: np.ndarray, epoch: int, i: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masked copy of sample i's ids for `epoch`: (masked ids (L,), positions (n,) sorted,
        original ids at those positions (n,)), n <= max_predictions_per_seq."""
        rng = np.random.default_rng([self.seed, _MASK_STREAM, self._split_tag, epoch, i])
        candidates = np.flatnonzero(~self._unmaskable[input_ids])
        num_to_predict = min(self.max_predictions_per_seq,
                             max(1, round(len(candidates) * self.masked_lm_prob)))
        positions = np.sort(self._choose_positions(input_ids, candidates, num_to_predict, rng))
        labels = input_ids[positions]
        masked = input_ids.copy()
        draw = rng.random(len(positions))
        masked[positions[draw < 0.8]] = self.mask_id
        replace = positions[draw >= 0.9]
        masked[replace] = self._random_ids[rng.integers(len(self._random_ids), size=len(replace))]
        return masked, positions, labels

    def _choose_positions(self, input_ids: np.ndarray, candidates: np.ndarray,
                          num_to_predict: int, rng: np.random.Generator) -> np.ndarray:
        """Google's greedy pick: words in random order, each taken whole if it still fits."""
        if not self.do_whole_word_mask:
            return candidates[rng.permutation(len(candidates))[:num_to_predict]]
        # A candidate starts a word unless it is a '##' piece right after another candidate.
        follows = np.zeros(len(candidates), dtype=bool)
        follows[1:] = np.diff(candidates) == 1
        starts = np.flatnonzero(~(follows & self._continuation[input_ids[candidates]]))
        words = np.split(candidates, starts[1:])
        chosen: list[np.ndarray] = []
        count = 0
        for w in rng.permutation(len(words)):
            if count >= num_to_predict:
                break
            if count + len(words[w]) <= num_to_predict:
                chosen.append(words[w])
                count += len(words[w])
        return np.concatenate(chosen) if chosen else candidates[:0]

    def collate(self, indices: np.ndarray, epoch: int) -> Batch:
        """The batch of samples `indices` (B,) with the masks of `epoch`."""
        rows = [self.instance(int(i)) for i in indices]
        width = max((len(r[0]) for r in rows), default=0) if self.pad_to_longest \
            else self.max_seq_length
        n, p = len(rows), self.max_predictions_per_seq
        input_ids = np.full((n, width), self.pad_id, dtype=np.int64)
        token_type_ids = np.zeros((n, width), dtype=np.int64)
        attention_mask = np.zeros((n, width), dtype=np.int64)
        positions = np.zeros((n, p), dtype=np.int64)
        label_ids = np.zeros((n, p), dtype=np.int64)
        weights = np.zeros((n, p), dtype=np.float32)
        nsp = np.zeros(n, dtype=np.int64)
        for row, (i, (ids, b_start, random_next, _)) in enumerate(zip(indices, rows, strict=True)):
            masked, pos, labels = self.mask(ids, epoch, int(i))
            input_ids[row, :len(ids)] = masked
            token_type_ids[row, b_start:len(ids)] = 1
            attention_mask[row, :len(ids)] = 1
            positions[row, :len(pos)] = pos
            label_ids[row, :len(pos)] = labels
            weights[row, :len(pos)] = 1.0
            nsp[row] = random_next
        arrays = {"input_ids": input_ids, "token_type_ids": token_type_ids,
                  "attention_mask": attention_mask, "masked_lm_positions": positions,
                  "masked_lm_ids": label_ids, "masked_lm_weights": weights,
                  "next_sentence_labels": nsp}
        return {k: torch.from_numpy(v) for k, v in arrays.items()}

    # ---- order (batching, sharding and resume: EpochCursor) --------------------------------

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The permutation of sample indices that epoch `epoch` visits."""
        if self._order_cache is None or self._order_cache[0] != epoch:
            dtype = np.int32 if self.num_samples < 2**31 else np.int64
            order = np.arange(self.num_samples, dtype=dtype)
            np.random.default_rng([self.seed, _ORDER_STREAM, self._split_tag, epoch]).shuffle(order)
            self._order_cache = (epoch, order)
        return self._order_cache[1]

    def epoch_indices(self, epoch: int, lo: int, hi: int) -> np.ndarray:
        return self.epoch_order(epoch)[lo:hi]

    def identity(self) -> dict[str, Any]:
        return {"seed": self.seed, "num_samples": self.num_samples, "split": self.split}
