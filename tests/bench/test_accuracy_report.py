"""benchmarks/accuracy.py, split into one module per job, still reads the committed results
file: every SQuAD score, GLUE pair, held-out pretraining curve and pretraining verdict of
benchmarks/accuracy_results.jsonl is in its report (the expected numbers read here from the
JSON lines directly)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "accuracy.py"
RESULTS = REPO / "benchmarks" / "accuracy_results.jsonl"


def accuracy(*args: str) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_report_of_the_committed_results():
    report = accuracy("--results", str(RESULTS), "report")
    records = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    squad = [r for r in records if r.get("comparison") == "squad"]
    glue = [r for r in records if r.get("comparison") == "glue"]
    pre = [r for r in records if r.get("comparison") == "pretrain" and r.get("stage") == "pretrain"]
    summaries = [r for r in records if r.get("comparison") == "pretrain" and r.get("stage") == "summary"]
    assert squad and glue and pre and summaries  # the file holds every kind
    for r in squad:
        assert f"| {r['lr']:g} | {r['side']} | {r['f1']:.2f} | {r['exact_match']:.2f} |" in report
    for r in glue:
        metric = next(m for m in ("mcc", "f1", "accuracy") if m in r)
        assert f"{100 * r[metric]:.2f}" in report
    for r in pre:
        for h in r["heldout"]:
            assert f"| {h['step']} | {100 * h['mlm_accuracy']:.2f} | {100 * h['nsp_accuracy']:.2f} |" in report
    for r in summaries:
        assert f"| {r['gain']:+.2f} | {r['spread']:.2f} |" in report


def test_every_job_is_a_command():
    usage = accuracy("--help")
    assert "{all,squad,glue,pretrain,dapt,parity,bundle,report}" in usage
    assert "--pretrain_max_minutes" in accuracy("pretrain", "--help")
    assert "--parity_seeds" in accuracy("parity", "--help")
