"""Google's, MLPerf's and Intel's BERT command lines, with only paths changed and the runs
shrunk: Google run_pretraining.py / create_pretraining_data.py / run_classifier.py, the MLPerf
reference run_and_time.sh and NVIDIA's TensorFlow flags MLPerf submissions use, and Intel's
run_squad.py benchmark mode. Each flag's effect is checked."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import transformers
from compat_helpers import config_file, data  # noqa: F401 (fixtures)
from compat_helpers import metrics, parse, squad_slice, tiny_bert, write_config
from conftest import hf_config, shared

from bertforge.cli import main

VOCAB = str(shared("vocab", "bert-base-uncased", "vocab.txt"))



def train_records(out):
    return [r for r in metrics(out / "metrics.jsonl") if "loss" in r and r.get("split") is None]


def test_google_run_pretraining(data, config_file, tmp_path):
    """Google's README command (batch 32 -> 4, 20 steps -> 4, 10 warmup -> 2): AdamWeightDecay
    with linear decay (poly power 1) over all steps, warmup counted in steps."""
    out = tmp_path / "pretraining_output"
    argv = ["pretrain", f"--input_file={data}", f"--output_dir={out}", "--do_train=True", "--do_eval=True",
            f"--bert_config_file={config_file}", "--train_batch_size=4", "--max_seq_length=64",
            "--max_predictions_per_seq=10", "--num_train_steps=4", "--num_warmup_steps=2", "--learning_rate=2e-5",
            "--log_every=1"]
    cfg = parse(argv)
    assert (cfg.train.optimizer, cfg.train.schedule, cfg.train.schedule_power) == ("adamw", "poly", 1.0)
    assert cfg.train.max_steps == 4 and cfg.train.warmup_proportion == 0.5
    assert (cfg.train.train_batch_size, cfg.train.gradient_accumulation_steps) == (4, 1)
    assert main(argv) == 0
    lrs = [r["lr"] for r in train_records(out)]
    # update k: warmup k / W, then linear decay (1 - k / T) to 0
    assert lrs == pytest.approx([2e-5 * 1 / 2, 2e-5 * (1 - 2 / 4), 2e-5 * (1 - 3 / 4), 0.0])
    assert [r for r in metrics(out / "metrics.jsonl") if r.get("split") == "eval"]


def test_mlperf_run_and_time(data, config_file, tmp_path):
    """The MLPerf reference run_and_time.sh (TF): --optimizer=lamb with Google's poly decay
    (power 1), --nodo_eval, TPU/GPU knobs noted; 107538 steps -> 4, batch 24 -> 4."""
    out = tmp_path / "output"
    argv = ["pretrain", f"--bert_config_file={config_file}", f"--output_dir={out}", f"--input_file={data}",
            "--nodo_eval", "--do_train", "--eval_batch_size=8", "--learning_rate=0.0001",
            "--iterations_per_loop=1000", "--max_predictions_per_seq=10", "--max_seq_length=64",
            "--num_train_steps=4", "--num_warmup_steps=1", "--optimizer=lamb", "--save_checkpoints_steps=6250",
            "--start_warmup_step=0", "--num_gpus=8", "--train_batch_size=4", f"--vocab_file={VOCAB}"]
    cfg = parse(argv)
    assert (cfg.train.optimizer, cfg.train.schedule, cfg.train.schedule_power) == ("lamb", "poly", 1.0)
    assert cfg.train.warmup_proportion == 0.25 and cfg.do_eval is False and cfg.train.save_every == 6250
    assert main(argv) == 0
    assert not [r for r in metrics(out / "metrics.jsonl") if r.get("split") == "eval"]
    lrs = [r["lr"] for r in train_records(out)]
    assert lrs[-1] == 0.0 and lrs[0] == pytest.approx(1e-4 * (1 - 1 / 4))


def test_mlperf_nvidia_tensorflow_flags(data, config_file, tmp_path, caplog):
    """NVIDIA's TF BERT as MLPerf submissions run it: --train_batch_size is the micro-batch and
    --num_accumulation_steps multiplies it (global = 4 x 2 here), --dllog_path its dllogger file."""
    out = tmp_path / "phase1"
    argv = ["pretrain", f"--input_files_dir={data}", f"--output_dir={out}", f"--bert_config_file={config_file}",
            "--do_train=True", "--do_eval=False", "--train_batch_size=4", "--eval_batch_size=8",
            "--max_seq_length=64", "--max_predictions_per_seq=10", "--num_train_steps=2", "--num_accumulation_steps=2",
            "--num_warmup_steps=1", "--save_checkpoints_steps=100", "--learning_rate=7.5e-4", "--horovod",
            "--use_xla", "--noamp", "--allreduce_post_accumulation=True", f"--dllog_path={out}/dllog.json",
            "--enable_scoped_allocator=False", f"--vocab_file={VOCAB}"]
    cfg = parse(argv)
    assert (cfg.train.train_batch_size, cfg.train.gradient_accumulation_steps) == (4, 2)
    assert cfg.runtime.precision == "fp32" and cfg.runtime.json_summary == f"{out}/dllog.json"
    caplog.set_level(logging.INFO)
    assert main(argv) == 0
    assert "global batch 8 = 4 per device x 1 device(s) x 2 accumulation step(s)" in caplog.text
    assert "--horovod: launch with torchrun" in caplog.text
    assert (out / "dllog.json").read_text().startswith("DLLL {")


def test_google_create_pretraining_data(tmp_path, capsys):
    """Google's command writes one TFRecord file; bertforge writes a directory of shards, so a
    .tfrecord path is refused with the spelling that works, and a plain path becomes that directory."""
    corpus = tmp_path / "sample_text.txt"
    corpus.write_text("This is a sentence.\nAnother one follows it.\n\nA second document.\nWith two lines.\n")
    argv = ["prepare", "pretraining", f"--input_file={corpus}", f"--output_file={tmp_path}/tf_examples.tfrecord",
            f"--vocab_file={VOCAB}", "--do_lower_case=True", "--max_seq_length=128", "--max_predictions_per_seq=20",
            "--masked_lm_prob=0.15", "--random_seed=12345", "--dupe_factor=5"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "not a TFRecord/HDF5 file; pass --output_dir DIR" in err and err.count("\n") == 1
    argv[3] = f"--output_file={tmp_path}/shards"
    assert main([*argv, "--num_workers", "0"]) == 0
    assert (tmp_path / "shards" / "manifest.json").is_file()


def test_google_run_classifier_keeps_google_batch(tmp_path):
    """Google's run_classifier.py has no accumulation: its --train_batch_size is bertforge's."""
    cfg = parse(["finetune", "glue", "--task_name=MRPC", "--do_train=true", "--do_eval=true",
                 f"--data_dir={shared('glue', 'MRPC')}", f"--vocab_file={VOCAB}", "--bert_config_file=c.json",
                 "--init_checkpoint=m/bert_model.ckpt", "--max_seq_length=128", "--train_batch_size=32",
                 "--learning_rate=2e-5", "--num_train_epochs=3.0", f"--output_dir={tmp_path}"])
    assert (cfg.train.train_batch_size, cfg.train.gradient_accumulation_steps) == (32, 1)
    assert (cfg.train.optimizer, cfg.train.schedule) == ("adamw", "linear")


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_intel_run_squad_benchmark(tmp_path, restore_threads):
    """Intel's BERT-large SQuAD inference (benchmark mode, bfloat16, thread pools), on a model
    fine-tuned by NVIDIA's run_squad.py (pytorch_model.bin holding {'model': ...})."""
    torch.manual_seed(0)
    qa = transformers.BertForQuestionAnswering(hf_config(tiny_bert()))
    model_dir = tmp_path / "squad_model"
    model_dir.mkdir()
    torch.save({"model": qa.state_dict()}, model_dir / "pytorch_model.bin")
    config = write_config(model_dir / "bert_config.json")
    squad = squad_slice(tmp_path / "dev-v1.1.json", questions=16)
    out = tmp_path / "output"
    argv = ["predict", "squad", f"--vocab_file={VOCAB}", f"--bert_config_file={config}",
            f"--init_checkpoint={model_dir / 'pytorch_model.bin'}", "--do_predict=True", f"--predict_file={squad}",
            "--predict_batch_size=4", "--max_seq_length=128", "--doc_stride=64", f"--output_dir={out}",
            "--precision=bfloat16", "--mode=benchmark", "--inter_op_parallelism_threads=1",
            "--intra_op_parallelism_threads=2", "--do_lower_case=True"]
    cfg = parse(argv)
    assert cfg.runtime.precision == "bf16"
    assert main(argv) == 0
    assert torch.get_num_threads() == 2
    record = [r for r in metrics(out / "metrics.jsonl") if r.get("split") == "predict"][0]
    features = json.loads((out / "eval_results.json").read_text())
    assert features["questions"] == 16
    assert record["batches"] == -(-record["sequences"] // 4)
    assert record["sequences_per_second"] == pytest.approx(record["sequences"] / record["seconds"])
    assert 0 < record["latency_ms_p50"] <= record["latency_ms_p99"]
