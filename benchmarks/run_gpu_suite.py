"""Every GPU speed target of the issue, side by side with Hugging Face transformers, in one call.

Runs, in order of importance, each in its own process (a crash or a hang loses one row, not the
table), until the time budget is spent:

  sanity   the GPU-only fast paths compute the same function as the padded path (FlashAttention
           varlen with and without dropout, compiled layers, CUDA-graph replay), forward and
           backward, and the unpadded forward with host-known lengths never syncs;
  targets  BERT-large against transformers' BERT (sdpa), same precision, inputs and optimizer;
  issue 6  SQuAD training step throughput per precision (fp32, tf32, bf16, fp16).

Writes under --out (the device tool's $OUT): gpu_suite.md (the table), gpu_suite.jsonl (every
number of every case), gpu_suite.log (all output), sanity.json. Prints the table last.

On the device machine (no internet; torch and transformers are installed there), after
`benchmarks/prepare_device.sh` here:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .bench/whl/*.whl &&
    PYTHONPATH=src:/tmp/site PYTHONUNBUFFERED=1 python3 benchmarks/run_gpu_suite.py --out $OUT

with carry [".bench"]. `--only NAME ...` runs some cases; `--list` names them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / ".bench"

# name -> (BenchmarkArgs overrides, the issue's target for this row)
LARGE = dict(bert_model="large", precision="bf16", warmup=5, steps=15)
CASES: dict[str, tuple[dict, str]] = {
    "train-384x32-synthetic": (dict(LARGE, mode="train", seq_length=384, batch_size=32, compare_hf=True,
                                    profile=True), ">= 1.4x HF, >= 50% MFU"),
    "train-384x32-squad": (dict(LARGE, mode="train", data="squad", seq_length=384, batch_size=32,
                                compare_hf=True), ">= 2.5x HF"),
    "infer-384x128-squad": (dict(LARGE, mode="infer", data="squad", seq_length=384, batch_size=128,
                                 compare_hf=True), ">= 2.5x HF"),
    "pretrain-128x128-20masked": (dict(LARGE, mode="train", task="pretraining", seq_length=128,
                                       batch_size=128, compare_hf=True), ">= 1.5x HF BertForPreTraining"),
    "infer-384x128-synthetic": (dict(LARGE, mode="infer", seq_length=384, batch_size=128, compare_hf=True),
                                ">= 1.3x HF"),
    "infer-384x128-synthetic-graphs": (dict(LARGE, mode="infer", seq_length=384, batch_size=128,
                                            cuda_graphs=True, compare_hf=True), ">= 1.3x HF"),
    "squad-train-fp32": (dict(LARGE, mode="train", data="squad", precision="fp32", warmup=3, steps=8),
                         "issue 6: seq/s per precision"),
    "squad-train-tf32": (dict(LARGE, mode="train", data="squad", precision="tf32", warmup=3, steps=8),
                         "issue 6: seq/s per precision"),
    "squad-train-fp16": (dict(LARGE, mode="train", data="squad", precision="fp16", warmup=3, steps=10),
                         "issue 6: seq/s per precision"),
    "train-384x32-synthetic-hf-compiled": (dict(LARGE, mode="train", seq_length=384, batch_size=32,
                                                compare_hf=True, hf_compile=True),
                                           "reference: HF + torch.compile (ANCHORS: 444 seq/s)"),
}


def data_paths(args) -> dict:
    """The SQuAD dev file and vocab: as given, else the bundle's, else ../shared/data's."""
    shared = REPO.parent / "shared" / "data"

    def first(given: str | None, *candidates: Path) -> str:
        return given or str(next((p for p in candidates if p.is_file()), candidates[0]))

    return {"squad_file": first(args.squad_file, BUNDLE / "dev-v1.1.json",
                                shared / "squad" / "v1.1" / "dev-v1.1.json"),
            "vocab_file": first(args.vocab_file, BUNDLE / "vocab.txt",
                                shared / "vocab" / "bert-base-uncased" / "vocab.txt")}


# ---- one case (child process) -----------------------------------------------------------------


def run_case(name: str, paths: dict, smoke: bool = False) -> dict:
    from bertforge.benchmark import BenchmarkArgs, measure

    overrides, target = CASES[name]
    kwargs = dict(overrides)
    if kwargs.get("data") == "squad":
        kwargs.update(paths)
    if kwargs.get("profile"):
        kwargs["trace_file"] = f"/tmp/bertforge_trace_{name}.json"
    if smoke:  # the orchestration on the CPU with a tiny model: checks this script, not speed
        kwargs.update(bert_model="tiny", seq_length=128, batch_size=2, steps=2, warmup=1, device="cpu",
                      precision="fp32", cuda_graphs=False)
    cfg = BenchmarkArgs(**kwargs)
    result = measure(cfg)
    result.update(case=name, target=target, args=asdict(cfg))
    return result


def sanity() -> dict:
    """GPU-only paths against the padded path, forward and backward, in each precision."""
    import torch

    from bertforge.config import BertConfig
    from bertforge.infer import CudaGraphForward
    from bertforge.model import BertForQuestionAnswering
    from bertforge.model import bert as bert_module
    from bertforge.train.loop import compile_layers

    torch.manual_seed(0)
    dev = torch.device("cuda")
    cfg = BertConfig(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, intermediate_size=1024,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    B, T = 8, 128
    lengths = torch.randint(16, T + 1, (B,))
    lengths[0] = T
    mask = (torch.arange(T)[None] < lengths[:, None]).long().to(dev)
    ids = (torch.randint(1, cfg.vocab_size, (B, T)).to(dev) * mask)
    types = torch.zeros_like(ids)
    real = mask.bool()
    report: dict = {"torch": torch.__version__, "flash_varlen_available": bert_module._flash_varlen_on(dev)}

    def rel(a, b):
        return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))

    def fwd_bwd(model, dtype):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            start, end = model(ids, types, mask)
        (start.float()[real].square().mean() + end.float()[real].mean()).backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        return start.float()[real].detach(), grads

    reference = BertForQuestionAnswering(cfg, unpad=False).to(dev)
    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        unpadded = BertForQuestionAnswering(cfg, unpad=True).to(dev)
        unpadded.load_state_dict(reference.state_dict())
        out_p, g_p = fwd_bwd(reference, dtype)
        out_u, g_u = fwd_bwd(unpadded, dtype)
        report[f"unpad_vs_padded_{dtype_name}"] = {"out_rel": rel(out_u, out_p), "grad_rel": rel(g_u, g_p)}
        if dtype != torch.bfloat16:  # one compiled check: each precision is another compilation
            continue
        compiled = BertForQuestionAnswering(cfg, unpad=True).to(dev)
        compiled.load_state_dict(reference.state_dict())
        compile_layers(compiled)
        out_c, g_c = fwd_bwd(compiled, dtype)
        report[f"compiled_unpad_vs_padded_{dtype_name}"] = {"out_rel": rel(out_c, out_p),
                                                             "grad_rel": rel(g_c, g_p)}
    # Attention dropout on the unpadded path (FlashAttention varlen): runs forward and backward,
    # and with p -> 0 it is the plain function.
    host_lengths = lengths.tolist()
    qkv = torch.randn(sum(host_lengths), 3, 4, 64, device=dev, dtype=torch.bfloat16, requires_grad=True)
    layout = bert_module.Unpadded.from_mask(mask, host_lengths)
    y = bert_module._flash_varlen_attention(*qkv.unbind(1), layout, 0.1)
    y.float().sum().backward()
    plain = bert_module._flash_varlen_attention(*qkv.detach().unbind(1), layout, 0.0)
    ref = bert_module._padded_grid_attention(qkv.detach(), layout, 0.0)
    report["flash_dropout_runs"] = bool(torch.isfinite(qkv.grad).all())
    report["flash_vs_grid_bf16_rel"] = rel(plain, ref)
    # The unpadded forward with the lengths known on the host waits for nothing.
    try:
        torch.cuda.set_sync_debug_mode("error")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            unpadded(ids, types, mask, seq_lengths=host_lengths)
        report["unpadded_forward_sync_free"] = True
    except RuntimeError as e:
        report["unpadded_forward_sync_free"] = f"no: {e}"[:300]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    # CUDA-graph replay of the padded forward
    reference.eval()
    graphs = CudaGraphForward(reference, lambda m, x: m(**x)[0], torch.bfloat16)
    batch = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}
    with torch.inference_mode():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            eager = reference(**batch)[0]
        replayed = graphs(batch).clone()  # the graph applies its own autocast
        replayed2 = graphs({k: v.clone() for k, v in batch.items()}).clone()
    report["cuda_graph_vs_eager_bf16_rel"] = rel(replayed[real], eager[real])
    report["cuda_graph_replay_repeatable"] = bool(torch.equal(replayed, replayed2))
    return report


# ---- the suite (parent process) ---------------------------------------------------------------


def _fmt(x, spec: str, unit: str = "") -> str:
    return "-" if x is None else format(x, spec) + unit


def table(rows: list[dict]) -> str:
    lines = ["| case | target | ours seq/s | HF seq/s | speedup | ours MFU | HF MFU | ours mem GB "
             "| HF mem GB | real tokens | max diff vs HF | p50 ms ours / HF |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['target']} | failed: {r['error']} |||||||||| |")
            continue
        ours, hf = r["bertforge"], r.get("hf", {})
        lines.append(
            f"| {r['case']} | {r['target']} | {ours['seq_per_s']:.1f} | {_fmt(hf.get('seq_per_s'), '.1f')} "
            f"| {_fmt(r.get('speedup_vs_hf'), '.2f', 'x')} | {100 * ours['mfu']:.1f}% "
            f"| {_fmt(hf.get('mfu') and 100 * hf['mfu'], '.1f', '%')} | {ours['peak_memory_gb']:.1f} "
            f"| {_fmt(hf.get('peak_memory_gb'), '.1f')} | {100 * r['real_token_fraction']:.0f}% "
            f"| {_fmt(r.get('max_abs_diff_vs_hf'), '.2e')} | {ours['step_ms_p50']:.1f} / "
            f"{_fmt(hf.get('step_ms_p50'), '.1f')} |")
    return "\n".join(lines)


def header(rows: list[dict]) -> str:
    first = next((r for r in rows if "error" not in r), None)
    if first is None:
        return "# GPU suite\n"
    return (f"# GPU suite: {first['device']}, torch {first['torch']}, transformers "
            f"{first.get('transformers', '-')}\n\nbf16 autocast unless the case says otherwise; the matmul "
            f"ceiling is measured in each run, in its precision ({first['matmul_peak']}: "
            f"{first['matmul_peak_tflops']:.0f} TFLOP/s in the first); FLOPs: {first['flops_counted']}; "
            f"memory: {first['memory_counted']}.\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu_suite_out"))
    parser.add_argument("--only", nargs="*", help="case names (and/or 'sanity') to run")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--budget_s", type=float, default=540.0,
                        help="start no case after this many seconds (the device call's limit is 600)")
    parser.add_argument("--case_timeout_s", type=float, default=240.0)
    parser.add_argument("--squad_file")
    parser.add_argument("--vocab_file")
    parser.add_argument("--smoke", action="store_true",
                        help="run the cases on the CPU with a tiny model (checks the script, not speed)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # child mode: run one case
    args = parser.parse_args()
    if args.list:
        print("\n".join(["sanity", *CASES]))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.case:
        result = sanity() if args.case == "sanity" else run_case(args.case, data_paths(args), args.smoke)
        print("RESULT " + json.dumps(result))
        return 0
    return run_suite(args, out)


def run_suite(args, out: Path) -> int:
    names = args.only or (list(CASES) if args.smoke else ["sanity", *CASES])
    unknown = [n for n in names if n != "sanity" and n not in CASES]
    if unknown:
        raise SystemExit(f"unknown cases {unknown}; --list names them")
    t0 = time.monotonic()
    rows: list[dict] = []
    log = (out / "gpu_suite.log").open("a")
    for name in names:
        left = args.budget_s - (time.monotonic() - t0)
        if left < 30:
            rows.append({"case": name, "target": CASES.get(name, ("", "sanity"))[1],
                         "error": "skipped: time budget spent"})
            continue
        cmd = [sys.executable, __file__, "--case", name, "--out", str(out)]
        if args.squad_file:
            cmd += ["--squad_file", args.squad_file]
        if args.vocab_file:
            cmd += ["--vocab_file", args.vocab_file]
        if args.smoke:
            cmd.append("--smoke")
        started = time.monotonic()
        print(f"== {name} (budget left {left:.0f} s)", flush=True)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=min(args.case_timeout_s, left))
            output, status = proc.stdout + proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as e:
            output, status = f"{e.stdout or ''}{e.stderr or ''}", "timeout"
        log.write(f"==== {name}: exit {status} after {time.monotonic() - started:.0f} s\n{output}\n")
        log.flush()
        found = [line for line in output.splitlines() if line.startswith("RESULT ")]
        if not found:
            tail = output.strip().splitlines()[-3:]
            print("\n".join(tail), flush=True)
            rows.append({"case": name, "target": CASES.get(name, ("", "sanity"))[1],
                         "error": f"exit {status}: {' / '.join(tail)[-300:]}"})
            continue
        result = json.loads(found[-1][len("RESULT "):])
        result["seconds"] = time.monotonic() - started
        if name == "sanity":
            (out / "sanity.json").write_text(json.dumps(result, indent=2))
            print(json.dumps(result, indent=2), flush=True)
            continue
        with (out / "gpu_suite.jsonl").open("a") as f:
            f.write(json.dumps(result) + "\n")
        rows.append(result)
        ours = result["bertforge"]
        summary = (f"   ours {ours['seq_per_s']:.1f} seq/s, MFU {100 * ours['mfu']:.1f}%"
                   + (f"; HF {result['hf']['seq_per_s']:.1f}; speedup {result['speedup_vs_hf']:.2f}x"
                      if "hf" in result else "") + f"  ({result['seconds']:.0f} s)")
        print(summary, flush=True)
        (out / "gpu_suite.md").write_text(header(rows) + "\n" + table(rows) + "\n")
    (out / "gpu_suite.md").write_text(header(rows) + "\n" + table(rows) + "\n" + _profiles(rows))
    print("\n" + header(rows) + "\n" + table(rows), flush=True)
    return 0


def _profiles(rows: list[dict]) -> str:
    parts = []
    for r in rows:
        for name, p in (r.get("profile") or {}).items():
            parts.append(f"\n## top kernels: {r['case']}, {name}\n\n```\n{p['top']}\n```\n")
    return "".join(parts)


if __name__ == "__main__":
    sys.exit(main())
