"""`bertforge ... --help`: short, grouped, with defaults, the reference names behind
--help-compat, command groups listing their tasks, no torch import to print any of it, and no
traceback when the reader of the help goes away."""

from __future__ import annotations

import os
import subprocess
import sys
import typing
from dataclasses import fields, is_dataclass

import pytest

from bertforge.cli import COMMANDS, main
from bertforge.tasks.config import SquadRun


@pytest.fixture(autouse=True)
def narrow_terminal(monkeypatch):
    """80 columns, as a pipe or an unknown terminal gets."""
    monkeypatch.setenv("COLUMNS", "80")


def help_of(capsys, *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def leaf_names(cls: type) -> list[str]:
    names = []
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        tp = typing.get_args(hints[f.name]) or (hints[f.name],)
        nested = [t for t in tp if is_dataclass(t)]
        names += leaf_names(nested[0]) if nested else [f.name]
    return names


def test_squad_help_is_short_and_lists_every_flag(capsys):
    out = help_of(capsys, "finetune", "squad", "--help")
    assert len(out.splitlines()) < 120  # 328 lines before
    flags = {line.split()[0] for line in out.splitlines() if line.startswith("  --")}
    for name in leaf_names(SquadRun):  # all unique in SquadRun, so by their flat names
        assert f"--{name}" in flags, name
    assert "Path to a configuration file" not in out and "CONFIG" not in out.replace("RECIPE", "")


def test_squad_help_groups_with_defaults(capsys):
    lines = help_of(capsys, "finetune", "squad", "--help").splitlines()
    for title in ("data: SQuAD files and Google's run_squad.py windowing and decoding settings.",
                  "model: Which BERT: an architecture and/or weights, and its vocabulary.",
                  "runtime: Where and how the model runs."):
        assert title in lines
    row = {line.split()[0]: line.split(maxsplit=2)[1:] for line in lines if line.startswith("  --")}
    assert row["--learning_rate"][0] == "3e-05"  # SQuAD fine-tuning's rate, not TrainArgs' own default
    assert row["--max_seq_length"][0] == "384" and row["--doc_stride"][0] == "128"
    assert row["--train_file"][0] == "STR"  # no default: its type
    assert any(line.startswith("  --optimizer {adamw,lamb}") and "(default: adamw)" in line for line in lines)


def test_reference_names_are_behind_help_compat(capsys):
    assert "--bert_config_file" not in help_of(capsys, "finetune", "squad", "--help")
    compat = help_of(capsys, "finetune", "squad", "--help-compat")
    for alias, meaning in (("--bert_config_file", "= --bert_model"), ("--num_train_steps", "= --max_steps"),
                           ("--fp16", "= --precision fp16"), ("--use_habana", "= --device hpu")):
        assert any(line.split() == [alias, *meaning.split()] for line in compat.splitlines()), alias
    assert "--use_tpu" in compat and "--int8 (inference only)" in " ".join(compat.split())


def test_help_full_has_whole_descriptions(capsys):
    short = help_of(capsys, "finetune", "squad", "--help")
    full = " ".join(help_of(capsys, "finetune", "squad", "--help-full").split())
    sentence = "Optional when init_checkpoint has one."  # the second sentence of ModelArgs.bert_model's
    assert sentence in full and sentence not in " ".join(short.split())


def test_evaluate_squad_title_is_a_whole_sentence(capsys):
    out = " ".join(help_of(capsys, "evaluate", "squad", "--help").split())
    assert ("Official SQuAD v1.1 or v2.0 evaluation of a predictions file (v2.0 when the data file's "
            "questions carry is_impossible).") in out
    assert ("usage: bertforge evaluate squad [--config RECIPE.yaml] [--FLAG VALUE ...] data_file "
            "predictions_file") in out


def test_help_anywhere_on_the_command_line(capsys):
    assert "usage: bertforge finetune glue" in help_of(capsys, "finetune", "glue", "--task_name", "mrpc", "-h")


@pytest.mark.parametrize("command", [" ".join(c.path) for c in COMMANDS])
def test_every_command_has_help(command, capsys):
    out = help_of(capsys, *command.split(), "--help")
    assert out.startswith(f"usage: bertforge {command} ")
    assert help_of(capsys, *command.split(), "--help-compat").startswith(f"bertforge {command} also takes")


@pytest.mark.parametrize("group,tasks", [("finetune", ("squad", "glue")), ("predict", ("squad", "glue")),
                                         ("evaluate", ("squad", "glue")), ("download", ("squad", "glue"))])
def test_a_command_group_lists_its_tasks(group, tasks, capsys):
    for argv in ([group], [group, "--help"], [group, "-h"]):
        lines = help_of(capsys, *argv).splitlines()
        listed = [line.split()[0] for line in lines[lines.index("tasks:") + 1:]]
        assert listed == list(tasks)


def test_a_command_group_with_flags_but_no_task(capsys):
    assert main(["finetune", "--do_train"]) == 2
    assert capsys.readouterr().err.strip() == ("bertforge finetune: give a task first "
                                               "(bertforge finetune <task> [flags]); tasks: squad, glue")


def test_help_imports_no_torch():
    """No command's help imports torch: every run config lives in a module that does not. In a
    fresh interpreter, as `bertforge ... --help` runs."""
    commands = [" ".join(c.path) for c in COMMANDS]
    assert {"convert", "info", "export", "benchmark", "serve", "finetune squad"} <= set(commands)
    script = ("import contextlib, io, sys\n"
              "from bertforge.cli import main\n"
              f"for command in {commands!r}:\n"
              "    with contextlib.redirect_stdout(io.StringIO()):\n"
              "        for flag in ('--help', '--help-compat', '--help-full'):\n"
              "            assert main(command.split() + [flag]) == 0\n"
              "    assert 'torch' not in sys.modules, command\n"
              "with contextlib.redirect_stdout(io.StringIO()):\n"
              "    assert main(['finetune', '--help']) == 0 and main(['--help']) == 0\n"
              "print('torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize("argv", [["--help"], ["finetune", "squad", "--help"]])
def test_help_into_a_closed_pipe_stops_quietly(argv):
    """`bertforge ... --help | head`: the reader is gone before the help is written (its end of
    the pipe is closed before the command starts). No traceback; SIGPIPE's exit status."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "bertforge.cli", *argv], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")
