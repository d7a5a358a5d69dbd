"""The vendor recipes' command lines run by bertforge on a machine without the vendor's
hardware: paths changed, sizes shrunk, the vendor's device switch dropped (with it, the run
stops with one line naming the switch), --use_torch_compile answered with --no-compile (its
first step on a CPU costs about a minute). The recipes are Cambricon's PyTorch BERT
(pytorch_modelzoo built-in/nlp/BERT), Enflame's (ModelZoo training/pytorch/nlp/BERT),
Habana's (Model-References PyTorch/nlp/bert), Intel's launch_benchmark.py (BERT-large,
TensorFlow) and the MPI launch Habana's multi-card examples use."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from compat_helpers import metrics, squad_slice, tiny_bert, write_config
from conftest import hf_config, shared
from pretraining_writers import synthetic_samples, write_google_tfrecord, write_nvidia_hdf5

from bertforge.cli import main

TF = Path(__file__).resolve().parents[1] / "fixtures" / "tf"
RELEASE = TF / "uncased_L-2_H-16_A-2"  # a Google release (pretraining head, its vocab.txt), shrunk
SQUAD_CKPT = TF / "squad_sharded"  # a run_squad.py output directory (model.ckpt-7)


def train_steps(out: Path) -> list[int]:
    return [r["step"] for r in metrics(out / "metrics.jsonl") if "loss" in r and r.get("split") is None]


# ---- Cambricon: the Hugging Face conversion its README runs ---------------------------------------

def test_cambricon_convert_writes_the_pt_file(tmp_path):
    """convert_bert_original_tf_checkpoint_to_pytorch.py --tf_checkpoint_path --bert_config_file
    --pytorch_dump_path pytorch_model.pt: one file of transformers' names that transformers loads."""
    dump = tmp_path / "pytorch_model.pt"
    assert main(["convert", f"--tf_checkpoint_path={RELEASE}/bert_model.ckpt",
                 f"--bert_config_file={RELEASE}/bert_config.json", f"--pytorch_dump_path={dump}"]) == 0
    assert dump.is_file()
    state = torch.load(dump, weights_only=True)
    tf = np.load(RELEASE / "expected.npz")
    np.testing.assert_array_equal(state["bert.embeddings.word_embeddings.weight"].numpy(),
                                  tf["bert/embeddings/word_embeddings"])
    model = transformers.BertForPreTraining(transformers.BertConfig.from_json_file(RELEASE / "bert_config.json"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # only the decoder, which transformers ties to the word embeddings and cls.predictions.bias
    assert unexpected == [] and set(missing) == {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}


@pytest.mark.parametrize("device", ["--device mlu", "--device=gcu"])
def test_cambricon_and_enflame_devices_are_refused_in_one_line(device, tmp_path, capsys, caplog, monkeypatch):
    """Enflame's scripts export ENFLAME_ENABLE_TF32=true: bertforge warns that it does not read it."""
    monkeypatch.setenv("ENFLAME_ENABLE_TF32", "true")
    assert main(["finetune", "squad", "--do_train", f"--train_file={tmp_path}/t.json", *device.split(),
                 f"--output_dir={tmp_path}/out"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a device name" in err
    assert not (tmp_path / "out").exists()
    assert "ENFLAME_ENABLE_TF32=true: Enflame's TF32 switch is not read: --precision tf32" in caplog.text


# ---- Habana and Enflame: run_pretraining.py on HDF5, phase 1 then phase 2 in one directory ------

@pytest.fixture(scope="module")
def hdf5(tmp_path_factory):
    """NVIDIA/Habana HDF5 shards (token ids, no vocabulary): phase 1 at 32 tokens, phase 2 at 64."""
    root = tmp_path_factory.mktemp("hdf5")
    for seq, predictions in ((32, 5), (64, 10)):
        directory = root / f"hdf5_lower_case_1_seq_len_{seq}" / "books_wiki_en_corpus"
        directory.mkdir(parents=True)
        write_nvidia_hdf5(directory / "books_wiki_en_corpus_training_0.hdf5",
                          synthetic_samples(48, seq, predictions, seed=seq))
    write_config(root / "bert_config.json", tiny_bert())
    return root


def habana_pretraining(data: Path, out: Path, phase: int) -> list[str]:
    """Habana's README, unpacked data, BF16, 1 HPU: 8192 / 4096 shrunk to 8 / 4, 7038 / 1563
    steps to 3 / 2; no --vocab_file, no --do_lower_case (the data holds token ids)."""
    common = ["pretrain", "--do_train", "--bert_model=bert-large-uncased", "--autocast",
              f"--config_file={data}/bert_config.json", "--use_habana", "--allreduce_post_accumulation",
              "--allreduce_post_accumulation_fp16", f"--json-summary={out.parent}/log/dllogger.json",
              f"--output_dir={out}", "--use_fused_lamb"]
    if phase == 1:
        return [*common, f"--input_dir={data}/hdf5_lower_case_1_seq_len_32/books_wiki_en_corpus",
                "--train_batch_size=8", "--max_seq_length=32", "--max_predictions_per_seq=5", "--max_steps=3",
                "--warmup_proportion=0.2843", "--num_steps_per_checkpoint=2", "--learning_rate=0.006",
                "--gradient_accumulation_steps=2", "--enable_packed_data_mode", "False", "--use_torch_compile"]
    return [*common, f"--input_dir={data}/hdf5_lower_case_1_seq_len_64/books_wiki_en_corpus",
            "--train_batch_size=4", "--max_seq_length=64", "--max_predictions_per_seq=10", "--max_steps=2",
            "--warmup_proportion=0.128", "--num_steps_per_checkpoint=200", "--learning_rate=0.004",
            "--gradient_accumulation_steps=2", "--resume_from_checkpoint", "--phase1_end_step=3", "--phase2",
            "--enable_packed_data_mode", "False", "--use_torch_compile"]


def without_device(argv: list[str]) -> list[str]:
    return [a for a in argv if a != "--use_habana"] + ["--no-compile"]


def test_habana_pretraining_phase1_then_phase2_in_the_same_directory(hdf5, tmp_path, capsys, caplog):
    out = tmp_path / "results" / "checkpoints"
    # with the device switch: one line naming it, and the output directory is left as it was
    assert main(habana_pretraining(hdf5, out, 1)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--use_habana: no HPU here; drop it or use --device cpu" in err
    # phase 1 without it: no vocabulary needed for token ids
    assert main(without_device(habana_pretraining(hdf5, out, 1))) == 0
    phase1 = json.loads((out / "bertforge.json").read_text())
    assert phase1["phase"] == 1 and phase1["steps"] == 3 and train_steps(out) == [1, 3]
    # phase 2 as the recipe spells it, in the same --output_dir: from phase 1's model, into phase2/
    caplog.set_level(logging.INFO)
    assert main(without_device(habana_pretraining(hdf5, out, 2))) == 0
    assert "phase 2 starts from its model" in caplog.text
    phase2 = out / "phase2"
    assert json.loads((phase2 / "bertforge.json").read_text())["phase"] == 2 and train_steps(phase2) == [1, 2]
    assert json.loads((phase2 / "run_config.json").read_text())["model"]["init_checkpoint"] == str(out)
    assert json.loads((out / "bertforge.json").read_text()) == phase1  # phase 1 is as it was


def test_mpirun_launches_one_training_of_two_ranks(hdf5, tmp_path):
    """Habana's 8-card examples: mpirun -n 8 with MASTER_ADDR/MASTER_PORT exported. Here two
    processes with Open MPI's variables (as mpirun sets them) and gloo on this host."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "checkpoints"
    argv = without_device(habana_pretraining(hdf5, out, 1))
    procs = []
    for rank in range(2):
        env = dict(os.environ, PYTHONWARNINGS="ignore", MASTER_ADDR="localhost", MASTER_PORT=str(port),
                   OMPI_COMM_WORLD_RANK=str(rank), OMPI_COMM_WORLD_SIZE="2", OMPI_COMM_WORLD_LOCAL_RANK=str(rank),
                   OMPI_COMM_WORLD_LOCAL_SIZE="2")
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            env.pop(name, None)
        procs.append(subprocess.Popen([sys.executable, "-m", "bertforge", *argv], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    # one run of two ranks: NVIDIA's 8 per optimizer step, 4 micro x 2 accumulation, per rank
    assert "global batch 16 = 4 per device x 2 device(s) x 2 accumulation step(s)" in outputs[0]
    assert json.loads((out / "train_summary.json").read_text())["samples"] == 3 * 16


# ---- Intel: launch_benchmark.py -------------------------------------------------------------------

@pytest.fixture(scope="module")
def data_location(tmp_path_factory):
    """--data-location as Intel's README has it: Google's release directory with dev-v1.1.json in it."""
    directory = tmp_path_factory.mktemp("intel") / "uncased_L-2_H-16_A-2"
    directory.mkdir()
    shutil.copy(RELEASE / "vocab.txt", directory / "vocab.txt")
    shutil.copy(SQUAD_CKPT / "bert_config.json", directory / "bert_config.json")
    squad_slice(directory / "dev-v1.1.json", questions=6)
    return directory


def inference(data: Path, out: Path, *extra: str) -> list[str]:
    """The README's inference command (batch 32 -> 4); its checkpoint is model.ckpt-7 here, and
    the fixture model embeds 24 positions (seq 384 -> 24, stride 128 -> 8, query 64 -> 8)."""
    return ["launch_benchmark", "--model-name=bert_large", "--precision=bfloat16", "--mode=inference",
            "--framework=tensorflow", "--batch-size=4", "--data-location", str(data), "--checkpoint", str(SQUAD_CKPT),
            "--output-dir", str(out), "--docker-image", "intel/tensorflow-2.2-bf16", *extra]


SHRUNK = ["init_checkpoint=model.ckpt-7", "max_seq_length=24", "doc_stride=8", "max_query_length=8"]


def test_launch_benchmark_inference_benchmark_and_accuracy(data_location, tmp_path, capsys):
    """No --do_lower_case anywhere: the release name uncased_L-... says it, as Google's scripts read it."""
    bench = tmp_path / "bench"
    assert main(inference(data_location, bench, "--benchmark-only", "--", *SHRUNK)) == 0
    assert "running bertforge predict squad" in capsys.readouterr().err
    record = [r for r in metrics(bench / "metrics.jsonl") if r.get("split") == "predict"][0]
    assert record["sequences_per_second"] > 0 and not (bench / "eval_results.json").exists()
    assert json.loads((bench / "run_config.json").read_text())["model"]["do_lower_case"] is True
    accuracy = tmp_path / "accuracy"
    assert main(inference(data_location, accuracy, "--accuracy-only", "--", *SHRUNK)) == 0
    assert set(json.loads((accuracy / "eval_results.json").read_text())) >= {"exact_match", "f1"}


def test_launch_benchmark_profile_writes_a_trace(tmp_path, capsys):
    """-- profile=True: a torch.profiler trace of SQuAD inference (the fixture's 24 positions are
    too few for SQuAD's 64-token questions, so a 128-position model stands in for it)."""
    data = tmp_path / "uncased_L-12_H-768_A-12"
    data.mkdir()
    config = write_config(data / "bert_config.json", tiny_bert())
    shutil.copy(shared("vocab", "bert-base-uncased", "vocab.txt"), data / "vocab.txt")
    squad_slice(data / "dev-v1.1.json", questions=4)
    torch.manual_seed(0)
    checkpoints = tmp_path / "bert-squad-ckpts"
    checkpoints.mkdir()
    qa = transformers.BertForQuestionAnswering(hf_config(tiny_bert()))
    torch.save({"model": qa.state_dict()}, checkpoints / "model.pt")
    out = tmp_path / "out"
    argv = inference(data, out, "--", "profile=True", "init_checkpoint=model.pt", "max_seq_length=128")
    argv[argv.index("--checkpoint") + 1] = str(checkpoints)
    assert main(argv) == 0
    trace = json.loads((out / "bert_large_trace.json").read_text())
    assert trace["traceEvents"] and config.is_file()
    assert "trace written to" in capsys.readouterr().out


def test_launch_benchmark_pretraining_evaluates(tmp_path):
    """Pretraining with do-eval=True on Google TFRecords: MLM/NSP accuracy on the input files, as
    Google's run_pretraining.py reports it; no vocabulary needed. batch 32 -> 4, 20 steps -> 2."""
    tfrecord = write_google_tfrecord(tmp_path / "tf_examples.tfrecord", synthetic_samples(24, 32, 5, seed=1))
    release = tmp_path / "wwm_uncased_L-24_H-1024_A-16"
    release.mkdir()
    write_config(release / "bert_config.json", tiny_bert())
    out = tmp_path / "pretraining_output"
    assert main(["launch_benchmark", "--model-name=bert_large", "--precision=bfloat16", "--mode=training",
                 "--framework=tensorflow", "--batch-size=4", "--", "train-option=Pretraining",
                 f"input-file={tfrecord}", f"output-dir={out}", "do-train=True", "do-eval=True",
                 f"config-file={release}/bert_config.json", "max-seq-length=32", "max-predictions=5",
                 "num-train-steps=2", "warmup-steps=1", "learning-rate=2e-5"]) == 0
    evals = [r for r in metrics(out / "metrics.jsonl") if r.get("split") == "eval"]
    assert evals and 0.0 <= evals[-1]["mlm_accuracy"] <= 1.0 and evals[-1]["eval_sequences"] == 24
