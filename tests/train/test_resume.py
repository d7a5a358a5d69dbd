"""Exact resume through the real command line: a run configured for N steps is killed (SIGKILL,
as a crashed node) after its step-N/2 checkpoint, the same command is run again with
`--resume true`, and the final weights are bit for bit those of N steps run straight.

Dropout is on, so the weights depend on every random draw: restoring the generators' states
is part of what is checked (a control run that skips it ends elsewhere).

A resumed run steps with its own optimizer settings (weight decay, betas, eps), not the
checkpoint's, and says which differ; another optimizer's state is refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bertforge.cli import main as cli_main
from bertforge.errors import CheckpointError
from bertforge.model import build_model
from bertforge.runconfig import RuntimeArgs, TrainArgs
from bertforge.tasks.glue import ClassificationLoss
from bertforge.train import checkpoints
from bertforge.train.batching import ArrayStepLoader, StepPlan
from bertforge.train.loop import Trainer
from bertforge.train.runtime import Runtime
from conftest import random_batch, shared, tiny_config
from dist_worker import Job, launch, prepare_wiki_pretraining, read_metrics, read_weights, run_cli, write_tiny_config


def checkpoint_dirs(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def train_losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir) if "seq_per_s" in r]


def assert_bit_identical(a_dir: Path, b_dir: Path) -> None:
    a, b = read_weights(a_dir), read_weights(b_dir)
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:3]}"


def crash(argv: list[str], workdir: Path, kill_at_save: int, when: str) -> None:
    """Run `argv` in its own process, SIGKILLed at its `kill_at_save`-th checkpoint."""
    result = launch(Job(argv, kill_at_save=kill_at_save, kill_when=when), workdir)
    assert result.returncode == -9, f"expected SIGKILL, got {result.returncode}:\n{result.output[-3000:]}"


@pytest.mark.slow
def test_pretraining_resume_after_kill_is_bit_identical(tmp_path, vocab_file):
    """LAMB, polynomial decay with warmup, dynamic masking: 6 steps vs 3 + kill + resume 3."""
    data = prepare_wiki_pretraining(shared("text", "wiki_summaries_en.jsonl"), vocab_file, tmp_path / "data")
    write_tiny_config(tmp_path / "tiny.json", dropout=0.1)

    def argv(out: str) -> list[str]:
        return ["pretrain", "--input_dir", str(data), "--bert_model", str(tmp_path / "tiny.json"),
                "--max_steps", "6", "--save_every", "3", "--warmup_proportion", "0.5",
                "--learning_rate", "1e-2", "--train_batch_size", "8", "--log_every", "1", "--device", "cpu",
                "--output_dir", str(tmp_path / out)]

    run_cli(argv("straight"))
    crash(argv("resumed"), tmp_path / "launch", kill_at_save=1, when="after")
    assert checkpoint_dirs(tmp_path / "resumed") == ["step_00000003"]
    assert not (tmp_path / "resumed" / "model.safetensors").exists()

    run_cli(argv("resumed") + ["--resume", "true"])
    assert_bit_identical(tmp_path / "straight", tmp_path / "resumed")
    # The killed run logged steps 1-3, the resumed one 4-6: the same losses, bit for bit.
    assert train_losses(tmp_path / "resumed") == train_losses(tmp_path / "straight")
    assert [s for s, _ in train_losses(tmp_path / "straight")] == [1, 2, 3, 4, 5, 6]


@pytest.fixture(scope="module")
def squad_crash(tmp_path_factory, vocab_file, squad_dev_file):
    """A SQuAD run of 4 steps (checkpoints every 2) killed while writing its step-4 checkpoint,
    and the same run straight. Returns (root, argv builder)."""
    root = tmp_path_factory.mktemp("squad-resume")
    write_tiny_config(root / "tiny.json", dropout=0.1)

    def argv(out: str) -> list[str]:
        return ["finetune", "squad", "--do_train", "--train_file", str(squad_dev_file),
                "--train_articles", "0:1", "--max_seq_length", "128", "--bert_model", str(root / "tiny.json"),
                "--vocab_file", str(vocab_file), "--do_lower_case", "true", "--max_steps", "4",
                "--save_every", "2", "--learning_rate", "1e-3", "--train_batch_size", "8",
                "--log_every", "1", "--device", "cpu", "--output_dir", str(root / out)]

    run_cli(argv("straight"))
    crash(argv("crashed"), root / "launch", kill_at_save=2, when="during")
    return root, argv


@pytest.mark.slow
def test_squad_resume_after_crash_mid_checkpoint_is_bit_identical(squad_crash):
    """AdamW, linear schedule, dropout: the kill left step 2 complete and step 4 half written."""
    root, argv = squad_crash
    crashed = root / "crashed"
    assert checkpoint_dirs(crashed) == [".tmp-step_00000004", "step_00000002"]
    partial = crashed / "checkpoints" / ".tmp-step_00000004"
    assert sorted(p.name for p in partial.iterdir()) == ["model.safetensors", "rng_rank0.pt"]
    resumed = root / "resumed"
    shutil.copytree(crashed, resumed)

    run_cli(argv("resumed") + ["--resume", "true"])
    assert_bit_identical(root / "straight", resumed)
    # metrics.jsonl is append-only: the killed run logged steps 1-4, the resumed one 3-4 again.
    logged = train_losses(resumed)
    assert [s for s, _ in logged] == [1, 2, 3, 4, 3, 4]
    assert logged[2:4] == logged[4:6]
    assert dict(logged) == dict(train_losses(root / "straight"))
    assert checkpoint_dirs(resumed) == ["step_00000002", "step_00000004"]


@pytest.mark.slow
def test_squad_resume_without_rng_state_would_differ(squad_crash, monkeypatch):
    """Control: the same resume with the random generators left as the new process seeds them
    ends with other weights, so the bit-identical result above depends on restoring them."""
    root, argv = squad_crash
    control = root / "control"
    shutil.copytree(root / "crashed", control)
    monkeypatch.setattr(checkpoints, "set_rng_state", lambda state: None)
    run_cli(argv("control") + ["--resume", "true"])
    a, b = read_weights(root / "straight"), read_weights(control)
    assert not all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_resume_with_another_global_batch_is_refused(squad_crash, capsys):
    root, argv = squad_crash
    other = root / "other-batch"
    shutil.copytree(root / "crashed", other)
    assert cli_main(argv("other-batch") + ["--resume", "true", "--train_batch_size", "4"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume: this command differs from the run" in err
    assert "train.train_batch_size: 8 -> 4" in err
    assert "Traceback" not in err


# ---- optimizer settings on resume (in process) ------------------------------------------------

STEPS = 4


def small_run(out: Path, **train) -> Trainer:
    """A tiny classifier trained for STEPS steps with a checkpoint every 2 (dropout on)."""
    torch.manual_seed(0)
    config = tiny_config(hidden_dropout_prob=0.1)
    arrays = {k: v.numpy() for k, v in random_batch(config, 32, 16).items()}
    arrays["labels"] = np.arange(32) % 2
    args = TrainArgs(**{"train_batch_size": 4, "learning_rate": 1e-2, "warmup_proportion": 0.0, "max_steps": STEPS,
                        "log_every": 1, "save_every": 2, **train})
    return Trainer(build_model(config, "classification"), ClassificationLoss(regression=False),
                   ArrayStepLoader(arrays, StepPlan(4, 1, 1), rank=0, seed=0), args,
                   Runtime(RuntimeArgs(device="cpu")), out, STEPS, progress=False)


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def resume_record(out: Path) -> dict:
    return next(r for r in read_metrics(out) if r.get("event") == "resume")


@pytest.fixture
def lamb_run(tmp_path) -> tuple[Path, dict]:
    """LAMB with weight decay 0.01 run straight: its step-2 checkpoint and final weights."""
    straight = small_run(tmp_path / "straight", optimizer="lamb", weight_decay=0.01)
    straight.fit()
    return checkpoints.checkpoint_root(tmp_path / "straight") / "step_00000002", weights(straight)


def test_resume_steps_with_this_runs_weight_decay(tmp_path, lamb_run):
    """Weight decay 0 on resume switches LAMB's trust ratio off from step 3 on: the result is a
    run that changed the setting in memory after step 2, not the checkpoint's 0.01."""
    step2, straight = lamb_run
    resumed = small_run(tmp_path / "resumed", optimizer="lamb", weight_decay=0.0, resume=str(step2))
    resumed.fit()
    assert [g["weight_decay"] for g in resumed.state.optimizer.param_groups] == [0.0, 0.0]
    assert resume_record(tmp_path / "resumed")["changed"] == {"weight_decay": [0.01, 0.0]}

    switched = small_run(tmp_path / "switched", optimizer="lamb", weight_decay=0.01)
    switched.add_callback("on_step_end", lambda t: [g.update(weight_decay=0.0) for g in
                                                     t.state.optimizer.param_groups] if t.step == 2 else None)
    switched.fit()
    ours, want = weights(resumed), weights(switched)
    assert all(torch.equal(ours[k], want[k]) for k in want)
    assert not all(torch.equal(ours[k], straight[k]) for k in want)  # the switch changed the result


def test_resume_keeps_this_runs_betas_and_eps(tmp_path, lamb_run):
    """A checkpoint whose optimizer ran with other betas and eps (another version, another tool):
    the resumed run steps with its own and ends where the straight run did."""
    step2, straight = lamb_run
    other = tmp_path / "other" / "step_00000002"
    shutil.copytree(step2, other)
    state = torch.load(other / checkpoints.STATE_FILE, weights_only=True)
    for group in state["optimizer"]["param_groups"]:
        group.update(betas=(0.8, 0.99), eps=1e-8)
    torch.save(state, other / checkpoints.STATE_FILE)

    resumed = small_run(tmp_path / "resumed", optimizer="lamb", weight_decay=0.01, resume=str(other))
    resumed.fit()
    assert resume_record(tmp_path / "resumed")["changed"] == {"betas": [[0.8, 0.99], [0.9, 0.999]],
                                                              "eps": [1e-8, 1e-6]}
    ours = weights(resumed)
    assert all(torch.equal(ours[k], straight[k]) for k in straight)


@pytest.mark.parametrize("recorded", [True, False])
def test_resume_refuses_another_optimizers_state(tmp_path, lamb_run, recorded):
    step2, _ = lamb_run
    if not recorded:  # a checkpoint from before the optimizer was recorded: told by its layout
        meta = json.loads((step2 / checkpoints.META_FILE).read_text())
        del meta["optimizer"]
        (step2 / checkpoints.META_FILE).write_text(json.dumps(meta))
    adamw = small_run(tmp_path / "adamw", optimizer="adamw", resume=str(step2))
    with pytest.raises(CheckpointError, match="another optimizer .* than this run's AdamW"):
        adamw.fit()
