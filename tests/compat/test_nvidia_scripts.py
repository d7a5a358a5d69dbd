"""NVIDIA DeepLearningExamples' PyTorch BERT command lines (scripts/run_pretraining.sh,
run_squad.sh, run_glue.sh) and Habana's port of run_squad.py, run by bertforge with only paths
changed and the runs shrunk; each flag's effect is checked (batch arithmetic, schedule,
optimizer, precision, checkpoints, dllogger output)."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from compat_helpers import config_file, data  # noqa: F401 (fixtures)
from compat_helpers import (logged, metrics, nvidia_pretraining_checkpoint, parse, read_dllog, squad_slice, tiny_bert,
                            write_config)
from conftest import shared
from safetensors.torch import load_file

from bertforge.checkpoint import load_checkpoint
from bertforge.cli import main

VOCAB = str(shared("vocab", "bert-base-uncased", "vocab.txt"))



def phase1_argv(data, out, config_file, *extra):
    """scripts/run_pretraining.sh's phase-1 command (22.x): paths changed; 8192 / 128 per GPU
    shrunk to 8 / 4, 7038 steps to 4, seq 128 / 20 predictions to the data's 64 / 10."""
    return ["pretrain", f"--input_dir={data}", f"--output_dir={out}", f"--config_file={config_file}",
            f"--vocab_file={VOCAB}", "--train_batch_size=8", "--max_seq_length=64", "--max_predictions_per_seq=10",
            "--max_steps=4", "--warmup_proportion=0.2843", "--num_steps_per_checkpoint=2", "--learning_rate=6e-3",
            "--seed=12439", "--fp16", "--gradient_accumulation_steps=4", "--allreduce_post_accumulation",
            "--allreduce_post_accumulation_fp16", "--do_train", "--json-summary", f"{out}/dllogger.json",
            "--disable_progress_bar", "--num_workers=4", *extra]


def test_run_pretraining_sh_phase1(data, config_file, tmp_path, caplog):
    out = tmp_path / "results" / "checkpoints"
    argv = phase1_argv(data, out, config_file)
    cfg = parse(argv)
    # NVIDIA's --train_batch_size is per optimizer step: 8 / 4 accumulation = micro-batches of 2
    assert (cfg.train.train_batch_size, cfg.train.gradient_accumulation_steps) == (2, 4)
    assert (cfg.train.optimizer, cfg.train.schedule, cfg.train.schedule_power) == ("lamb", "poly", 0.5)
    assert cfg.runtime.precision == "fp16" and cfg.runtime.num_workers == 4
    assert cfg.train.save_every == 2 and cfg.model.bert_model == str(config_file)
    assert cfg.max_seq_length == 64 and cfg.max_predictions_per_seq == 10

    caplog.set_level(logging.INFO)
    assert main(argv) == 0
    assert "micro-batches of 2" in caplog.text and "fp16" in caplog.text and "slower than fp32" in caplog.text
    assert "global batch 8 = 2 per device x 1 device(s) x 4 accumulation step(s)" in caplog.text
    train = [r for r in metrics(out / "metrics.jsonl") if "loss" in r and r.get("split") is None]
    assert [r["step"] for r in train] == [1, 4]  # the first step, then every 10th and the last
    # PolyWarmUpScheduler: update k at lr * (k / T) / warmup in warmup, lr * (1 - k / T)^0.5 after
    assert [r["lr"] for r in train] == pytest.approx([6e-3 * (1 / 4) / 0.2843, 6e-3 * (1 - 4 / 4) ** 0.5])
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["samples"] == 4 * 8  # four optimizer steps of NVIDIA's 8 sequences

    records = read_dllog(out / "dllogger.json")
    assert logged(records, "average_loss") == [r["loss"] for r in train]
    assert logged(records, "learning_rate") == [r["lr"] for r in train]
    assert logged(records, "step_loss") == [train[0]["loss"]]  # only where the line covers one step
    end = [r for r in records if r["type"] == "LOG" and r["step"] == []]
    assert end[0]["data"]["final_loss"] == pytest.approx(train[-1]["loss"])
    assert end[0]["data"]["training_sequences_per_second"] == pytest.approx(
        32 / end[0]["data"]["e2e_train_time"])
    assert [r["step"] for r in records if r["type"] == "LOG" and "average_loss" in r["data"]][0] == [0, 1]

    # the intermediate checkpoint is a checkpoint --init_checkpoint loads alone
    step2 = out / "checkpoints" / "step_00000002"
    ckpt = load_checkpoint(step2)
    assert ckpt.format == "native" and ckpt.config.hidden_size == tiny_bert().hidden_size
    assert ckpt.do_lower_case is True and ckpt.meta["step"] == 2 and ckpt.head == "pretraining"
    assert torch.equal(ckpt.state["bert.embeddings.word_embeddings.weight"],
                       load_file(str(step2 / "model.safetensors"))["bert.embeddings.word_embeddings.weight"])


def test_batch_that_does_not_divide_is_refused(data, config_file, tmp_path, capsys):
    argv = phase1_argv(data, tmp_path / "o", config_file)
    argv[argv.index("--train_batch_size=8")] = "--train_batch_size=10"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--train_batch_size 10 is per optimizer step and must divide by --gradient_accumulation_steps 4" in err
    assert "--train.train_batch_size MICRO --train.gradient_accumulation_steps 4" in err


def phase2_argv(data, out, config_file, *extra):
    """scripts/run_pretraining.sh's phase-2 command: the same output dir, --phase2
    --resume_from_checkpoint --phase1_end_step (4096 / 512 shrunk to 8 / 2, 1563 steps to 2)."""
    return ["pretrain", f"--input_dir={data}", f"--output_dir={out}", f"--config_file={config_file}",
            f"--vocab_file={VOCAB}", "--train_batch_size=8", "--max_seq_length=64", "--max_predictions_per_seq=10",
            "--max_steps=2", "--warmup_proportion=0.128", "--num_steps_per_checkpoint=200", "--learning_rate=4e-3",
            "--seed=12439", "--gradient_accumulation_steps=2", "--allreduce_post_accumulation", "--do_train",
            "--phase2", "--resume_from_checkpoint", "--phase1_end_step=7", "--json-summary", f"{out}/dllogger.json",
            "--disable_progress_bar", "--num_workers=1", *extra]


def test_phase2_starts_from_nvidia_phase1_checkpoint(data, config_file, tmp_path, caplog):
    out = tmp_path / "checkpoints"
    out.mkdir()
    hf, moments = nvidia_pretraining_checkpoint(out / "ckpt_7.pt", tiny_bert(), lamb_steps=7)
    caplog.set_level(logging.INFO)
    assert main(phase2_argv(data, out, config_file)) == 0
    assert "phase 2 starts from its weights and LAMB moments, step counts reset" in caplog.text
    # what phase 2 started from, written as this run's first checkpoint: phase 1's weights and
    # moments (query/key/value concatenated as bertforge holds them), LAMB's step count at 0
    start = out / "checkpoints" / "step_00000000"
    weights = load_file(str(start / "model.safetensors"))
    torch.testing.assert_close(weights["bert.embeddings.word_embeddings.weight"],
                               hf.bert.embeddings.word_embeddings.weight.detach(), rtol=0, atol=0)
    trainer = torch.load(start / "trainer.pt", weights_only=True)
    assert all(group["step"] == 0 for group in trainer["optimizer"]["param_groups"])
    qkv = torch.cat([moments[f"bert.encoder.layer.0.attention.self.{n}.weight"][0] for n in ("query", "key", "value")])
    found = [s["exp_avg"] for s in trainer["optimizer"]["state"].values() if s["exp_avg"].shape == qkv.shape]
    assert any(torch.equal(f, qkv) for f in found)
    record = [r for r in metrics(out / "metrics.jsonl") if r.get("event") == "resume"][0]
    assert record["step"] == 0
    steps = [r["step"] for r in metrics(out / "metrics.jsonl") if "loss" in r and r.get("split") is None]
    assert steps == [1, 2]
    assert json.loads((out / "run_config.json").read_text())["phase2"] is True


def test_resume_continues_nvidia_checkpoint(data, config_file, tmp_path, caplog):
    """--resume_from_checkpoint (no --phase2) in a directory of ckpt_<step>.pt: continue at that
    step with its weights, moments and LAMB step count, never from random weights."""
    out = tmp_path / "checkpoints"
    out.mkdir()
    nvidia_pretraining_checkpoint(out / "ckpt_3.pt", tiny_bert(), lamb_steps=3)
    caplog.set_level(logging.INFO)
    assert main(phase1_argv(data, out, config_file, "--resume_from_checkpoint")) == 0
    assert "resuming at step 3 with its weights, LAMB moments and step count" in caplog.text
    trainer = torch.load(out / "checkpoints" / "step_00000003" / "trainer.pt", weights_only=True)
    assert all(group["step"] == 3 for group in trainer["optimizer"]["param_groups"])
    steps = [r["step"] for r in metrics(out / "metrics.jsonl") if "loss" in r and r.get("split") is None]
    assert steps == [4]


def test_phase2_spelling_without_nvidia_checkpoint_explains_bertforge_spelling(data, config_file, tmp_path, capsys):
    assert main(phase2_argv(data, tmp_path / "empty", config_file)) == 2
    err = capsys.readouterr().err
    assert "bertforge pretrain --phase2 --init_checkpoint PHASE1_OUTPUT_DIR --output_dir PHASE2_DIR" in err


def test_max_seq_length_is_checked_against_the_data(data, config_file, tmp_path, capsys):
    argv = phase1_argv(data, tmp_path / "o", config_file)
    argv[argv.index("--max_seq_length=64")] = "--max_seq_length=128"
    assert main(argv) == 2
    assert "--max_seq_length 128, but" in capsys.readouterr().err


@pytest.fixture(scope="module")
def dle_checkpoint(tmp_path_factory):
    """A pretrained checkpoint as NVIDIA distributes it: a .pt file `{'model': ...}` and a config."""
    directory = tmp_path_factory.mktemp("dle")
    config = write_config(directory / "bert_config.json")
    nvidia_pretraining_checkpoint(directory / "bert_uncased.pt", tiny_bert())
    return directory / "bert_uncased.pt", config


def test_run_squad_sh(dle_checkpoint, tmp_path, caplog):
    """scripts/run_squad.sh ("train eval"), shrunk: batch 24 -> 8 per step with 2 accumulation
    steps, 2 epochs -> 1 on 24 questions, seq 384 -> 128."""
    ckpt, config = dle_checkpoint
    squad = squad_slice(tmp_path / "train-v1.1.json")
    out = tmp_path / "SQuAD"
    argv = ["finetune", "squad", f"--init_checkpoint={ckpt}", "--do_train", f"--train_file={squad}",
            "--train_batch_size=8", "--do_predict", f"--predict_file={squad}", "--predict_batch_size=8",
            "--eval_script=evaluate-v1.1.py", "--do_eval", "--do_lower_case", "--bert_model=bert-large-uncased",
            "--learning_rate=3e-5", "--seed=1", "--num_train_epochs=1", "--max_seq_length=128", "--doc_stride=64",
            f"--output_dir={out}", f"--vocab_file={VOCAB}", f"--config_file={config}", "--max_steps=-1",
            "--gradient_accumulation_steps=2", f"--json-summary={out}/dllogger.json", "--use_env"]
    cfg = parse(argv)
    assert (cfg.train.train_batch_size, cfg.train.gradient_accumulation_steps) == (4, 2)
    assert cfg.train.max_steps is None and cfg.train.num_train_epochs == 1.0  # -1: the epochs decide
    assert cfg.model.bert_model == str(config) and cfg.model.do_lower_case is True  # config file wins
    assert (cfg.train.optimizer, cfg.train.schedule) == ("adamw", "linear")
    caplog.set_level(logging.INFO)
    assert main(argv) == 0
    assert "built-in official SQuAD v1.1 metric" in caplog.text
    records = read_dllog(out / "dllogger.json")
    summary = {k: v for r in records if r["type"] == "LOG" and r["step"] == [] for k, v in r["data"].items()}
    scores = json.loads((out / "eval_results.json").read_text())
    assert summary["exact_match"] == scores["exact_match"] and summary["F1"] == scores["f1"]
    for key in ("e2e_train_time", "training_sequences_per_second", "final_loss", "e2e_inference_time",
                "inference_sequences_per_second"):
        assert summary[key] > 0, key
    predicted = [r for r in metrics(out / "metrics.jsonl") if r.get("split") == "predict"][0]
    assert predicted["sequences"] == json.loads(json.dumps(predicted))["sequences"] > 0
    assert 0 < predicted["latency_ms_p50"] <= predicted["latency_ms_p99"]
    assert summary["inference_sequences_per_second"] == pytest.approx(predicted["sequences_per_second"])


def test_run_glue_sh_with_skip_checkpoint(dle_checkpoint, tmp_path):
    """scripts/run_glue.sh (MRPC, train) without --config_file, as the script passes it: the
    architecture is the checkpoint's; --skip_checkpoint writes no model."""
    ckpt, config = dle_checkpoint
    mrpc = shared("glue", "MRPC")
    out = tmp_path / "MRPC"
    argv = ["finetune", "glue", "--task_name", "MRPC", "--do_train", "--train_batch_size=12", "--do_eval",
            "--do_lower_case", "--data_dir", str(mrpc), "--bert_model", "bert-large-uncased", "--init_checkpoint",
            str(ckpt), "--max_seq_length", "128", "--learning_rate", "5e-6", "--num_train_epochs", "2",
            "--max_steps", "2.0", "--output_dir", str(out), f"--vocab_file={VOCAB}", "--skip_checkpoint",
            "--gradient_accumulation_steps", "3"]
    cfg = parse(argv)
    assert cfg.model.bert_model is None  # the checkpoint's config (beside it), not bert-large's
    assert (cfg.train.train_batch_size, cfg.train.gradient_accumulation_steps, cfg.train.max_steps) == (4, 3, 2)
    assert cfg.train.skip_checkpoint and cfg.train.save_every is None
    assert main(argv) == 0
    assert (out / "eval_results.json").is_file()
    assert not (out / "model.safetensors").exists() and not (out / "checkpoints").exists()


def test_habana_run_squad(dle_checkpoint, tmp_path, capsys):
    """Habana's PyTorch/nlp/bert run_squad.py command (README, lazy mode, bf16): --use_habana
    means the HPU, --autocast bf16, --use_hpu_graphs compiled graphs; on a machine without an
    HPU the run stops with one line naming the switch, and runs with --device cpu appended."""
    ckpt, config = dle_checkpoint
    squad = squad_slice(tmp_path / "train-v1.1.json", questions=8)
    out = tmp_path / "squad"
    argv = ["finetune", "squad", "--do_train", "--bert_model=bert-large-uncased", f"--config_file={config}",
            "--use_habana", "--use_fused_adam", "--do_lower_case", f"--output_dir={out}",
            f"--json-summary={out}/dllogger.json", "--train_batch_size=4", "--predict_batch_size=8", "--seed=1",
            "--max_seq_length=128", "--doc_stride=64", "--max_steps=2", "--learning_rate=3e-5",
            "--num_train_epochs=2", f"--init_checkpoint={ckpt}", f"--vocab_file={VOCAB}", f"--train_file={squad}",
            "--skip_cache", "--do_predict", f"--predict_file={squad}", "--do_eval", "--eval_script=evaluate.py",
            "--log_freq", "20", "--autocast", "--use_hpu_graphs", "--use_lazy_mode=True"]
    cfg = parse(argv)
    assert (cfg.runtime.device, cfg.runtime.precision, cfg.runtime.compile) == ("hpu", "bf16", True)
    assert cfg.train.log_every == 20 and cfg.train.max_steps == 2
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--use_habana: no HPU here; drop it or use --device cpu" in err
    assert main([*argv, "--device", "cpu", "--no-compile"]) == 0
    assert (out / "predictions.json").is_file()
