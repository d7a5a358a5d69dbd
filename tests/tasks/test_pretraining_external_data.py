"""`bertforge pretrain` on data other toolkits prepared, and MLPerf's evaluation loop.

Real Wikipedia text is prepared by bertforge, masked once, and written out by independent
writers (tests/pretraining_writers.py) as NVIDIA HDF5, Habana packed HDF5 and Google
TFRecords; a tiny BERT then trains on each through the command line.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import prepare_wiki_slice
from pretraining_writers import (from_batch, greedy_packs, rows, write_google_tfrecord, write_nvidia_hdf5,
                                 write_packed_hdf5)
from safetensors.torch import load_file

from bertforge.cli import main
from bertforge.data.pretraining import PretrainingDataset
from bertforge.tasks.mlperf import SampleSchedule
from bertforge.train.loop import Trainer

BATCH = 16


def _as_samples(ds: PretrainingDataset) -> dict[str, np.ndarray]:
    parts = [from_batch(b) for b in ds.eval_batches(512)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@pytest.fixture(scope="module")
def data(tmp_path_factory, vocab_file) -> dict[str, Path]:
    """The train split of 300 Wikipedia articles (seq 64) as NVIDIA HDF5, Habana packed HDF5
    and TFRecords, two files each holding the same samples; the held-out split as a TFRecord
    evaluation set."""
    root = tmp_path_factory.mktemp("external")
    prepare_wiki_slice(root, 300, vocab_file)
    train = _as_samples(PretrainingDataset(root / "prepared", "train"))
    n = len(train["input_ids"])
    out = {kind: root / kind for kind in ("nvidia", "packed", "tfrecord", "eval")}
    for d in out.values():
        d.mkdir()
    for k, part in enumerate((rows(train, slice(0, n // 2)), rows(train, slice(n // 2, n)))):
        write_nvidia_hdf5(out["nvidia"] / f"part_{k}.hdf5", part)
        write_packed_hdf5(out["packed"] / f"part_{k}.hdf5", part, greedy_packs(part))
        write_google_tfrecord(out["tfrecord"] / f"part-{k:05d}-of-00002", part)
    write_google_tfrecord(out["eval"] / "eval_10k", _as_samples(PretrainingDataset(root / "prepared", "held_out")))
    (root / "tiny.json").write_text(json.dumps({
        "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 37, "max_position_embeddings": 128, "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1}))
    out["config"], out["vocab"] = root / "tiny.json", vocab_file
    return out


def pretrain_argv(data: dict[str, Path], input_kind: str, out: Path, steps: int, *extra: str) -> list[str]:
    return ["pretrain", "--input_dir", str(data[input_kind]), "--bert_model", str(data["config"]),
            "--vocab_file", str(data["vocab"]), "--do_lower_case", "true", "--max_steps", str(steps),
            "--train_batch_size", str(BATCH), "--learning_rate", "1e-2", "--warmup_proportion", "0.1",
            "--log_every", "1", "--device", "cpu", "--output_dir", str(out), *extra]


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def train_records(run: Path) -> list[dict]:
    return [r for r in read_metrics(run) if "seq_per_s" in r]


def test_each_format_trains_and_the_loss_falls(data, tmp_path):
    """The same samples in three layouts: HDF5 and TFRecord give bit-identical runs (same
    order, same batches), packed HDF5 the same up to summation order (its masked-LM arrays
    are wider, by zero-weight entries)."""
    losses = {}
    for kind in ("nvidia", "tfrecord", "packed"):
        assert main(pretrain_argv(data, kind, tmp_path / kind, 50)) == 0
        losses[kind] = [r["mlm_loss"] for r in train_records(tmp_path / kind)]
    nvidia = losses["nvidia"]
    assert len(nvidia) == 50 and all(math.isfinite(x) for x in nvidia)
    print(f"MLM loss {nvidia[0]:.3f} -> {np.mean(nvidia[-5:]):.3f}")
    assert np.mean(nvidia[-5:]) < nvidia[0] - 0.5  # from ~ln(30522) = 10.3 down
    assert losses["tfrecord"] == nvidia
    assert np.allclose(losses["packed"], nvidia, rtol=1e-4, atol=0)


class Crash(Exception):
    """Stands for a node going down right after a checkpoint."""


@pytest.mark.parametrize("kind", ["nvidia", "tfrecord"])
def test_resume_after_a_crash_is_bit_identical(kind, data, tmp_path, monkeypatch):
    """6 steps straight vs 3 + crash + resume 3, dropout on (its random state is resumed too)."""
    argv = lambda out: pretrain_argv(data, kind, tmp_path / out, 6, "--save_every", "3")  # noqa: E731
    assert main(argv("straight")) == 0
    save = Trainer.save

    def save_then_crash(trainer):
        path = save(trainer)
        raise Crash(path)

    monkeypatch.setattr(Trainer, "save", save_then_crash)
    with pytest.raises(Crash):
        main(argv("resumed"))
    monkeypatch.setattr(Trainer, "save", save)
    assert main(argv("resumed") + ["--resume", "true"]) == 0
    a, b = load_file(str(tmp_path / "straight" / "model.safetensors")), load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = lambda run: [(r["step"], r["loss"]) for r in train_records(tmp_path / run)]  # noqa: E731
    assert steps("resumed") == steps("straight")  # steps 1-3 before the crash, 4-6 after


def test_mlperf_loop_stops_at_the_target_accuracy(data, tmp_path):
    """Evaluation every 64 samples (4 steps of 16) on a separate TFRecord set; the run ends at
    the first evaluation reaching stop_threshold, saves there, and logs the time to train."""
    out = tmp_path / "mlperf"
    assert main(pretrain_argv(data, "nvidia", out, 60, "--eval_dir", str(data["eval"]), "--samples_between_eval", "64",
                              "--stop_threshold", "0.02", "--save_every", "5", "--log_every", "5")) == 0
    records = read_metrics(out)
    evals = [r for r in records if r.get("split") == "eval"]
    assert [r["step"] for r in evals] == list(range(4, 4 * len(evals) + 1, 4))
    assert [r["samples"] for r in evals] == [r["step"] * BATCH for r in evals]
    assert all(r["eval_sequences"] == evals[0]["eval_sequences"] > 0 for r in evals)
    reached = [r for r in evals if r["mlm_accuracy"] >= 0.02]
    assert reached and reached[0] is evals[-1], "the run goes on past the first evaluation at the target"
    stop_step = evals[-1]["step"]
    assert stop_step < 60
    assert records[0] == {"event": "run_start", "step": 0, "samples": 0, "stop_threshold": 0.02}
    run_stop = records[-1]
    assert run_stop["event"] == "run_stop" and run_stop["status"] == "success"
    assert (run_stop["step"], run_stop["samples"], run_stop["mlm_accuracy"]) == \
        (stop_step, stop_step * BATCH, evals[-1]["mlm_accuracy"])
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == stop_step and summary["run_stop"] == run_stop
    assert 0 < run_stop["time_to_train_s"] <= summary["seconds"]
    # stopped after that step: logged (between log lines), checkpointed, model saved
    assert train_records(out)[-1]["step"] == stop_step
    assert (out / "checkpoints" / f"step_{stop_step:08d}").is_dir()
    assert (out / "model.safetensors").is_file()


def test_max_samples_termination_ends_the_run(data, tmp_path):
    out = tmp_path / "budget"
    assert main(pretrain_argv(data, "tfrecord", out, 60, "--eval_dir", str(data["eval"]), "--samples_between_eval",
                              "64", "--stop_threshold", "0.99", "--max_samples_termination", "100")) == 0
    records = read_metrics(out)
    assert train_records(out)[-1]["step"] == 7  # 7 * 16 = 112 >= 100
    evals = [r["step"] for r in records if r.get("split") == "eval"]
    assert evals == [4, 7]  # the schedule's, and one at the end
    run_stop = records[-1]
    assert run_stop["status"] == "aborted" and run_stop["step"] == 7
    assert run_stop["reason"] == "max_samples_termination: 112 samples trained"
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["stop_reason"] == run_stop["reason"] and summary["steps"] == 7


@pytest.mark.parametrize("argv, message", [
    (["--eval_every", "5"], "evaluation needs an evaluation set: --input_dir .* has no held-out split; give --eval_dir"),
    (["--stop_threshold", "0.72"], "--stop_threshold is checked at each evaluation: give --samples_between_eval"),
    (["--eval_every", "5", "--samples_between_eval", "64"], "give one"),
], ids=["no-eval-set", "threshold-without-schedule", "two-schedules"])
def test_evaluation_settings_are_checked_before_work(argv, message, data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(pretrain_argv(data, "nvidia", out, 5, *argv)) == 2
    assert message.split(" .* ")[0] in capsys.readouterr().err
    assert not (out / "metrics.jsonl").exists()


def test_reference_flag_names(data, tmp_path):
    """MLPerf's PyTorch (Iluvatar, NVIDIA) and TensorFlow (Habana) spellings of the loop's flags."""
    from bertforge.cli import find_command, parse_command

    def parse(argv):
        command, rest = find_command(argv)
        return parse_command(command, rest)[0].data

    pytorch = parse(["pretrain", "--input_dir", "d", "--eval_dir", "e", "--eval_iter_samples", "150000",
                     "--eval_iter_start_samples", "3000000", "--target_mlm_accuracy", "0.72",
                     "--num_eval_examples", "10000", "--max_samples_termination", "4500000", "--max_steps", "1000"])
    tensorflow = parse(["pretrain", "--input_files_dir", "d", "--eval_files_dir", "e", "--samples_between_eval",
                        "150000", "--samples_start_eval", "3000000", "--stop_threshold", "0.72",
                        "--max_eval_samples", "10000", "--max_samples_termination", "4500000",
                        "--num_train_steps", "1000"])
    assert pytorch == tensorflow
    assert (pytorch.input_dir, pytorch.eval_dir, pytorch.samples_between_eval, pytorch.samples_start_eval,
            pytorch.stop_threshold, pytorch.max_eval_samples, pytorch.max_samples_termination) == \
        ("d", "e", 150000, 3000000, 0.72, 10000, 4500000)


@pytest.mark.parametrize("every, start, per_step", [(64, 0, 16), (150, 0, 64), (150, 1000, 48), (100, 30, 7)])
def test_sample_schedule_is_mlperfs(every, start, per_step):
    """Evaluation steps as Iluvatar's run_pretraining.py computes them from the start of a run:
    ceil(t / samples per step) for the thresholds t in range(max(start, every), budget, every)
    (here the budget is past the last step)."""
    budget = 40 * every
    expected = sorted({math.ceil(t / per_step) for t in range(max(start, every), budget + 1, every)})
    steps = budget // per_step
    got = [s for s in range(1, steps + 1) if SampleSchedule(every, start, per_step).due(s)]
    assert got == [s for s in expected if s <= steps]


def test_unigram_bias_init_needs_prepared_data(data, tmp_path, capsys):
    """--mlm_bias_init unigram counts tokens in `bertforge prepare pretraining` output; on HDF5
    it is refused before any training."""
    out = tmp_path / "unigram"
    assert main(pretrain_argv(data, "nvidia", out, 1, "--mlm_bias_init", "unigram")) == 2
    assert "holds files other toolkits prepared" in capsys.readouterr().err
    assert not (out / "model.safetensors").exists()
