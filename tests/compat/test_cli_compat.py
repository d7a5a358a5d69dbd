"""How the CLI meets reference command lines as a whole: launchers' flags anywhere, no prefix
matching, every bad flag in one line with a suggestion, vendor knobs accepted with a note."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from compat_helpers import parse

from bertforge import cli
from bertforge.cli import main, take_launcher_flags
from bertforge.compat import flags as reference_flags


@pytest.mark.parametrize("argv", [
    ["--local_rank=3", "finetune", "glue", "--task_name", "mrpc"],
    ["--local-rank", "3", "finetune", "glue", "--task_name", "mrpc"],
    ["finetune", "glue", "--local_rank", "3", "--task_name", "mrpc"],
])
def test_torch_distributed_launch_local_rank_anywhere(argv, monkeypatch):
    """python -m torch.distributed.launch puts --local_rank (--local-rank on torch >= 2) before
    the program's own arguments, so before the subcommand."""
    rest, local_rank, _ = take_launcher_flags(argv)
    assert local_rank == 3 and rest == ["finetune", "glue", "--task_name", "mrpc"]
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(cli, "_ARGV_LOCAL_RANK", [local_rank])
    assert cli._dist_info().local_rank == 3
    assert parse(argv).data.task_name == "mrpc"


def test_launcher_local_rank_through_the_entry_point(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bertforge", "--local_rank=0", "finetune", "glue",
                             "--task_name", "mrpc", "--print_config"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "task_name: mrpc" in result.stdout


def test_no_prefix_matching(capsys):
    """--mode is not taken for --model (argparse's abbreviations are off)."""
    assert main(["finetune", "squad", "--do_predict", "--predict_file", "x.json", "--mod", "1"]) == 2
    err = capsys.readouterr().err
    assert "unknown flag: --mod" in err and "ambiguous" not in err


def test_every_bad_flag_in_one_line_with_suggestions(capsys):
    assert main(["finetune", "squad", "--learning_rat", "1e-5", "--trian_file", "t.json", "--zzz"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "usage" not in err
    assert "--learning_rat (did you mean --learning_rate?)" in err
    assert "--trian_file (did you mean --train_file?)" in err and "--zzz" in err


def test_vendor_knobs_are_noted_once(caplog):
    caplog.set_level(logging.WARNING)
    cfg = parse(["finetune", "squad", "--use_fused_lamb", "--use_lazy_mode=True", "--hmp", "--cnmix",
                 "--opt_level", "O1", "--use_xla", "--horovod", "--disable_jit_fusions", "--cache_dir", "/tmp/c"])
    assert cfg.runtime.precision == "fp32" and cfg.runtime.compile is None  # nothing changed by them
    notes = [r for r in caplog.records if "another meaning" in r.getMessage()]
    assert len(notes) == 1
    for flag in ("--use_fused_lamb", "--use_lazy_mode", "--hmp", "--cnmix", "--opt_level", "--use_xla", "--horovod"):
        assert flag + ":" in notes[0].getMessage()


def test_intel_multi_instance_flags_point_to_streams(caplog):
    caplog.set_level(logging.WARNING)
    cfg = parse(["predict", "squad", "--total_cores", "8", "--cores_per_instance", "4", "--use_share_weight"])
    assert cfg.runtime.streams == 1  # noted, not guessed: the user chooses --streams
    (note,) = [r.getMessage() for r in caplog.records if "another meaning" in r.getMessage()]
    for flag in ("--total_cores", "--cores_per_instance", "--use_share_weight"):
        assert f"{flag}: --streams N (CPU prediction)" in note


@pytest.mark.parametrize("argv,needle", [
    (["--int8"], "--int8: int8 is for inference (predict, serve, export)"),
    (["--max_steps", "10.5"], "--max_steps 10.5: expected a whole number of steps"),
    (["--fp16", "--bf16"], "--fp16 and --bf16 ask for different precisions"),
    (["--steps_this_run", "5", "--max_steps", "10"], "--steps_this_run 5"),
])
def test_refused_values(argv, needle, capsys):
    assert main(["finetune", "squad", *argv]) == 2
    assert needle in capsys.readouterr().err


def test_squad2_flags_set_the_data_config():
    """NVIDIA's and Hugging Face's run_squad.py spell SQuAD 2.0 as a bare switch and a float."""
    cfg = parse(["finetune", "squad", "--version_2_with_negative", "--null_score_diff_threshold", "-1.25"])
    assert cfg.data.version_2_with_negative is True and cfg.data.null_score_diff_threshold == -1.25
    assert parse(["finetune", "squad"]).data.version_2_with_negative is False


def test_model_names_imply_casing_and_config_files_win_in_any_order():
    cased = parse(["finetune", "squad", "--bert_model", "bert-base-cased"])
    assert (cased.model.bert_model, cased.model.do_lower_case) == ("base", False)
    wwm = parse(["finetune", "squad", "--bert_model", "bert-large-uncased-whole-word-masking"])
    assert (wwm.model.bert_model, wwm.model.do_lower_case) == ("large", True)
    for argv in (["--config_file", "c.json", "--bert_model", "bert-large-cased"],
                 ["--bert_model", "bert-large-cased", "--bert_config_file", "c.json"]):
        cfg = parse(["finetune", "squad", *argv])
        assert (cfg.model.bert_model, cfg.model.do_lower_case) == ("c.json", False)
    explicit = parse(["finetune", "squad", "--bert_model", "bert-base-cased", "--do_lower_case"])
    assert explicit.model.do_lower_case is True  # an explicit flag wins over the name


def test_every_table_entry_is_in_one_table():
    tables = [set(reference_flags.ALIASES), set(reference_flags.SWITCHES), set(reference_flags.NOTED),
              set(reference_flags.REFUSED)]
    for i, a in enumerate(tables):
        for b in tables[i + 1:]:
            assert not a & b, a & b
