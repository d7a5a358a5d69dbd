"""Hostile and careless use of whole runs, replayed on a tiny model on the CPU: each case asserts
the clear error, the exit code, and that nothing a user made before was lost or replaced.

Cases that belong to one module are tested beside it: tampered or truncated weight files and
shard paths (tests/checkpoint), bad configs (tests/test_config.py), vocab files that are not
text (tests/tokenization), GLUE files with CR line ends (tests/data/test_glue.py), text without
sentence punctuation (tests/data/pretraining).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bertforge.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def squad_argv(out: Path, tiny: Path, vocab_file: Path, squad_dev_file: Path, *extra: str) -> list[str]:
    return ["finetune", "squad", "--do_train", "--train_file", str(squad_dev_file), "--train_articles", "0:1",
            "--max_seq_length", "64", "--doc_stride", "32", "--max_query_length", "16",
            "--bert_model", str(tiny), "--vocab_file", str(vocab_file), "--do_lower_case", "true",
            "--max_steps", "4", "--train_batch_size", "8", "--learning_rate", "1e-3", "--log_every", "1",
            "--device", "cpu", "--output_dir", str(out), *extra]


def metrics(out: Path) -> list[dict]:
    # json.loads rejects nothing non-standard by default; parse_constant makes NaN/Infinity fail.
    def reject(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return [json.loads(line, parse_constant=reject) for line in (out / "metrics.jsonl").read_text().splitlines()]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != ".bertforge.lock"}


# ---- the checkpoint resume reads runs no code ----------------------------------------------------


class _Marker:
    """Unpickling this creates a file: proof that a pickle ran code."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("victim", ["trainer.pt", "rng_rank0.pt"])
def test_resume_never_runs_code_from_a_checkpoint(tmp_path, tiny, vocab_file, squad_dev_file, caplog, victim):
    out = tmp_path / "run"
    assert main(squad_argv(out, tiny, vocab_file, squad_dev_file, "--save_every", "2", "--max_steps", "2")) == 0
    ckpt = out / "checkpoints" / "step_00000002"
    marker = tmp_path / "pwned"
    with open(ckpt / victim, "wb") as f:
        pickle.dump({"state": _Marker(str(marker))}, f)
    # A run stopped after that checkpoint: no finished model that starting over would replace
    # (tests/test_nothing_lost.py: with one, --resume is refused).
    (out / "model.safetensors").unlink()
    code = main(squad_argv(out, tiny, vocab_file, squad_dev_file, "--save_every", "2", "--max_steps", "4",
                           "--resume"))
    assert not marker.exists(), "a pickle in the checkpoint ran code"
    assert "skipping a damaged checkpoint" in caplog.text and victim in caplog.text
    assert "could run code" in caplog.text
    assert code == 0  # no intact checkpoint left: the run started over, and said so
    assert "no intact checkpoint" in caplog.text


# ---- a non-finite loss stops the run ------------------------------------------------------------


def test_nan_loss_stops_fp32_training_and_writes_no_model(tmp_path, tiny, vocab_file, squad_dev_file, capsys):
    out = tmp_path / "run"
    code = main(squad_argv(out, tiny, vocab_file, squad_dev_file, "--learning_rate", "1e6", "--max_steps", "6",
                           "--save_every", "1", "--keep_checkpoints", "10"))
    err = capsys.readouterr().err
    assert code != 0
    assert "became inf/NaN" in err and "Traceback" not in err
    assert not (out / "model.safetensors").exists()
    records = metrics(out)  # strict JSON: NaN written as null
    bad = [r for r in records if r.get("loss") is None and "step" in r]
    assert bad, records
    first_bad = bad[0]["step"]
    assert f"step {first_bad}:" in err
    kept = sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step_"))
    for name in kept:  # every checkpoint written is finite, and none from the bad step on
        assert int(name.split("_")[1]) < first_bad
        weights = load_file(str(out / "checkpoints" / name / "model.safetensors"))
        assert all(torch.isfinite(t).all() for t in weights.values()), name


# ---- runs never mix in one output directory ----------------------------------------------------


def test_second_run_into_a_used_output_dir_is_refused(tmp_path, tiny, vocab_file, squad_dev_file, capsys):
    out = tmp_path / "run"
    assert main(squad_argv(out, tiny, vocab_file, squad_dev_file)) == 0
    before = snapshot(out)
    capsys.readouterr()
    assert main(squad_argv(out, tiny, vocab_file, squad_dev_file, "--learning_rate", "5e-4")) == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and "--resume" in err and "--overwrite_output_dir" in err
    assert snapshot(out) == before  # nothing replaced, nothing appended


def test_overwrite_output_dir_replaces_only_bertforge_files(tmp_path, tiny, vocab_file, squad_dev_file, capsys):
    out = tmp_path / "run"
    assert main(squad_argv(out, tiny, vocab_file, squad_dev_file)) == 0
    (out / "my_notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(squad_argv(out, tiny, vocab_file, squad_dev_file, "--overwrite_output_dir")) == 2
    assert "my_notes.txt" in capsys.readouterr().err
    assert (out / "my_notes.txt").read_text() == "mine"
    (out / "my_notes.txt").unlink()
    first_metrics = metrics(out)
    assert main(squad_argv(out, tiny, vocab_file, squad_dev_file, "--overwrite_output_dir",
                           "--max_steps", "2")) == 0
    records = [r for r in metrics(out) if "loss" in r]
    assert [r["step"] for r in records] == [1, 2]  # the old run's lines are gone, not appended to
    assert len(first_metrics) > len(records)


def test_a_directory_in_use_names_the_holder(tmp_path, tiny, vocab_file, squad_dev_file, capsys):
    fcntl = pytest.importorskip("fcntl")
    out = tmp_path / "run"
    out.mkdir()
    fd = os.open(out / ".bertforge.lock", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"4242\n")
    # flock locks belong to the open file description: a separate open() in the run conflicts
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert main(squad_argv(out, tiny, vocab_file, squad_dev_file)) == 2
        assert "in use by another bertforge run (PID 4242)" in capsys.readouterr().err
    finally:
        os.close(fd)


def test_resume_refuses_another_seed_and_rederives_the_schedule_for_more_steps(
        tmp_path, tiny, vocab_file, squad_dev_file, capsys):
    out = tmp_path / "run"
    base = squad_argv(out, tiny, vocab_file, squad_dev_file, "--save_every", "2", "--max_steps", "2",
                      "--warmup_proportion", "0")
    assert main(base) == 0
    capsys.readouterr()
    assert main(base + ["--resume", "--seed", "7"]) == 2
    assert "cannot resume" in capsys.readouterr().err
    # max_steps 2 -> 3: step 3 trains at the rate a 3-step linear schedule gives it, not at 0.0
    assert main(base + ["--resume", "--max_steps", "3"]) == 0
    lr3 = [r["lr"] for r in metrics(out) if r.get("step") == 3 and "loss" in r]
    assert lr3 == [pytest.approx(1e-3 * (3 - 2) / 3)]
    resumed = [r for r in metrics(out) if r.get("event") == "resume"]
    assert resumed[-1]["previous_total_steps"] == 2 and resumed[-1]["total_steps"] == 3


def test_corrupt_latest_checkpoint_falls_back_to_the_newest_intact_one(
        tmp_path, tiny, vocab_file, squad_dev_file, caplog):
    out = tmp_path / "run"
    argv = squad_argv(out, tiny, vocab_file, squad_dev_file, "--save_every", "1", "--keep_checkpoints", "5",
                      "--max_steps", "3")
    assert main(argv) == 0
    ckpts = out / "checkpoints"
    # step 3 is the final one; damage 3 and 2 in two ways, keep 1 intact
    (ckpts / "step_00000003" / "model.safetensors").write_bytes(b"")
    (ckpts / "step_00000002" / "trainer.pt").write_bytes(os.urandom(256))
    caplog.clear()
    assert main(argv + ["--resume", "--max_steps", "4"]) == 0
    assert caplog.text.count("skipping a damaged checkpoint") == 2
    assert [r["step"] for r in metrics(out) if r.get("event") == "resume"] == [1]
    # --resume PATH picks one by hand
    pick = ckpts / "step_00000001"
    assert main(argv + ["--resume", str(pick), "--max_steps", "4"]) == 0
    assert [r["checkpoint"] for r in metrics(out) if r.get("event") == "resume"][-1] == str(pick)


# ---- limits and paths are checked before any work ----------------------------------------------


def test_squad_and_glue_check_max_seq_length_against_the_model(tmp_path, tiny, vocab_file, squad_dev_file, capsys):
    argv = squad_argv(tmp_path / "a", tiny, vocab_file, squad_dev_file)
    argv[argv.index("--max_seq_length") + 1] = "256"  # tiny has 128 positions
    assert main(argv) == 2
    assert "exceeds the model's max_position_embeddings (128)" in capsys.readouterr().err
    mrpc = Path(squad_dev_file).parents[2] / "glue" / "MRPC"
    assert main(["finetune", "glue", "--task", "mrpc", "--data_dir", str(mrpc), "--do_train",
                 "--bert_model", str(tiny), "--vocab_file", str(vocab_file), "--do_lower_case", "true",
                 "--max_seq_length", "512", "--device", "cpu", "--output_dir", str(tmp_path / "b")]) == 2
    assert "exceeds the model's max_position_embeddings" in capsys.readouterr().err
    assert not (tmp_path / "b" / "metrics.jsonl").exists()


def test_output_dir_that_is_a_file_fails_before_training(tmp_path, tiny, vocab_file, squad_dev_file, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("a file")
    assert main(squad_argv(blocker / "run", tiny, vocab_file, squad_dev_file)) == 2
    err = capsys.readouterr().err
    assert "is a file, not a directory" in err and "Traceback" not in err
    assert blocker.read_text() == "a file"


def test_empty_init_checkpoint_is_refused(tmp_path, tiny, vocab_file, squad_dev_file, capsys):
    assert main(squad_argv(tmp_path / "run", tiny, vocab_file, squad_dev_file, "--init_checkpoint", "")) == 2
    assert "--init_checkpoint is empty" in capsys.readouterr().err


def test_conflicting_precision_switches_are_refused(tmp_path, tiny, vocab_file, squad_dev_file, capsys):
    assert main(squad_argv(tmp_path / "run", tiny, vocab_file, squad_dev_file, "--fp16", "--bf16")) == 2
    assert "ask for different precisions" in capsys.readouterr().err


def test_results_get_the_umask_mode_not_0600(tmp_path, tiny, vocab_file, squad_dev_file):
    old = os.umask(0o022)
    try:
        out = tmp_path / "run"
        assert main(squad_argv(out, tiny, vocab_file, squad_dev_file)) == 0
    finally:
        os.umask(old)
    for name in ("model.safetensors", "run_config.json", "config.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name


def test_disk_full_while_writing_a_checkpoint_is_one_line(tmp_path, tiny, vocab_file, squad_dev_file, capsys,
                                                           monkeypatch):
    from bertforge.train import checkpoints

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 32")

    monkeypatch.setattr(checkpoints.torch, "save", full)
    code = main(squad_argv(tmp_path / "run", tiny, vocab_file, squad_dev_file, "--save_every", "2"))
    err = capsys.readouterr().err
    assert code == 2 and "disk full" in err and "Traceback" not in err


# ---- preemption ---------------------------------------------------------------------------------


def test_sigterm_writes_a_checkpoint_and_resume_continues_exactly(tmp_path, tiny, vocab_file, squad_dev_file,
                                                                   capsys, monkeypatch):
    from bertforge.train import loop

    straight = tmp_path / "straight"
    assert main(squad_argv(straight, tiny, vocab_file, squad_dev_file, "--save_every", "3")) == 0
    preempted = tmp_path / "preempted"
    original = loop.Trainer.trigger
    handler_before = signal.getsignal(signal.SIGTERM)

    def trigger(self, event):  # SIGTERM arrives during step 2, as Slurm sends it
        original(self, event)
        if event == "on_step_end" and self.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(loop.Trainer, "trigger", trigger)
    code = main(squad_argv(preempted, tiny, vocab_file, squad_dev_file, "--save_every", "3"))
    monkeypatch.setattr(loop.Trainer, "trigger", original)
    err = capsys.readouterr().err
    assert code == 2 and "termination signal after step 2" in err
    assert (preempted / "checkpoints" / "step_00000002").is_dir()
    assert signal.getsignal(signal.SIGTERM) == handler_before  # the run put the old handler back
    assert main(squad_argv(preempted, tiny, vocab_file, squad_dev_file, "--save_every", "3", "--resume")) == 0
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(preempted / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_json_results_are_strict(tmp_path):
    from bertforge.fileio import atomic_write_json

    path = atomic_write_json(tmp_path / "x.json", {"pearson": math.nan, "ok": 1.5, "inf": [math.inf]})
    assert json.loads(path.read_text()) == {"pearson": None, "ok": 1.5, "inf": [None]}
