"""What a pretrained checkpoint knows before fine-tuning, against the same architecture from random
weights: a diagnostic for `benchmarks/accuracy.py pretrain` when pretraining does not help.

For each checkpoint (and a random-weights model of the preset given), on SST-2 (the first
--train_sentences training sentences to fit, the dev set to score):
- linear probes (scikit-learn's logistic regression on standardised features) on the mean of the
  last hidden states, on the [CLS] state, and on the bag (mean) of the input word embeddings:
  what a classifier can read off the frozen model;
- how alike sentences look (the mean cosine similarity of their mean-pooled vectors);
- the size of the word embeddings (RMS of the matrix), which fine-tuning with Adam has to move,
  and of the encoder's and pooler's matrices by kind (random weights: 0.02): Adam moves a weight
  by about its learning rate whatever its size, so grown matrices fine-tune more slowly;
- with --pretrain_data (the directory `bertforge prepare pretraining` wrote), the shape of the
  word embeddings of the tokens in its train split: their effective rank (exp of the entropy of
  the centred matrix's normalised squared singular values; about the width for random weights),
  how much of the embeddings is one shared vector (norm of the mean over mean norm), and how
  closely their first principal components follow log token frequency. A model that learnt
  word frequencies into its embeddings shows a low rank and a component near |r| = 1;
- also with --pretrain_data, per layer, the share of attention a token gives its two neighbours
  on up to 128 held-out instances (the probabilities from transformers' eager attention on the
  converted weights): random weights give about 2 / length; a model that attends by position
  gives more.

    python benchmarks/pretrain_probe.py --preset mini runs/accuracy/pretrain/mini_1000steps_b32_lr1e-2
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

import bertforge
from bertforge.checkpoint.native import save_native
from bertforge.config import resolve_config
from bertforge.data.pretraining import PretrainingDataset
from bertforge.model import build_model

REPO = Path(__file__).resolve().parents[1]
MATRIX_KINDS = ("attention.qkv", "attention_output", "ffn.intermediate", "ffn.output", "pooler")
DATA = REPO.parent / "shared" / "data"


def read_sst2(path: Path, limit: int | None = None) -> tuple[list[str], np.ndarray]:
    with path.open(encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    rows = rows[:limit] if limit else rows
    return [r[0] for r in rows], np.array([int(r[1]) for r in rows])


def probe(train: np.ndarray, train_y: np.ndarray, dev: np.ndarray, dev_y: np.ndarray) -> float:
    """Dev accuracy (%) of a logistic regression fitted on standardised training features."""
    mu, sd = train.mean(0), train.std(0) + 1e-6
    clf = LogisticRegression(max_iter=2000).fit((train - mu) / sd, train_y)
    return 100 * clf.score((dev - mu) / sd, dev_y)


def embedding_shape(emb: np.ndarray, counts: np.ndarray) -> dict:
    """Effective rank, shared-vector share and |correlation with log frequency| of the first
    three principal components, over the embeddings of tokens with count > 0."""
    seen = counts > 0
    e = emb[seen]
    centred = e - e.mean(0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    p = s ** 2 / (s ** 2).sum()
    log_freq = np.log(counts[seen])
    return {"embedding_effective_rank": float(np.exp(-(p * np.log(p + 1e-12)).sum())),
            "embedding_mean_vector_share": float(np.linalg.norm(e.mean(0)) / np.linalg.norm(e, axis=1).mean()),
            "embedding_pc_log_frequency_abs_corr": [float(abs(np.corrcoef(u[:, i], log_freq)[0, 1])) for i in range(3)]}


def neighbour_attention(model_dir: Path, pretrain_data: Path) -> list[float]:
    """Per layer: the mean attention probability a token gives positions i-1 and i+1 (summed),
    over real tokens with both neighbours, on up to 128 held-out instances."""
    from transformers import BertConfig as HFConfig
    from transformers import BertModel as HFBert

    from bertforge.checkpoint.common import read_safetensors
    from bertforge.checkpoint.hf import native_to_hf

    config = json.loads((model_dir / "config.json").read_text())
    hf = HFBert(HFConfig(**config, attn_implementation="eager"), add_pooling_layer=False).eval()
    state = native_to_hf(read_safetensors(model_dir / "model.safetensors"))
    hf.load_state_dict({k.removeprefix("bert."): v for k, v in state.items()
                        if k.startswith("bert.") and "pooler" not in k})
    held_out = PretrainingDataset(pretrain_data, "held_out")
    batch = held_out.collate(np.arange(min(128, held_out.num_samples)), epoch=0)
    with torch.no_grad():
        attentions = hf(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"],
                        attention_mask=batch["attention_mask"], output_attentions=True).attentions
    mask = batch["attention_mask"].bool()
    inner = (mask[:, :-2] & mask[:, 2:])[:, None, :]  # (B, 1, T-2): positions 1..T-2 with both neighbours
    shares = []
    for a in attentions:  # (B, heads, T, T)
        t = torch.arange(1, a.shape[-1] - 1)
        both = a[..., t, t - 1] + a[..., t, t + 1]  # (B, heads, T-2)
        shares.append(float(both[inner.expand_as(both)].mean()))
    return shares


def describe(path: str, name: str, data: tuple, counts: np.ndarray | None = None,
             pretrain_data: Path | None = None) -> dict:
    (tr_x, tr_y), (dv_x, dv_y) = data
    qa = bertforge.load(path)
    result = {"model": name}
    for pooling in ("mean", "cls"):
        a, b = (qa.encode(x, pooling=pooling, max_seq_length=128) for x in (tr_x, dv_x))
        result[f"probe_{pooling}"] = probe(a, tr_y, b, dv_y)
        if pooling == "mean":
            unit = b / np.linalg.norm(b, axis=1, keepdims=True)
            result["mean_cosine_between_sentences"] = float((unit @ unit.T)[np.triu_indices(len(unit), 1)].mean())
    emb = qa.model.bert.embeddings.word_embeddings.weight.detach().float().numpy()
    tok = qa.loaded.tokenizer

    def bag(texts: list[str]) -> np.ndarray:
        return np.stack([emb[tok.convert_tokens_to_ids(tok.tokenize(t)) or [0]].mean(0) for t in texts])

    result["probe_word_embedding_bag"] = probe(bag(tr_x), tr_y, bag(dv_x), dv_y)
    result["word_embedding_rms"] = float(np.sqrt((emb ** 2).mean()))
    squares: dict[str, list[float]] = {}
    for pname, param in qa.model.named_parameters():
        kind = next((k for k in MATRIX_KINDS if k in pname), None)
        if kind and param.ndim == 2:
            squares.setdefault(kind, []).append(float((param.detach().float() ** 2).mean()))
    result["matrix_rms"] = {k: float(np.sqrt(np.mean(v))) for k, v in squares.items()}
    if counts is not None:
        result.update(embedding_shape(emb, counts))
    if pretrain_data is not None:
        result["neighbour_attention_per_layer"] = neighbour_attention(Path(path), pretrain_data)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="pretrained checkpoint directories")
    parser.add_argument("--preset", required=True, help="the architecture of the random-weights model (mini, tiny, ...)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train_sentences", type=int, default=8000)
    parser.add_argument("--data_root", type=Path, default=DATA)
    parser.add_argument("--pretrain_data", type=Path, help="prepared pretraining data: token frequencies")
    args = parser.parse_args()
    counts = PretrainingDataset(args.pretrain_data, "train").target_counts() if args.pretrain_data else None
    sst2 = args.data_root / "glue" / "SST-2"
    data = (read_sst2(sst2 / "train.tsv", args.train_sentences), read_sst2(sst2 / "dev.tsv"))
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(args.seed)
        config = resolve_config(args.preset)
        save_native(tmp, build_model(config, "pretraining"), config,
                    vocab_file=args.data_root / "vocab" / "bert-base-uncased" / "vocab.txt", do_lower_case=True)
        print(json.dumps(describe(tmp, f"random {args.preset} (seed {args.seed})", data, counts,
                                  args.pretrain_data)), flush=True)
    for path in args.checkpoints:
        print(json.dumps(describe(path, Path(path).name, data, counts, args.pretrain_data)), flush=True)


if __name__ == "__main__":
    main()
