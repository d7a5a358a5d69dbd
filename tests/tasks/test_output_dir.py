"""The output directory never costs a user the run in it: every input is read before the
directory is touched, --overwrite_output_dir keeps the earlier run until the new one has made
something (and puts it back when it fails before), a refused run leaves nothing behind, and the
lock goes with the run. Whole runs of a tiny model on the CPU."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from runs import copy_run, snapshot, squad_argv

from bertforge.cli import main
from bertforge.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny, vocab_file, squad_dev_file) -> Path:
    """A finished 4-step run with checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("runs") / "finished"
    assert main(squad_argv(out, tiny, vocab_file, squad_dev_file, "--save_every", "2")) == 0
    return out


@pytest.fixture
def earlier(finished, tmp_path) -> Path:
    """A copy of the finished run, to be replaced."""
    return copy_run(finished, tmp_path / "run")


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if ": error:" in line]


@pytest.mark.parametrize("case", ["mistyped", "truncated"])
def test_overwrite_with_a_bad_train_file_keeps_the_earlier_run(earlier, tiny, vocab_file, squad_dev_file,
                                                               tmp_path, capsys, case):
    before = snapshot(earlier)
    train = tmp_path / ("dev-v1.1.jsn" if case == "mistyped" else "truncated.json")
    if case == "truncated":
        data = Path(squad_dev_file).read_bytes()
        train.write_bytes(data[:len(data) // 2])
    assert main(squad_argv(earlier, tiny, vocab_file, train, "--overwrite_output_dir")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(error_lines(err)) == 1 and str(train) in err
    assert ("not found" if case == "mistyped" else "not valid JSON (line") in err
    assert snapshot(earlier) == before
    assert not list(earlier.glob(".replaced-*"))


@pytest.mark.parametrize("flag", ["--vocab_file", "--bert_config_file", "--train_file"])
def test_overwrite_refuses_to_delete_an_input_of_the_run(earlier, tiny, vocab_file, squad_dev_file, capsys, flag):
    inside = {"--vocab_file": earlier / "vocab.txt", "--bert_config_file": earlier / "config.json",
              "--train_file": earlier / "train.json"}[flag]
    if flag == "--train_file":
        inside.write_bytes(Path(squad_dev_file).read_bytes())
    before = snapshot(earlier)
    argv = squad_argv(earlier, tiny, vocab_file, squad_dev_file, "--overwrite_output_dir")
    given = {"--vocab_file": "--vocab_file", "--bert_config_file": "--bert_model", "--train_file": "--train_file"}
    argv[argv.index(given[flag]) + 1] = str(inside)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"would delete {inside.resolve()}, an input of this run" in err
    assert snapshot(earlier) == before


def test_a_replacing_run_that_fails_before_its_first_checkpoint_puts_the_earlier_run_back(
        earlier, tiny, vocab_file, squad_dev_file, capsys):
    before = snapshot(earlier)
    # a learning rate that makes the loss inf/NaN within the first steps; no --save_every
    assert main(squad_argv(earlier, tiny, vocab_file, squad_dev_file, "--overwrite_output_dir",
                           "--learning_rate", "1e6", "--max_steps", "6")) == 2
    assert "inf/NaN" in capsys.readouterr().err
    assert snapshot(earlier) == before
    assert not list(earlier.glob(".replaced-*"))


def test_the_replaced_run_goes_once_the_new_one_has_a_checkpoint(earlier, tiny, vocab_file, squad_dev_file,
                                                                  monkeypatch):
    from bertforge.train import loop

    old_model = (earlier / "model.safetensors").read_bytes()
    seen = []
    original = loop.Trainer.trigger

    def trigger(self, event):
        original(self, event)
        if event == "on_step_end":
            seen.append((self.step, bool(list(earlier.glob(".replaced-*")))))

    monkeypatch.setattr(loop.Trainer, "trigger", trigger)
    assert main(squad_argv(earlier, tiny, vocab_file, squad_dev_file, "--overwrite_output_dir",
                           "--save_every", "2", "--seed", "7")) == 0
    # step 2's checkpoint is written after step 2's callbacks: from step 3 on the old run is gone
    assert seen == [(1, True), (2, True), (3, False), (4, False)]
    assert (earlier / "model.safetensors").read_bytes() != old_model


def test_a_refused_run_leaves_nothing_and_does_not_block_its_rerun(tmp_path, tiny, vocab_file, squad_dev_file,
                                                                   capsys, monkeypatch):
    from bertforge.tasks import runner

    out = tmp_path / "run"
    argv = squad_argv(out, tiny, vocab_file, squad_dev_file)
    no_casing = argv[:argv.index("--do_lower_case")] + argv[argv.index("--do_lower_case") + 2:]
    assert main(no_casing) == 2
    assert "cased or uncased" in capsys.readouterr().err
    assert not out.exists()  # refused before anything was written

    def refuse(*args, **kwargs):
        raise ConfigError("refused while loading the model")

    with monkeypatch.context() as m:  # refused after the directory was claimed
        m.setattr(runner, "load_model", refuse)
        assert main(argv) == 2
    assert not out.exists()
    # what an earlier version left after a refusal: a run_config.json (and the lock file)
    out.mkdir()
    (out / "run_config.json").write_text(json.dumps({"output_dir": str(out)}))
    (out / ".bertforge.lock").write_text("4242\n")
    assert main(argv) == 0
    assert (out / "model.safetensors").is_file()


def test_lock_removed_resume_logged_plainly_and_data_read_before_the_model(
        finished, tmp_path, tiny, vocab_file, squad_dev_file, caplog, capsys, monkeypatch):
    from bertforge.checkpoint import load_checkpoint
    from bertforge.checkpoint.native import write_native
    from bertforge.tasks import runner

    caplog.set_level(logging.INFO)
    assert not (finished / ".bertforge.lock").exists()
    encoder = tmp_path / "encoder"  # a pretrained encoder without a QA head
    ckpt = load_checkpoint(finished)
    write_native(encoder, {k: v for k, v in ckpt.state.items() if k.startswith("bert.")}, ckpt.config,
                 head="base", vocab_file=vocab_file, do_lower_case=True)
    out = tmp_path / "run"
    argv = squad_argv(out, tiny, vocab_file, squad_dev_file, "--save_every", "2", "--max_steps", "2")
    argv[argv.index("--bert_model"):argv.index("--bert_model") + 2] = ["--init_checkpoint", str(encoder)]
    assert main(argv) == 0
    caplog.clear()
    assert main(argv + ["--resume", "--max_steps", "4"]) == 0
    changed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resuming with changed")]
    assert changed == ["resuming with changed settings: train.max_steps"]
    assert "initialised fresh" not in caplog.text  # the QA head comes from the checkpoint resumed
    assert "come from the checkpoint the run resumes from" in caplog.text

    def load_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the data was read")

    monkeypatch.setattr(runner, "load_model", load_model)
    capsys.readouterr()
    assert main(["predict", "squad", "--init_checkpoint", str(finished), "--predict_file",
                 str(tmp_path / "missing.json"), "--max_seq_length", "64", "--doc_stride", "32",
                 "--max_query_length", "16", "--device", "cpu", "--output_dir", str(tmp_path / "p")]) == 2
    assert f"SQuAD file not found: {tmp_path / 'missing.json'}" in capsys.readouterr().err


def test_a_run_recorded_before_a_setting_existed_resumes_with_its_default(earlier, tiny, vocab_file,
                                                                          squad_dev_file, capsys):
    """run_config.json of an older bertforge lacks newer fields (train.adam_bias_correction): the
    run trained as their defaults do, so resuming it with the defaults continues it, and with
    another value is refused as a changed setting."""
    stored = earlier / "run_config.json"
    config = json.loads(stored.read_text())
    del config["train"]["adam_bias_correction"]
    stored.write_text(json.dumps(config))
    argv = squad_argv(earlier, tiny, vocab_file, squad_dev_file, "--resume", "--max_steps", "6")
    assert main(argv + ["--adam_bias_correction", "false"]) == 2
    assert "train.adam_bias_correction: None -> False" in capsys.readouterr().err
    assert main(argv) == 0
