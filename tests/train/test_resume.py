"""Exact resume through the real command line: a run configured for N steps is killed (SIGKILL,
as a crashed node) after its step-N/2 checkpoint, the same command is run again with
`--resume true`, and the final weights are bit for bit those of N steps run straight.

Dropout is on, so the weights depend on every random draw: restoring the generators' states
is part of what is checked (a control run that skips it ends elsewhere).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from bertforge.cli import main as cli_main
from bertforge.train import checkpoints
from conftest import shared
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
