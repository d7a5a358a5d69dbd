"""Data-parallel training and prediction on CPU (gloo), through the real command line.

Equivalence: 2 processes x batch 4 (torchrun), 1 process x batch 8, and 1 process x batch 4 x 2
accumulation steps train the same tiny BERT (dropout off) to the same weights, for SQuAD
fine-tuning (AdamW) and pretraining (LAMB). The trainer divides every loss sum by the count over
the whole global batch, so the three runs differ only in the order fp32 sums are taken.

How close is "the same": the fp32 gradient of one step is itself only accurate to ~1e-6
relative for the attention and LayerNorm tensors (measured against the same step in float64),
and AdamW/LAMB turn a gradient into an update of about the learning rate whatever its size, so
tensors made mostly of updates (biases start at 0) can differ between the runs by ~1e-6 of
their norm. Hence: the whole model within 1e-6 (relative, Frobenius norm), each tensor within
1e-5. Tensors whose gradient is exactly zero in exact arithmetic are left out (see
`NOISE_ONLY`): each run feeds its own rounding noise through Adam there; the test checks that
they stayed at noise level, so leaving them out hides nothing.

Sensitivity: gradient clipping makes a step blind to a wrong overall gradient scale (a
world-size factor lost in DDP's averaging, say), so the SQuAD runs train without clipping; the
pretraining runs keep the recipe's clipping at 1.0, where per-rank masked-token counts differ,
so a per-rank normalisation error would change the gradient's direction.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import torch

from bertforge.cli import main as cli_main
from bertforge.errors import DeviceError
from bertforge.train.runtime import resolve_device
from conftest import shared
from dist_worker import (Job, Launch, launch, prepare_wiki_pretraining, read_metrics, read_weights,
                         run_cli, write_tiny_config)

SQUAD_STEPS, SQUAD_LR = 5, 1e-3
PRETRAIN_STEPS, PRETRAIN_LR = 6, 1e-2
PREDICT_BATCH = 40  # 1,376 features -> 35 batches: the two ranks get unequal shares

# Zero gradient in exact arithmetic. The key bias adds q.b_k to every score of a softmax row
# (softmax is shift invariant); the QA bias, and the last LayerNorm's bias through the QA
# layer, shift every start (end) logit of a sequence alike, and the span loss is a softmax
# over positions.
NOISE_ONLY = {
    "squad": ("attention.qkv.bias.key", "qa_outputs.bias", "layers.1.ffn_norm.bias"),
    "pretraining": ("attention.qkv.bias.key",),
}


@dataclass
class Runs:
    root: Path
    bad_batch: Launch
    """Two ranks, global batch 6, 4 per device."""

    def __truediv__(self, name: str) -> Path:
        return self.root / name


def squad_train_argv(runs_root: Path, vocab_file: Path, squad_file: Path, out: str) -> list[str]:
    return ["finetune", "squad", "--do_train", "--train_file", str(squad_file), "--train_articles", "0:1",
            "--max_seq_length", "128", "--bert_model", str(runs_root / "tiny.json"),
            "--vocab_file", str(vocab_file), "--do_lower_case", "true", "--max_steps", str(SQUAD_STEPS),
            "--learning_rate", str(SQUAD_LR), "--max_grad_norm", "null", "--log_every", "1",
            "--device", "cpu", "--output_dir", str(runs_root / out)]


def pretrain_argv(runs_root: Path, out: str) -> list[str]:
    return ["pretrain", "--input_dir", str(runs_root / "pretraining-data"),
            "--bert_model", str(runs_root / "tiny.json"), "--max_steps", str(PRETRAIN_STEPS),
            "--learning_rate", str(PRETRAIN_LR), "--log_every", "1", "--device", "cpu",
            "--output_dir", str(runs_root / out)]


def predict_argv(squad_file: Path) -> list[str]:
    return ["--predict_file", str(squad_file), "--predict_articles", "0:1",
            "--predict_batch_size", str(PREDICT_BATCH)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, vocab_file, squad_dev_file) -> Runs:
    """All runs of this module: the two-process ones through torchrun, the one-process ones in
    this process."""
    root = tmp_path_factory.mktemp("distributed")
    write_tiny_config(root / "tiny.json", dropout=0.0)
    prepare_wiki_pretraining(shared("text", "wiki_summaries_en.jsonl"), vocab_file,
                             root / "pretraining-data")
    squad = partial(squad_train_argv, root, vocab_file, squad_dev_file)
    global_8 = ["--global_batch_size", "8", "--train_batch_size", "4"]
    launch(Job(squad("squad-2x4") + global_8 + ["--do_predict"] + predict_argv(squad_dev_file)),
           root / "launch-squad", nproc=2).check()
    launch(Job(pretrain_argv(root, "pretrain-2x4") + global_8), root / "launch-pretrain", nproc=2).check()
    bad = launch(Job(squad("squad-bad-batch") + ["--global_batch_size", "6", "--train_batch_size", "4"]),
                 root / "launch-bad-batch", nproc=2).check()  # the worker records the exit status
    run_cli(squad("squad-1x8") + ["--train_batch_size", "8"])
    run_cli(squad("squad-1x4x2") + global_8)
    run_cli(pretrain_argv(root, "pretrain-1x8") + ["--train_batch_size", "8"])
    run_cli(pretrain_argv(root, "pretrain-1x4x2") + global_8)
    run_cli(["predict", "squad", "--init_checkpoint", str(root / "squad-2x4"), "--max_seq_length", "128",
             "--device", "cpu", "--output_dir", str(root / "predict-1")] + predict_argv(squad_dev_file))
    return Runs(root, bad)


# ---- comparing weights ---------------------------------------------------------------------


def split_qkv_bias(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The fused (3H,) qkv bias as its query, key and value parts (the key part is NOISE_ONLY)."""
    out = {}
    for name, w in weights.items():
        if name.endswith("attention.qkv.bias"):
            for part, chunk in zip(("query", "key", "value"), w.double().chunk(3)):
                out[f"{name}.{part}"] = chunk
        else:
            out[name] = w.double()
    return out


@dataclass
class Differences:
    model: float
    """||a - b|| / ||a|| over all compared tensors."""
    worst_tensor: tuple[float, str]
    """The largest per-tensor ||a - b|| / ||a||."""
    noise_max: float
    """The largest |w| in a NOISE_ONLY tensor, of either run."""


def differences(a_dir: Path, b_dir: Path, noise_only: tuple[str, ...]) -> Differences:
    a, b = split_qkv_bias(read_weights(a_dir)), split_qkv_bias(read_weights(b_dir))
    assert a.keys() == b.keys()
    noise = [k for k in a if k.endswith(noise_only)]
    assert noise, "NOISE_ONLY names no tensor of this model"
    compared = [k for k in a if k not in noise]
    per_tensor = [(((a[k] - b[k]).norm() / a[k].norm()).item(), k) for k in compared]
    diff = math.sqrt(sum(((a[k] - b[k]) ** 2).sum().item() for k in compared))
    norm = math.sqrt(sum((a[k] ** 2).sum().item() for k in compared))
    noise_max = max(max(a[k].abs().max().item(), b[k].abs().max().item()) for k in noise)
    return Differences(diff / norm, max(per_tensor), noise_max)


def assert_same_training(runs: Runs, names: list[str], task: str, steps: int, lr: float) -> None:
    reference = runs / names[0]
    for other in names[1:]:
        d = differences(reference, runs / other, NOISE_ONLY[task])
        print(f"{task}: {names[0]} vs {other}: model {d.model:.2e}, worst tensor {d.worst_tensor[0]:.2e} "
              f"({d.worst_tensor[1]}), noise-only tensors |w| <= {d.noise_max:.1e}")
        assert d.model <= 1e-6, d
        assert d.worst_tensor[0] <= 1e-5, d
        # A trained tensor moves by about lr per step (Adam, LAMB); these stayed far below.
        assert d.noise_max <= 0.1 * lr * steps, d
        # Same samples in every step: the logged losses (global sums / global counts) agree.
        ref_loss = [r["loss"] for r in read_metrics(reference) if "seq_per_s" in r]
        other_loss = [r["loss"] for r in read_metrics(runs / other) if "seq_per_s" in r]
        assert len(ref_loss) == len(other_loss) == steps
        assert other_loss == pytest.approx(ref_loss, rel=1e-6)


def assert_weights_moved(run_dir: Path, steps: int, lr: float) -> None:
    """The comparison means something only if training changed the weights: biases start at 0."""
    weights = read_weights(run_dir)
    moved = weights["bert.encoder.layers.0.ffn.output.bias"].abs().max().item()
    assert moved >= 0.3 * lr * steps


# ---- equivalence -----------------------------------------------------------------------------


@pytest.mark.slow
def test_squad_two_ranks_match_one_rank_and_accumulation(runs):
    assert_weights_moved(runs / "squad-1x8", SQUAD_STEPS, SQUAD_LR)
    assert_same_training(runs, ["squad-1x8", "squad-2x4", "squad-1x4x2"], "squad", SQUAD_STEPS, SQUAD_LR)


@pytest.mark.slow
def test_pretraining_two_ranks_match_one_rank_and_accumulation(runs):
    assert_weights_moved(runs / "pretrain-1x8", PRETRAIN_STEPS, PRETRAIN_LR)
    assert_same_training(runs, ["pretrain-1x8", "pretrain-2x4", "pretrain-1x4x2"], "pretraining",
                         PRETRAIN_STEPS, PRETRAIN_LR)
    # Held-out evaluation, its sums reduced over the two ranks, scores the same sequences.
    evals = {name: [r for r in read_metrics(runs / name) if r.get("split") == "eval"]
             for name in ("pretrain-1x8", "pretrain-2x4")}
    one, two = evals["pretrain-1x8"][-1], evals["pretrain-2x4"][-1]
    assert one["eval_sequences"] == two["eval_sequences"] > 0
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)


# ---- prediction --------------------------------------------------------------------------------


def article_question_ids(squad_file: Path, article: int) -> list[str]:
    doc = json.loads(squad_file.read_text(encoding="utf-8"))["data"][article]
    return [qa["id"] for paragraph in doc["paragraphs"] for qa in paragraph["qas"]]


@pytest.mark.slow
def test_two_rank_prediction_equals_one_rank(runs, squad_dev_file):
    two, one = runs / "squad-2x4", runs / "predict-1"
    predictions = json.loads((two / "predictions.json").read_text())
    assert predictions == json.loads((one / "predictions.json").read_text())
    ids = article_question_ids(squad_dev_file, 0)
    assert len(ids) == len(set(ids)) == len(predictions)
    assert set(predictions) == set(ids)
    nbest_two = json.loads((two / "nbest_predictions.json").read_text())
    nbest_one = json.loads((one / "nbest_predictions.json").read_text())
    assert nbest_two.keys() == nbest_one.keys()
    for qid, candidates in nbest_one.items():
        assert [c["text"] for c in nbest_two[qid]] == [c["text"] for c in candidates]
        assert [c["probability"] for c in nbest_two[qid]] == pytest.approx(
            [c["probability"] for c in candidates], rel=1e-6, abs=1e-9)


# ---- bad setups --------------------------------------------------------------------------------


@pytest.mark.slow
def test_global_batch_not_divisible_on_two_ranks(runs):
    assert len(runs.bad_batch.results) == 2
    for rank in runs.bad_batch.results:
        assert rank["exit_code"] == 2
        assert "global batch 6 is not divisible by train_batch_size 4 x 2 device(s) = 8" in rank["stderr"]
        assert "Traceback" not in rank["stderr"]


def test_global_batch_not_divisible_on_one_rank(tmp_path, vocab_file, squad_dev_file, capsys):
    write_tiny_config(tmp_path / "tiny.json", dropout=0.0)
    argv = squad_train_argv(tmp_path, vocab_file, squad_dev_file, "out") + [
        "--global_batch_size", "10", "--train_batch_size", "4"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "global batch 10 is not divisible by train_batch_size 4 x 1 device(s) = 4" in err
    assert "Traceback" not in err


def _no_accelerator(monkeypatch) -> None:
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)


def test_missing_device_lists_available_ones(tmp_path, monkeypatch, capsys):
    _no_accelerator(monkeypatch)
    with pytest.raises(DeviceError, match=r"--device cuda: no cuda device on this machine; "
                                          r"available here: cpu$"):
        resolve_device("cuda")
    assert cli_main(["pretrain", "--input_dir", str(tmp_path), "--bert_model", "tiny", "--max_steps", "1",
                     "--device", "cuda", "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "bertforge pretrain: error: --device cuda: no cuda device on this machine; available here: cpu" in err
    assert "Traceback" not in err


def test_device_index_beyond_the_machine(monkeypatch):
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda: torch.device("cuda"))
    monkeypatch.setattr(torch.accelerator, "device_count", lambda: 2)
    assert resolve_device("cuda", local_rank=3) == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match=r"this machine has 2 cuda device\(s\); available here: "
                                          r"cpu, cuda:0, cuda:1"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "cpu:0:1"])
def test_unknown_device_string(spec, monkeypatch):
    _no_accelerator(monkeypatch)
    with pytest.raises(DeviceError, match=rf"--device '{spec}' is not a device name; available here: cpu"):
        resolve_device(spec)


def test_device_error_exits_2_without_traceback(tmp_path):
    """The real command, in its own process: exit status 2 and one line of error."""
    present = torch.accelerator.current_accelerator().type if torch.accelerator.is_available() else None
    missing = next(kind for kind in ("cuda", "xpu", "mps") if kind != present)
    proc = subprocess.run([sys.executable, "-m", "bertforge", "finetune", "squad", "--do_train",
                           "--train_file", "x.json", "--bert_model", "tiny", "--device", missing,
                           "--output_dir", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert f"error: --device {missing}: no {missing} device on this machine; available here: cpu" in proc.stderr
    assert "Traceback" not in proc.stderr
