"""benchmarks/accuracy.py dapt, the continued-pretraining measurement, end to end with --smoke on
a tiny BERT saved by transformers as a headless encoder (as MiniLM is): the SQuAD contexts are
prepared with whole articles held out, the head-only run trains the head and leaves every
backbone tensor as it was, the continued run moves the backbone and is
fine-tuned on SQuAD and reported (plain MiniLM's fine-tune, --dapt_baseline, is the same
command from the other checkpoint: left out to keep this test short)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import torch
import transformers

from conftest import REPO, shared

SCRIPT = REPO / "benchmarks" / "accuracy.py"


def tiny_encoder(tmp_path):
    """A headless BERT (transformers' BertModel, pooler included) with the bert-base-uncased
    vocabulary, its casing recorded as MiniLM's is, and 512 positions, which SQuAD's 384-token
    windows need."""
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=37, max_position_embeddings=512)
    out = tmp_path / "tiny"
    transformers.BertModel(config).save_pretrained(out)
    shutil.copy(shared("vocab", "bert-base-uncased", "vocab.txt"), out / "vocab.txt")
    (out / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    return out


def test_smoke_path(tmp_path):
    from bertforge.checkpoint import load_checkpoint

    model = tiny_encoder(tmp_path)
    results = tmp_path / "results.jsonl"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--workdir", str(tmp_path / "work"),
                           "--results", str(results), "--model_dir", str(model), "dapt"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = {r["stage"] + r.get("init", ""): r for r in map(json.loads, results.read_text().splitlines())}
    assert sorted(records) == ["finetunedapt", "head_only", "prepare", "pretrain"]

    squad = json.loads(shared("squad", "v1.1", "dev-v1.1.json").read_text())["data"]
    prepared = records["prepare"]
    assert prepared["documents"] == 2 and prepared["articles"] == "4:6"
    assert len(prepared["held_out_articles"]) == prepared["held_out_docs"] >= 1 and prepared["train_docs"] >= 1
    assert set(prepared["held_out_articles"]) <= {a["title"] for a in squad[4:6]}

    head, dapt = records["head_only"], records["pretrain"]
    assert [h["step"] for h in head["heldout"]] == [0, 1, 2]
    assert [h["step"] for h in dapt["heldout"]] == [0, 2, 3]
    # Both runs start from the same seeded fresh head: the same loss before the first update.
    assert dapt["heldout"][0] == head["heldout"][0]

    init = load_checkpoint(model).state
    frozen = load_checkpoint(tmp_path / "work" / "dapt" / head["output_dir"].split("/")[-1]).state
    moved = load_checkpoint(tmp_path / "work" / "dapt" / dapt["output_dir"].split("/")[-1]).state
    backbone = [n for n in init if n.startswith(("bert.embeddings.", "bert.encoder."))]
    assert backbone and all(torch.equal(frozen[n], init[n]) for n in backbone)
    assert not torch.equal(frozen["bert.pooler.dense.weight"], init["bert.pooler.dense.weight"])
    assert not torch.equal(moved["bert.encoder.layers.0.ffn.intermediate.weight"],
                           init["bert.encoder.layers.0.ffn.intermediate.weight"])
    assert dapt["weight_change"]["encoder_layers"] > 0

    tuned = records["finetunedapt"]
    assert 0 <= tuned["f1"] <= 100 and tuned["questions"] > 0
    assert f"finetune squad --init_checkpoint {tmp_path / 'work' / 'dapt' / 'pretrain_'}" in tuned["run_command"]

    report = subprocess.run([sys.executable, str(SCRIPT), "--results", str(results), "report"],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=120).stdout
    for h in dapt["heldout"]:
        assert f"| {h['step']} | {h['mlm_loss']:.3f} | {100 * h['mlm_accuracy']:.2f} |" in report
    assert f"| {records['finetunedapt']['f1']:.2f} | {records['finetunedapt']['exact_match']:.2f} |" in report
