"""Run tracking (--report_to): every record the Trainer logs reaches the trackers; TensorBoard
and Weights & Biases (offline) files hold what metrics.jsonl holds; trackers close when a run
fails; bad names and missing extras are clear errors."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from bertforge.errors import ConfigError
from bertforge.fileio import json_safe
from bertforge.runconfig import TrainArgs
from bertforge.train.loop import TrainingDiverged, evaluate_every
from bertforge.train.tracking import RunRecords, TensorBoardTracker, WandbTracker, attach_trackers, scalars
from test_precision import POISONED_STEP, STEPS, make_trainer, metrics

REPO = Path(__file__).resolve().parents[2]


def test_every_record_reaches_on_record_and_trackers_close_when_a_run_fails(tmp_path):
    """fp32 with an inf gradient at step 3: the run stops with TrainingDiverged; the trackers
    saw the training records and were closed all the same."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = make_trainer(tmp_path, "fp32", poisoned=(POISONED_STEP,))
    seen: list[dict] = []
    trainer.add_callback("on_record", lambda t: seen.append(t.record))
    (tracker,) = attach_trackers(trainer, ["jsonl", "tensorboard"], {})
    closed = []
    close = tracker.close
    tracker.close = lambda: (closed.append(True), close())
    trainer.log({"step": 0, "split": "eval", "accuracy": 0.5})  # a task's eval record
    with pytest.raises(TrainingDiverged):
        trainer.fit()
    assert json_safe(seen) == metrics(tmp_path)  # the same records, in the same order (inf as null)
    assert closed == [True]
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("eval/accuracy")] == [(0, 0.5)]
    logged = [r for r in seen if "loss" in r]
    assert [e.step for e in acc.Scalars("train/loss")] == [r["step"] for r in logged]


def test_scalars_are_named_by_split_and_events_are_left_out():
    assert scalars({"step": 7, "loss": 1.5, "lr": 1e-4, "seq_per_s": 10}) == (
        7, {"train/loss": 1.5, "train/lr": 1e-4, "train/seq_per_s": 10.0})
    assert scalars({"step": 7, "split": "eval", "f1": 80.0, "exact_match": 70.0}) == (
        7, {"eval/f1": 80.0, "eval/exact_match": 70.0})
    assert scalars({"event": "resume", "step": 4, "checkpoint": "x"}) is None
    assert scalars({"event": "eval", "step": 4, "accuracy": 0.75}) == (4, {"final/accuracy": 0.75})


def test_the_final_evaluation_is_one_record_and_trackers_close_after_it(tmp_path):
    """A finished training leaves the trackers open for the run's final evaluation, which goes to
    metrics.jsonl and TensorBoard at the last step, or at the step of the weights it scored."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = make_trainer(tmp_path, "fp32")
    evaluate_every(trainer, 3, lambda step: {"accuracy": step / 10})
    records = RunRecords(tmp_path, is_main=True)
    records.attach(trainer, ["jsonl", "tensorboard"], {})
    (tracker,) = records.trackers
    closed = []
    close = tracker.close
    tracker.close = lambda: (closed.append(True), close())
    trainer.fit()
    assert closed == []
    record = records.final_eval({"accuracy": 0.75, "f1": 0.5})
    assert closed == [True]
    assert record == {"event": "eval", "step": STEPS, "accuracy": 0.75, "f1": 0.5}
    assert [r for r in metrics(tmp_path) if r.get("event") == "eval"] == [record]
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("final/accuracy")] == [(STEPS, 0.75)]
    assert [(e.step, e.value) for e in acc.Scalars("final/f1")] == [(STEPS, 0.5)]
    assert [e.step for e in acc.Scalars("eval/accuracy")] == [3, STEPS]  # training's own evaluations
    # --save_best: the step whose weights were scored; no scores, no record.
    assert RunRecords(tmp_path / "other", is_main=True).final_eval({"f1": 0.5}, weights_step=3) == {
        "event": "eval", "step": 3, "f1": 0.5}
    assert RunRecords(tmp_path / "none", is_main=True).final_eval(None) is None
    assert not (tmp_path / "none" / "metrics.jsonl").exists()


def test_report_to_names_are_checked():
    assert TrainArgs(report_to="tensorboard,wandb").trackers == ["jsonl", "tensorboard", "wandb"]
    assert TrainArgs(report_to="none").trackers == ["jsonl"]
    assert TrainArgs(report_to="jsonl, tensorboard,tensorboard").trackers == ["jsonl", "tensorboard"]
    with pytest.raises(ConfigError, match="--report_to must be a comma-separated list of jsonl, "
                                          "tensorboard, wandb"):
        TrainArgs(report_to="tensorbord")


def test_wandb_gets_the_final_scores_as_its_run_summary():
    """History rows for records at their step; the final evaluation in the run summary (its step
    may be an earlier one, --save_best's, and W&B drops history rows that go back)."""
    class Run:
        def __init__(self):
            self.rows, self.summary = [], {}

        def log(self, values, step):
            self.rows.append((step, values))

    tracker = WandbTracker.__new__(WandbTracker)  # no wandb.init: the run is the stand-in above
    tracker.run = Run()
    tracker.log({"step": 4, "loss": 2.0})
    tracker.log({"step": 4, "split": "eval", "accuracy": 0.5})
    tracker.log({"event": "eval", "step": 2, "accuracy": 0.75})
    tracker.log({"event": "resume", "step": 2, "checkpoint": "x"})
    assert tracker.run.rows == [(4, {"train/loss": 2.0}), (4, {"eval/accuracy": 0.5})]
    assert tracker.run.summary == {"final/accuracy": 0.75}


@pytest.mark.parametrize("cls,module", [(TensorBoardTracker, "tensorboard"), (WandbTracker, "wandb")])
def test_missing_tracker_names_the_extra(tmp_path, monkeypatch, cls, module):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: import fails
    with pytest.raises(ConfigError, match=rf"--report_to {module} needs the Python package '{module}'.*"
                                          rf"bertforge\[{module}\]"):  # each backend its own extra
        cls(tmp_path, {})


def wandb_history(run_file: Path) -> list[dict]:
    """The history rows of a .wandb file, read without wandb's reader: the file is a LevelDB-style
    log (7-byte header ':W&B', magic, version; 32 KiB blocks of records with a 7-byte header:
    CRC, length, type FULL/FIRST/MIDDLE/LAST) of wandb's `Record` protobufs."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending, rows = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:  # zero padding at the end
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return rows


@pytest.mark.slow
def test_wandb_offline_run_holds_the_metrics(tmp_path, vocab_file, squad_dev_file):
    pytest.importorskip("wandb")
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2,
                                  "num_attention_heads": 2, "intermediate_size": 37,
                                  "max_position_embeddings": 128}))
    out = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_CONFIG_DIR": str(tmp_path / "wb-config"),
           "WANDB_CACHE_DIR": str(tmp_path / "wb-cache"), "WANDB_DATA_DIR": str(tmp_path / "wb-data"),
           "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "bertforge", "finetune", "squad", "--do_train", "--train_file", str(squad_dev_file),
         "--train_articles", "0:1", "--predict_file", str(squad_dev_file), "--predict_articles", "38:39",
         "--max_seq_length", "128", "--bert_model", str(config), "--vocab_file", str(vocab_file),
         "--do_lower_case", "true", "--max_steps", "4", "--train_batch_size", "8", "--log_every", "1",
         "--eval_every", "2", "--report_to", "wandb", "--device", "cpu", "--output_dir", str(out)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    rows = wandb_history(run_file)
    train = [r for r in metrics(out) if "loss" in r]
    evals = [r for r in metrics(out) if r.get("split") == "eval"]
    logged_loss = [(r["_step"], r["train/loss"]) for r in rows if "train/loss" in r]
    assert logged_loss == [(r["step"], pytest.approx(r["loss"], rel=1e-12)) for r in train]
    logged_f1 = [(r["_step"], r["eval/f1"]) for r in rows if "eval/f1" in r]
    assert logged_f1 == [(r["step"], pytest.approx(r["f1"], rel=1e-12)) for r in evals]
    assert [r["step"] for r in evals] == [2, 4]


def test_time_in_step_callbacks_is_not_counted_as_training_time(tmp_path):
    """An evaluation (here a 2 s sleep after step 2) must not lower the throughput the next
    record reports: step 3's record covers step 3's training only."""
    import time

    trainer = make_trainer(tmp_path, "fp32")
    trainer.add_callback("on_step_end", lambda t: time.sleep(2.0) if t.step == 2 else None)
    trainer.fit()
    record = next(r for r in metrics(tmp_path) if r.get("step") == 3 and "seq_per_s" in r)
    seconds = 8 / record["seq_per_s"]  # one micro-batch of 8 sequences in that window
    assert seconds < 2.0
