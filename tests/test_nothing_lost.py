"""A trained model is never lost to a full disk, and --resume never replaces or mixes runs.

Disk full is replayed two ways: on a small tmpfs that really fills up (where the tests may
mount one), and by injecting the error the writers raise (always). Each case asserts the one
line the command prints (exit status 2, no traceback) and what is left on disk."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from pretraining_writers import synthetic_samples, write_nvidia_hdf5
from runs import copy_run, fill, metrics, small_filesystem, snapshot, squad_argv
from safetensors import SafetensorError

from bertforge.checkpoint import load_checkpoint
from bertforge.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

STORAGE_FULL = ('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                '"No space left on device" })')  # what safetensors raises on a full disk


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny, vocab_file, squad_dev_file) -> Path:
    """A finished 4-step run with checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("runs") / "finished"
    assert main(squad_argv(out, tiny, vocab_file, squad_dev_file, "--save_every", "2")) == 0
    return out


def one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if ": error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def no_hidden_leftovers(directory: Path) -> bool:
    return not [p for p in directory.rglob(".tmp-*")]


# ---- the final model ------------------------------------------------------------------------


@pytest.mark.parametrize("save_every", [None, "2"])
def test_a_failed_final_write_says_where_the_trained_weights_are(tmp_path, tiny, vocab_file, squad_dev_file,
                                                                 capsys, monkeypatch, save_every):
    from bertforge.checkpoint import native

    out = tmp_path / "run"
    real_save = native.save_file

    def save_file(state, path, metadata=None):
        if Path(path).is_relative_to(out):
            raise SafetensorError(STORAGE_FULL)
        real_save(state, path, metadata=metadata)

    monkeypatch.setattr(native, "save_file", save_file)
    extra = ("--save_every", save_every) if save_every else ()
    assert main(squad_argv(out, tiny, vocab_file, squad_dev_file, *extra)) == 2
    line = one_error(capsys.readouterr().err)
    assert f"cannot write {out}: no space left on the device (" in line and "needed" in line
    assert not (out / "model.safetensors").exists() and no_hidden_leftovers(out)
    if save_every:
        ckpt = out / "checkpoints" / "step_00000004"
        assert f"The trained model is in the checkpoint {ckpt}" in line
        kept = load_checkpoint(ckpt)
    else:
        rescued = Path(line.split("The trained model was written to ")[1].split(" instead")[0])
        kept = load_checkpoint(rescued)
        shutil.rmtree(rescued)
    assert kept.head == "qa" and kept.meta["task"] == "squad"


def test_a_disk_that_fills_up_during_training(tmp_path, tiny, vocab_file, squad_dev_file, finished, capsys,
                                              monkeypatch):
    """On a real file system: something else fills the disk while the run trains; the final
    write (weights fit, vocab.txt does not) fails in one line and leaves no partial model."""
    from bertforge.train import loop

    weights = (finished / "model.safetensors").stat().st_size
    with small_filesystem(tmp_path / "disk", "16m") as disk:
        out = disk / "run"
        original = loop.Trainer.trigger

        def trigger(self, event):
            original(self, event)
            if event == "on_train_end":
                fill(disk, leave=weights + 64 * 1024)

        monkeypatch.setattr(loop.Trainer, "trigger", trigger)
        assert main(squad_argv(out, tiny, vocab_file, squad_dev_file)) == 2
        line = one_error(capsys.readouterr().err)
        assert f"cannot write {out}: no space left on the device" in line
        assert not (out / "model.safetensors").exists() and no_hidden_leftovers(out)
        rescued = Path(line.split("The trained model was written to ")[1].split(" instead")[0])
        assert load_checkpoint(rescued).head == "qa"
        shutil.rmtree(rescued)


def test_training_that_cannot_fit_its_model_is_refused_before_the_first_step(tmp_path, tiny, vocab_file,
                                                                             squad_dev_file, finished, capsys,
                                                                             monkeypatch):
    from bertforge import fileio

    out = tmp_path / "run"
    monkeypatch.setattr(fileio, "free_space", lambda path: 1 << 20)  # 1 MiB left
    assert main(squad_argv(out, tiny, vocab_file, squad_dev_file, "--save_every", "2")) == 2
    line = one_error(capsys.readouterr().err)
    assert f"cannot write the trained model and a checkpoint to {out}:" in line and "1.0 MiB free" in line
    # the model once, and a checkpoint of about three models (weights and two optimizer moments)
    needed = float(re.search(r"([0-9.]+) MiB needed", line).group(1))
    assert needed == pytest.approx(4 * (finished / "model.safetensors").stat().st_size / 2**20, abs=0.1)
    assert not out.exists()  # refused before anything was kept


# ---- checkpoints ----------------------------------------------------------------------------


def test_a_failed_checkpoint_write_leaves_no_hidden_directory(tmp_path, tiny, vocab_file, squad_dev_file,
                                                              capsys, monkeypatch):
    from bertforge.train import checkpoints

    real_save = checkpoints.torch.save

    def save(obj, path, *args, **kwargs):
        if Path(path).name == checkpoints.STATE_FILE and "00000004" in str(path):
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 32")
        real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoints.torch, "save", save)
    out = tmp_path / "run"
    assert main(squad_argv(out, tiny, vocab_file, squad_dev_file, "--save_every", "2")) == 2
    line = one_error(capsys.readouterr().err)
    assert "cannot write" in line and "step_00000004" in line and "earlier ones are kept" in line
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002"]


# ---- convert --------------------------------------------------------------------------------


def test_convert_force_that_fails_keeps_the_earlier_conversion(tmp_path, finished, capsys, monkeypatch):
    from bertforge.checkpoint import hf

    dst = tmp_path / "hf"
    assert main(["convert", str(finished), str(dst), "--to", "hf"]) == 0
    before = snapshot(dst)
    monkeypatch.setattr(hf, "save_file", lambda *a, **k: (_ for _ in ()).throw(SafetensorError(STORAGE_FULL)))
    assert main(["convert", str(finished), str(dst), "--to", "hf", "--force"]) == 2
    line = one_error(capsys.readouterr().err)
    assert "no space left on the device" in line and str(dst) in line
    assert snapshot(dst) == before and no_hidden_leftovers(dst)
    fresh = tmp_path / "fresh"
    assert main(["convert", str(finished), str(fresh), "--to", "hf"]) == 2
    assert not fresh.exists()  # no empty or partial destination


def test_convert_onto_a_full_disk(tmp_path, finished, capsys):
    with small_filesystem(tmp_path / "disk", "8m") as disk:
        dst = disk / "hf"
        assert main(["convert", str(finished), str(dst), "--to", "hf"]) == 0
        before = snapshot(dst)
        fill(disk, leave=64 * 1024)
        assert main(["convert", str(finished), str(dst), "--to", "hf", "--force"]) == 2
        line = one_error(capsys.readouterr().err)
        assert str(dst) in line and "free" in line
        assert snapshot(dst) == before and no_hidden_leftovers(dst)


# ---- resume ---------------------------------------------------------------------------------


def test_resume_refuses_to_retrain_over_a_finished_model(finished, tmp_path, tiny, vocab_file, squad_dev_file,
                                                         capsys):
    out = copy_run(finished, tmp_path / "run")
    for ckpt in (out / "checkpoints").iterdir():
        torch.save({}, ckpt / "trainer.pt")  # parses, holds nothing a resume needs
    before = snapshot(out)
    assert main(squad_argv(out, tiny, vocab_file, squad_dev_file, "--save_every", "2", "--max_steps", "6",
                           "--resume")) == 2
    line = one_error(capsys.readouterr().err)
    assert "holds a finished model" in line and "none of its 2 checkpoint(s) can be read back" in line
    assert snapshot(out) == before  # the model, its checkpoints and its run_config.json as they were


def test_resume_from_another_runs_checkpoint_needs_that_runs_settings(finished, tmp_path, tiny, vocab_file,
                                                                      squad_dev_file, capsys):
    pick = finished / "checkpoints" / "step_00000002"
    out = tmp_path / "run"
    argv = squad_argv(out, tiny, vocab_file, squad_dev_file, "--save_every", "2", "--resume", str(pick))
    assert main(argv + ["--learning_rate", "5e-4"]) == 2
    line = one_error(capsys.readouterr().err)
    assert f"differs from the run in {finished}" in line and "train.learning_rate: 0.001 -> 0.0005" in line
    assert not out.exists()
    assert main(argv) == 0  # the same settings: the run continues in its new directory
    assert [r["step"] for r in metrics(out) if r.get("event") == "resume"] == [2]


@pytest.mark.parametrize("damage", ["loader is a number", "trainer.pt is empty"])
def test_a_checkpoint_that_parses_but_holds_the_wrong_contents_is_passed_over(finished, tmp_path, tiny,
                                                                              vocab_file, squad_dev_file,
                                                                              caplog, damage):
    out = copy_run(finished, tmp_path / "run")
    latest = out / "checkpoints" / "step_00000004"
    if damage == "loader is a number":
        meta = json.loads((latest / "trainer.json").read_text())
        (latest / "trainer.json").write_text(json.dumps({**meta, "loader": 5}))
    else:
        torch.save({}, latest / "trainer.pt")
    assert main(squad_argv(out, tiny, vocab_file, squad_dev_file, "--save_every", "2", "--max_steps", "6",
                           "--resume")) == 0
    assert "skipping a damaged checkpoint" in caplog.text
    assert [r["step"] for r in metrics(out) if r.get("event") == "resume"] == [2]


def test_a_pretraining_checkpoint_does_not_resume_a_squad_run(tmp_path, tiny, vocab_file, squad_dev_file, capsys):
    data = write_nvidia_hdf5(tmp_path / "part_0.hdf5", synthetic_samples(32, 32, 5, seed=0))
    pretrained = tmp_path / "pretrain"
    assert main(["pretrain", "--input_dir", str(data), "--bert_model", str(tiny), "--vocab_file", str(vocab_file),
                 "--do_lower_case", "true", "--max_steps", "2", "--save_every", "2", "--train_batch_size", "8",
                 "--do_eval", "false", "--device", "cpu", "--output_dir", str(pretrained)]) == 0
    alone = shutil.copytree(pretrained / "checkpoints" / "step_00000002", tmp_path / "copied")  # no run_config.json
    out = tmp_path / "run"
    argv = squad_argv(out, tiny, vocab_file, squad_dev_file, "--resume", str(alone))
    capsys.readouterr()
    assert main(argv) == 2
    assert "it is a checkpoint of a pretraining model; this run trains a qa model" in \
        one_error(capsys.readouterr().err)
    (alone / "bertforge.json").unlink()  # nothing says what it is: its data position does
    assert main(argv) == 2
    line = one_error(capsys.readouterr().err)
    assert "is not one of this run's data" in line and "global_batch" in line
