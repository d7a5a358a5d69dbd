"""The GPU suite (benchmarks/run_gpu_suite.py) runs on the CPU with --smoke, so it cannot rot
before a GPU session runs it: every case that does not need CUDA, through the same code, with a
tiny model (compiled layers and FlashAttention's varlen path through the CPU stand-in kernel of
attention_reference.py included). Run in subprocesses: the stand-in kernel must not leak into
other tests."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attention_reference import dropout_keep_masks, reference_varlen_attention, reference_varlen_attention_backward
from conftest import REPO

SUITE = REPO / "benchmarks" / "run_gpu_suite.py"
# Slow on a CPU for reasons of the CPU alone: fp16 and tf32 matmuls without hardware support,
# inductor compiling a whole transformers model; the full --smoke runs them.
CPU_SLOW = ["squad-train-fp32", "squad-train-tf32", "squad-train-fp16", "dense-train-hf-compiled"]


def run_suite(out: Path, *args: str, timeout: float = 600) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.run([sys.executable, str(SUITE), "--smoke", "--out", str(out), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
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
def test_smoke_runs_every_cpu_case(tmp_path):
    rows = {r["case"]: r for r in run_suite(tmp_path, "--in_process", "--skip", *CPU_SLOW)}
    listed = subprocess.run([sys.executable, str(SUITE), "--list"], capture_output=True, text=True,
                            check=True).stdout.splitlines()
    assert set(rows) == {line.split()[0] for line in listed} - set(CPU_SLOW)  # every other case ran

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

    for name in ("squad-train", "dense-train", "squad-infer", "pretrain", "dense-infer"):
        r = rows[name]
        assert "error" not in r, r.get("error")
        ours, hf = r["bertforge"], r["hf"]
        for key in ("seq_per_s", "mfu", "first_step_s", "host_ms_p50", "step_ms_p50", "peak_memory_gb"):
            assert ours[key] > 0 and hf[key] > 0, (name, key)
        assert r["speedup_vs_hf"] == pytest.approx(ours["seq_per_s"] / hf["seq_per_s"])
        assert r["max_abs_diff_vs_hf"] < 0.1  # bf16 on both sides
        assert {"graphs", "graph_breaks", "recompiles"} <= set(ours["compile"])
        assert len(ours["step_ms"]) == len(r["step_tokens"]) == r["steps"]
    squad = rows["squad-train"]
    assert squad["bertforge"]["compiled"] and squad["bertforge"]["compile"]["graph_breaks"] == 0
    assert "Self CPU" in squad["profile"]["bertforge"]["top"]  # the top-op table, no trace file
    assert squad["profile"]["bertforge"]["trace_file"] is None
    assert 0.2 < squad["real_token_fraction"] < 1.0  # real SQuAD features with their padding
    assert rows["graphs-infer"]["skipped"] == "needs CUDA"
    assert "skipped" in rows["accuracy-squad"]

    report = (tmp_path / "gpu_suite.md").read_text()
    assert "## Targets" in report and "smoke: no verdict" in report and "top kernels: squad-train" in report
    assert json.loads((tmp_path / "sanity.json").read_text())["ok"] is True


@pytest.mark.slow
def test_cases_run_in_their_own_processes(tmp_path):
    """The default: one process per case, each reporting its row, stopped at its time limit."""
    rows = run_suite(tmp_path, "--only", "dense-infer", "accuracy-squad")
    assert [r["case"] for r in rows] == ["dense-infer", "accuracy-squad"]
    assert rows[0]["bertforge"]["seq_per_s"] > 0 and rows[0]["speedup_vs_hf"] > 0
    rows = run_suite(tmp_path / "cut", "--only", "dense-infer", "--case_timeout_s", "0.5")
    assert rows[0]["error"].startswith("stopped after")
