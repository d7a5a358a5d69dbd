"""--save_best survives a crash: a SQuAD run killed (SIGKILL) right after its step-4 checkpoint
and resumed ends with the same final model as the run done straight, the best evaluation
before the crash included."""

from __future__ import annotations

import json

import pytest

from dist_worker import Job, launch, read_metrics, read_weights, run_cli, write_tiny_config
from test_resume import assert_bit_identical


@pytest.mark.slow
def test_save_best_resumed_after_a_kill_keeps_the_best_from_before(tmp_path, vocab_file, squad_dev_file):
    write_tiny_config(tmp_path / "tiny.json", dropout=0.1)

    def argv(out: str) -> list[str]:
        return ["finetune", "squad", "--do_train", "--train_file", str(squad_dev_file), "--train_articles", "0:1",
                "--predict_file", str(squad_dev_file), "--predict_articles", "38:39", "--max_seq_length", "128",
                "--bert_model", str(tmp_path / "tiny.json"), "--vocab_file", str(vocab_file),
                "--do_lower_case", "true", "--max_steps", "6", "--save_every", "2", "--eval_every", "2",
                "--save_best", "--learning_rate", "1e-3", "--train_batch_size", "8", "--log_every", "1",
                "--device", "cpu", "--output_dir", str(tmp_path / out)]

    run_cli(argv("straight"))
    best = json.loads((tmp_path / "straight" / "bertforge.json").read_text())["best_step"]
    # the best evaluation must come before the kill for this run to test anything
    assert best in (2, 4), f"best step {best}: pick a run whose best evaluation precedes the kill"

    killed = launch(Job(argv("resumed"), kill_at_save=2, kill_when="after"), tmp_path / "launch")
    assert killed.returncode == -9, killed.output[-3000:]
    evals_before = [r["step"] for r in read_metrics(tmp_path / "resumed") if r.get("split") == "eval"]
    assert evals_before == [2, 4]  # step 4 was evaluated before its checkpoint was written
    assert (tmp_path / "resumed" / "best" / "model.safetensors").is_file()

    run_cli(argv("resumed") + ["--resume", "true"])
    assert_bit_identical(tmp_path / "straight", tmp_path / "resumed")
    assert json.loads((tmp_path / "resumed" / "bertforge.json").read_text())["best_step"] == best
    assert not (tmp_path / "resumed" / "best").exists()
    assert read_weights(tmp_path / "resumed").keys() == read_weights(tmp_path / "straight").keys()
