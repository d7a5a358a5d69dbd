"""benchmarks/pretrain_parity.py, the long pretraining comparison, on a few steps of BERT-tiny:
without dropout both sides take the same steps (the same initial weights, batches, optimizer and
schedule), so their training losses and held-out metrics agree to float precision; and `report`
applies the pass criterion as stated (checked on written-out records). Run as the command it is,
in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, shared

SCRIPT = REPO / "benchmarks" / "pretrain_parity.py"


def parity(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def test_without_dropout_both_sides_take_the_same_steps(tmp_path):
    out = tmp_path / "results.jsonl"
    proc = parity("run", "--side", "both", "--seeds", "0", "--steps", "4", "--eval_every", "2", "--threads", "1",
                  "--model", "tiny", "--documents", "80", "--held_out_fraction", "0.15", "--batch", "4",
                  "--dropout", "0", "--log_every", "1", "--cache_dir", str(tmp_path / "cache"), "--out", str(out),
                  "--data_root", str(shared()))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    runs = {r["side"]: r for r in records if r["kind"] == "run"}
    evals = {(r["side"], r["step"]): r for r in records if r["kind"] == "eval"}
    assert sorted(evals) == [(s, k) for s in ("bertforge", "transformers") for k in (2, 4)]
    ours, theirs = runs["bertforge"]["losses"], runs["transformers"]["losses"]
    assert [s for s, _ in ours] == [s for s, _ in theirs] == [1, 2, 3, 4]
    for (_, a), (_, b) in zip(ours, theirs):
        assert a == pytest.approx(b, rel=1e-5)
    assert ours[-1][1] < ours[0][1]  # it trained
    for step in (2, 4):
        a, b = evals[("bertforge", step)], evals[("transformers", step)]
        for key in ("mlm_loss", "nsp_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), (step, key)
        assert (a["mlm_accuracy"], a["nsp_accuracy"]) == (b["mlm_accuracy"], b["nsp_accuracy"])
    for side in runs.values():
        assert side["seconds_per_update"] > 0 and side["threads"] == 1 and "pretrain_parity.py run" in side["command"]

    shown = parity("report", "--out", str(out))
    assert shown.returncode == 1 and "Verdict: **incomplete**" in shown.stdout  # one seed per side

    timed = parity("time", "--updates", "2", "--threads", "1", "--steps", "4", "--eval_every", "2", "--model", "tiny",
                   "--documents", "80", "--held_out_fraction", "0.15", "--batch", "4", "--dropout", "0",
                   "--cache_dir", str(tmp_path / "cache"), "--out", str(out), "--data_root", str(shared()))
    assert timed.returncode == 0, timed.stdout[-3000:] + timed.stderr[-3000:]
    timing = [json.loads(line) for line in out.read_text().splitlines() if '"timing"' in line]
    assert [(r["side"], r["updates"], r["steps"]) for r in timing] == [("bertforge", 2, 4), ("transformers", 2, 4)]
    assert all(r["seconds_per_update"] > 0 for r in timing)
    assert "measured alone (`time`, 2 updates" in parity("report", "--out", str(out)).stdout


def records_of(recipe: dict, curves: dict[str, list[list[float]]], nsp: dict[str, float]) -> list[dict]:
    """Eval and run records at updates 100..1000: curves[side][seed][i] is the MLM loss at
    update 100 (i + 1)."""
    out = []
    for side, seeds in curves.items():
        for seed, losses in enumerate(seeds):
            for i, loss in enumerate(losses):
                out.append({"kind": "eval", **recipe, "side": side, "seed": seed, "step": 100 * (i + 1),
                            "mlm_loss": loss, "mlm_accuracy": 0.3, "nsp_accuracy": nsp[side], "nsp_loss": 0.6})
            out.append({"kind": "run", **recipe, "side": side, "seed": seed, "threads": 2,
                        "seconds_per_update": 0.5, "command": "python benchmarks/pretrain_parity.py run"})
    return out


def test_report_applies_the_criterion(tmp_path):
    """Judged after update 300 only: the mean MLM losses must differ by less than the larger of
    the seed spread and 1% of their mean; the final NSP accuracies by at most 2 points."""
    base = [8.0, 7.0, 6.0, 5.5, 5.2, 5.0, 4.9, 4.8, 4.7, 4.6]

    def recipe(lr: float) -> dict:
        return {"benchmark": "pretrain_parity", "model": "mini", "steps": 1000, "batch": 16, "lr": lr,
                "warmup": 0.1, "dropout": 0.1, "eval_every": 100, "documents": None, "held_out_fraction": 0.05,
                "max_seq_length": 128, "max_predictions": 20}

    early_gap = [x * (1.2 if i < 3 else 1.009) for i, x in enumerate(base)]  # off before 300: not judged
    late_gap = [x * (1.03 if i == 5 else 1.0) for i, x in enumerate(base)]  # 3% at update 600, spread 0.2%
    wide_spread = [x + 0.3 for x in base]  # a 6% difference, inside a seed spread of 0.4 (8%)
    nsp_gap = base
    records = (records_of(recipe(1e-3), {"bertforge": [base, base], "transformers": [early_gap, early_gap]},
                          {"bertforge": 0.70, "transformers": 0.71})
               + records_of(recipe(2e-3), {"bertforge": [base, [x * 1.002 for x in base]],
                                           "transformers": [late_gap, late_gap]},
                            {"bertforge": 0.70, "transformers": 0.70})
               + records_of(recipe(3e-3), {"bertforge": [[x - 0.1 for x in base], [x + 0.3 for x in base]],
                                           "transformers": [wide_spread, wide_spread]},
                            {"bertforge": 0.70, "transformers": 0.70})
               + records_of(recipe(4e-3), {"bertforge": [base, base], "transformers": [nsp_gap, nsp_gap]},
                            {"bertforge": 0.70, "transformers": 0.725}))
    out = tmp_path / "results.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in records))
    proc = parity("report", "--out", str(out))
    assert proc.returncode == 1, proc.stderr
    sections = proc.stdout.split("### ")[1:]
    verdicts = [s.split("Verdict: **")[1].split("**")[0] for s in sections]
    assert verdicts == ["pass", "fail", "pass", "fail"], proc.stdout
    assert "| 600 |" in sections[1] and "FAIL |" in sections[1].split("| 600 |")[1].splitlines()[0]
    assert "Final NSP accuracy gap: 2.50 points" in sections[3]


def test_report_shows_the_time_measured_alone(tmp_path):
    """`time` records (both sides, alone on the machine) are shown beside the runs' own times,
    for the recipe they carry; without them the report says the figure is still missing."""
    recipe = {"benchmark": "pretrain_parity", "model": "mini", "steps": 1000, "batch": 16, "lr": 1e-3,
              "warmup": 0.1, "dropout": 0.1, "eval_every": 100, "documents": None, "held_out_fraction": 0.05,
              "max_seq_length": 128, "max_predictions": 20}
    base = [8.0, 7.0, 6.0, 5.5, 5.2, 5.0, 4.9, 4.8, 4.7, 4.6]
    records = records_of(recipe, {"bertforge": [base, base], "transformers": [base, base]},
                         {"bertforge": 0.7, "transformers": 0.7})
    out = tmp_path / "results.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert "measured alone: not yet" in parity("report", "--out", str(out)).stdout
    timing = [{"kind": "timing", **recipe, "side": side, "updates": 100, "threads": 2, "seconds_per_update": sec}
              for side, sec in (("bertforge", 0.25), ("transformers", 0.5))]
    out.write_text("".join(json.dumps(r) + "\n" for r in records + timing))
    proc = parity("report", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ("measured alone (`time`, 100 updates, torch threads 2): bertforge 0.250 s, transformers 0.500 s "
            "(bertforge 2.00x as fast)") in proc.stdout
