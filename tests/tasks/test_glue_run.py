"""A GLUE run through the real command line on a tiny BERT and a slice of MRPC: its classes have
names in the checkpoint, the HF config, the API (files and submissions keep GLUE's "0"/"1"); its
final scores are in metrics.jsonl, TensorBoard and the dllogger summary (accuracy under its own
name); a resumed run appends to its dllogger file."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import bertforge
from bertforge.checkpoint.commands import ConvertArgs, convert
from bertforge.cli import main
from bertforge.runconfig import ModelArgs, RuntimeArgs, TrainArgs
from bertforge.tasks.config import GlueData, GlueRun
from bertforge.tasks.glue import GlueJob
from bertforge.tasks.runner import run
from conftest import shared

NAMES = ["not_equivalent", "equivalent"]  # MRPC's classes 0 and 1


def rows(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text(encoding="utf-8-sig").splitlines()[1:]]


@pytest.fixture(scope="module")
def mrpc(tmp_path_factory) -> Path:
    """MRPC's first 16 train, 12 dev and 8 test rows, in GLUE's files."""
    folder = tmp_path_factory.mktemp("glue") / "MRPC"
    folder.mkdir()
    for name, count in (("train", 16), ("dev", 12), ("test", 8)):
        lines = shared("glue", "MRPC", f"{name}.tsv").read_text(encoding="utf-8-sig").splitlines()
        (folder / f"{name}.tsv").write_text("\n".join(lines[:count + 1]) + "\n", encoding="utf-8")
    return folder


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def read_dllog(path: Path) -> list[dict]:
    return [json.loads(line.removeprefix("DLLL ")) for line in path.read_text().splitlines()]


def test_mrpc_classes_have_names_and_final_scores_go_where_users_look(tmp_path, mrpc, tiny, vocab_file):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, dllog = tmp_path / "run", tmp_path / "dllogger.json"
    assert main(["finetune", "glue", "--task", "mrpc", "--data_dir", str(mrpc), "--do_train", "--do_eval",
                 "--do_predict", "--bert_model", str(tiny), "--vocab_file", str(vocab_file), "--do_lower_case",
                 "true", "--max_seq_length", "64", "--max_steps", "2", "--train_batch_size", "8",
                 "--learning_rate", "1e-3", "--log_every", "1", "--report_to", "tensorboard", "--json_summary",
                 str(dllog), "--device", "cpu", "--output_dir", str(out)]) == 0

    # Names in the checkpoint, the HF config and the API; GLUE's labels in the submission.
    assert json.loads((out / "bertforge.json").read_text())["labels"] == NAMES
    hf = convert(ConvertArgs(src=str(out), dst=str(tmp_path / "hf"), to="hf"))
    config = json.loads((hf / "config.json").read_text())
    assert config["id2label"] == {"0": "not_equivalent", "1": "equivalent"}
    assert config["label2id"] == {"not_equivalent": 0, "equivalent": 1}
    model = bertforge.load(out, device="cpu")
    assert model.labels == NAMES
    test_rows = rows(mrpc / "test.tsv")
    answers = model.classify([(r[3], r[4]) for r in test_rows], max_seq_length=64)
    submission = [line.split("\t") for line in (out / "MRPC.tsv").read_text().splitlines()[1:]]
    assert submission == [[r[0], str(NAMES.index(a.label))] for r, a in zip(test_rows, answers)]

    # The final scores: eval_results.json (which the API's answers on dev agree with), one
    # eval record in metrics.jsonl at the last step, TensorBoard, the dllogger summary.
    scores = json.loads((out / "eval_results.json").read_text())
    dev_rows = rows(mrpc / "dev.tsv")
    dev_answers = model.classify([(r[3], r[4]) for r in dev_rows], max_seq_length=64)
    assert scores["accuracy"] == pytest.approx(np.mean([a.label == NAMES[int(r[0])]
                                                        for r, a in zip(dev_rows, dev_answers)]), abs=1e-12)
    final = [r for r in read_metrics(out) if r.get("event") == "eval"]
    assert final == [{"event": "eval", "step": 2, "accuracy": scores["accuracy"], "f1": scores["f1"]}]
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    for key in ("accuracy", "f1"):
        assert [(e.step, e.value) for e in events.Scalars(f"final/{key}")] == [(2, pytest.approx(scores[key]))]
    summary = {k: v for r in read_dllog(dllog) if r.get("step") == [] for k, v in r["data"].items()}
    assert "exact_match" not in summary
    assert (summary["accuracy"], summary["F1"]) == (scores["accuracy"], scores["f1"])

    # An evaluation without training: its record at step 0.
    again = tmp_path / "eval"
    assert main(["evaluate", "glue", "--task", "mrpc", "--data_dir", str(mrpc), "--init_checkpoint", str(out),
                 "--max_seq_length", "64", "--device", "cpu", "--output_dir", str(again)]) == 0
    assert [r for r in read_metrics(again) if r.get("event") == "eval"] == [
        {"event": "eval", "step": 0, "accuracy": scores["accuracy"], "f1": scores["f1"]}]


class CrashAtStep2(GlueJob):
    """A run that dies in step 2, after step 1's checkpoint."""

    def add_callbacks(self, trainer, loaded, runtime) -> None:
        super().add_callbacks(trainer, loaded, runtime)

        def crash(t) -> None:
            if t.step == 2:
                raise RuntimeError("node lost")

        trainer.add_callback("on_step_end", crash)


def test_a_resumed_run_appends_to_its_dllogger_file(tmp_path, mrpc, tiny, vocab_file):
    dllog = tmp_path / "dllogger.json"
    cfg = GlueRun(output_dir=str(tmp_path / "run"), do_train=True,
                  data=GlueData(task_name="mrpc", data_dir=str(mrpc), max_seq_length=64),
                  train=TrainArgs(max_steps=2, train_batch_size=8, log_every=1, save_every=1),
                  model=ModelArgs(bert_model=str(tiny), vocab_file=str(vocab_file), do_lower_case=True),
                  runtime=RuntimeArgs(device="cpu", json_summary=str(dllog)))
    with pytest.raises(RuntimeError, match="node lost"):
        run(CrashAtStep2(cfg), progress=False)
    run(GlueJob(replace(cfg, train=replace(cfg.train, resume=True))), progress=False)
    logged = [r["step"][1] for r in read_dllog(dllog) if r["type"] == "LOG" and r["step"] != []]
    # Steps 1 and 2 before the crash (step 2 was logged before it died), step 2 again after.
    assert logged == [1, 2, 2]
    assert sum(r["type"] == "METADATA" and r["metric"] == "average_loss" for r in read_dllog(dllog)) == 2
