"""The GPU suite (benchmarks/run_gpu_suite.py) runs on the CPU with --smoke, so it cannot rot
before a GPU session runs it: every case, through the same code, with a tiny model (compiled
layers and FlashAttention's varlen path through the CPU stand-in kernel of bertforge.bench.cpu_flash
included), the pretraining check too. Run in subprocesses: the stand-in kernel must not leak into
other tests."""

from __future__ import annotations

import json
import math
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bertforge.bench.cpu_flash import dropout_keep_masks, reference_varlen_attention, reference_varlen_attention_backward
from bertforge.bench.suite import BY_NAME
from conftest import REPO, SHARED_DATA

SUITE = REPO / "benchmarks" / "run_gpu_suite.py"


def run_suite(out: Path, *args: str, data_dir: Path = SHARED_DATA, timeout: float = 900) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.run([sys.executable, str(SUITE), "--smoke", "--out", str(out), "--data_dir", str(data_dir),
                           *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads(line) for line in (out / "gpu_suite.jsonl").read_text().splitlines()]


def test_reference_kernel_dropout_backward_is_the_gradient_of_its_forward():
    """The stand-in's backward with dropout (the smoke trains through it) equals autograd through
    the forward written out with the same masks."""
    torch.manual_seed(0)
    cu = torch.tensor([0, 5, 12], dtype=torch.int32)
    q, k, v = (torch.randn(12, 3, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    keep = dropout_keep_masks(cu, 3, 0.3, seed=7)
    assert not all(m.all() for m in keep)  # something was dropped
    outs = []
    for i, (s, e) in enumerate([(0, 5), (5, 12)]):
        qi, ki, vi = (t[s:e].transpose(0, 1) for t in (q, k, v))
        probs = (qi @ ki.transpose(1, 2) / 2).softmax(-1) * keep[i] / 0.7
        outs.append((probs @ vi).transpose(0, 1))
    out = torch.cat(outs)
    grad_out = torch.randn_like(out)
    expected = torch.autograd.grad(out, (q, k, v), grad_out)
    detached = [t.detach() for t in (q, k, v)]
    torch.testing.assert_close(reference_varlen_attention(*detached, cu, None, keep, 0.3)[0], out.detach())
    got = reference_varlen_attention_backward(grad_out, *detached, cu, None, keep, 0.3)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


@pytest.mark.slow
def test_smoke_runs_every_case(tmp_path):
    rows = {r["case"]: r for r in run_suite(tmp_path, "--in_process", "--all")}
    assert set(rows) == set(BY_NAME)  # every case has its row
    for r in rows.values():
        assert r["device"] and r["torch"] == torch.__version__ and f"--only {r['case']}" in r["command"]

    sanity = rows["sanity"]
    assert sanity["ok"] is True, json.dumps(sanity, indent=1)
    trained = sanity["compiled_training"]
    assert trained["attention"] == "flash varlen"  # the stand-in kernel ran the flash path
    assert trained["compile"]["graphs"] >= 1 and trained["compile"]["graph_breaks"] == 0
    assert trained["compile"]["recompiles"] == 0  # new lengths every step reuse the graph
    assert all(map(math.isfinite, trained["losses"] + trained["grad_norms"]))
    assert set(sanity["sync_free_steps"]["steps"]) == {"qa_adamw_bf16", "pretraining_lamb_bf16",
                                                      "qa_adamw_fp16", "pretraining_lamb_fp16"}
    assert sanity["cuda_graph"]["ok"] is None and "CUDA" in sanity["cuda_graph"]["skipped"]

    for name in ("squad-train", "squad-infer", "dense-train", "pretrain", "dense-infer"):
        r = rows[name]
        assert "error" not in r, r.get("error")
        assert r["sanity"] == {"ok": True, "failed": []}  # every row after the sanity case carries it
        ours, hf = r["bertforge"], r["hf"]
        for key in ("seq_per_s", "mfu", "first_step_s", "host_ms_p50", "step_ms_p50", "peak_memory_gb"):
            assert ours[key] > 0 and hf[key] > 0, (name, key)
        assert r["speedup_vs_hf"] == pytest.approx(ours["seq_per_s"] / hf["seq_per_s"])
        assert r["max_abs_diff_vs_hf"] < 0.1  # bf16 on both sides
        assert {"graphs", "graph_breaks", "recompiles"} <= set(ours["compile"])
        assert len(ours["step_ms"]) == len(r["step_tokens"]) == r["steps"]
        assert r["benchmark_command"].startswith("bertforge benchmark ")
        if r["speedup_vs_hf"] < BY_NAME[name].min_speedup:  # a missed target carries both sides' kernels
            assert set(r["profile"]) == {"bertforge", "hf"} and "Self CPU" in r["profile"]["hf"]["top"]
    pretrain = rows["pretrain"]
    assert pretrain["args"]["optimizer"] == "lamb"
    for side in ("bertforge", "hf"):
        optimizer = pretrain[side]["optimizer"]
        assert optimizer["name"] == "Lamb" and 0 < optimizer["share_of_step"] < 1 and optimizer["ms_p50"] > 0
    squad = rows["squad-train"]
    assert squad["bertforge"]["compiled"] and squad["bertforge"]["compile"]["graph_breaks"] == 0
    assert "Self CPU" in squad["profile"]["bertforge"]["top"]  # the top-op table, no trace file
    assert squad["profile"]["bertforge"]["trace_file"] is None
    assert 0.2 < squad["real_token_fraction"] < 1.0  # real SQuAD features with their padding
    for name, precision in (("squad-train-fp16", "fp16"), ("squad-train-tf32", "tf32"), ("squad-train-fp32", "fp32")):
        assert rows[name]["precision"] == precision and rows[name]["bertforge"]["seq_per_s"] > 0
    assert rows["dense-train-hf-compiled"]["hf"]["compiled"] is True
    assert rows["graphs-infer"]["skipped"] == "needs CUDA"
    assert "skipped" in rows["accuracy-squad"]

    works = rows["pretraining-works"]
    assert works["exit"] == 0 and works["pretrain_steps_done"] == 3
    assert math.isfinite(works["heldout_mlm_loss"]) and 0 <= works["heldout_mlm_accuracy"] <= 1
    assert len(works["sst2_pretrained"]) == len(works["sst2_random"]) == 1
    assert works["gain"] == pytest.approx(works["sst2_pretrained"][0] - works["sst2_random"][0])
    assert isinstance(works["passes"], bool)

    report = (tmp_path / "gpu_suite.md").read_text()
    assert "## Targets" in report and "smoke: no verdict" in report and "top kernels: squad-train" in report
    assert "## pretraining-works" in report
    assert json.loads((tmp_path / "sanity.json").read_text())["ok"] is True


@pytest.mark.slow
def test_cases_run_in_their_own_processes_and_a_failure_runs_again(tmp_path):
    """The default: one process per case. A case that fails (here: no vocabulary in the data
    folder, which SQuAD features need) runs once more with CUDA_LAUNCH_BLOCKING and TORCH_LOGS, and its row names the
    innermost bertforge frame; the other cases are not affected."""
    empty = tmp_path / "no-data"
    empty.mkdir()
    rows = run_suite(tmp_path / "out", "--only", "dense-infer", "squad-infer", data_dir=empty)
    assert [r["case"] for r in rows] == ["dense-infer", "squad-infer"]
    assert rows[0]["bertforge"]["seq_per_s"] > 0 and rows[0]["speedup_vs_hf"] > 0
    failed = rows[1]
    assert failed["error"].startswith("DataError: vocab file not found") and str(empty) in failed["error"]
    assert "bertforge/bench/inputs.py" in failed["where"]
    assert failed["rerun_env"] == {"CUDA_LAUNCH_BLOCKING": "1", "TORCH_LOGS": "recompiles,graph_breaks"}
    assert failed["first_attempt"]["where"] == failed["where"]
    assert "squad-infer: failed" in (tmp_path / "out" / "gpu_suite.md").read_text()

    rows = run_suite(tmp_path / "cut", "--only", "dense-infer", "--case_timeout_s", "0.5")
    assert rows[0]["error"].startswith("stopped after") and rows[0]["timed_out"] and "rerun_env" not in rows[0]


def test_budget_guard_skips_a_case_that_would_not_fit(tmp_path):
    rows = run_suite(tmp_path, "--only", "dense-infer", "--budget_s", "5")
    assert rows[0]["skipped"].startswith("would not fit: needs ~15 s")


def test_innermost_frame_of_a_crashed_process():
    """A process that died without its result row: the frame is read from its output."""
    innermost_frame = runpy.run_path(str(SUITE))["innermost_frame"]
    output = ('Traceback (most recent call last):\n'
              '  File "/x/benchmarks/run_gpu_suite.py", line 9, in run_case\n'
              '  File "/x/site-packages/bertforge/bench/run.py", line 170, in measure\n'
              '  File "/x/site-packages/bertforge/model/bert.py", line 300, in forward\n'
              '  File "/x/site-packages/torch/nn/functional.py", line 5, in linear\n'
              'RuntimeError: CUDA error: an illegal memory access was encountered\n')
    assert innermost_frame(output) == "/x/site-packages/bertforge/model/bert.py:300"
    assert innermost_frame("Segmentation fault") == ""
