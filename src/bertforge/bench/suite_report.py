"""The GPU suite's report (gpu_suite.md): what ran on what, a table of the benchmark cases, the
targets met or not, and per case what a reader needs to diagnose it (sanity checks, failures with
the innermost bertforge frame, top kernels, step time against tokens, the pretraining check)."""

from __future__ import annotations

import json

from bertforge.bench.suite import BY_NAME, CASES


def _fmt(x, spec: str, unit: str = "") -> str:
    return "-" if x is None else format(x, spec) + unit


def _compile(c: dict | None) -> str:
    if not c:
        return "-"
    return f"{c.get('graphs', '-')}/{c.get('graph_breaks', '-')}/{c.get('recompiles', '-')}"


def verdict(r: dict) -> str:
    met = BY_NAME[r["case"]].met(r) if r["case"] in BY_NAME else None
    if met is None:
        return ""
    if r.get("smoke"):
        return "(smoke: no verdict)"
    return "met" if met else "NOT met"


def _optimizer(ours: dict) -> str:
    o = ours.get("optimizer")
    return "-" if not o else f"{o['name']} {o['ms_p50']:.1f} ({100 * o['share_of_step']:.0f}%)"


def bench_table(rows: list[dict]) -> str:
    lines = ["| case | target | verdict | ours seq/s | HF seq/s | speedup | ours MFU | first step s | "
             "graphs/breaks/recompiles | host ms | device ms (p50) | HF device ms | optimizer ms (share) | "
             "peak GB ours / HF | real tokens | max diff vs HF |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("kind") not in (None, "bench"):
            continue
        if "bertforge" not in r:
            lines.append(f"| {r['case']} | {r.get('target', '')} | {failure(r)} " + "|" * 13 + " |")
            continue
        ours, hf = r["bertforge"], r.get("hf", {})
        lines.append(
            f"| {r['case']} | {r.get('target') or '-'} | {verdict(r) or '-'} | {ours['seq_per_s']:.1f} "
            f"| {_fmt(hf.get('seq_per_s'), '.1f')} | {_fmt(r.get('speedup_vs_hf'), '.2f', 'x')} "
            f"| {100 * ours['mfu']:.1f}% | {_fmt(ours.get('first_step_s'), '.1f')} | {_compile(ours.get('compile'))} "
            f"| {ours['host_ms_p50']:.1f} | {ours['step_ms_p50']:.1f} | {_fmt(hf.get('step_ms_p50'), '.1f')} "
            f"| {_optimizer(ours)} "
            f"| {_fmt(ours.get('peak_memory_gb'), '.2f')} / {_fmt(hf.get('peak_memory_gb'), '.2f')} "
            f"| {100 * r['real_token_fraction']:.0f}% | {_fmt(r.get('max_abs_diff_vs_hf'), '.2e')} |")
    return "\n".join(lines)


def failure(r: dict) -> str:
    """Why a case has no result: skipped (why), or its error and where in bertforge it rose."""
    if "skipped" in r:
        return f"skipped: {r['skipped']}"
    text = r.get("error") or "no result"
    return f"{text} (at {r['where']})" if r.get("where") else text


def header(rows: list[dict]) -> str:
    first = next((r for r in rows if "device" in r), None)
    if first is None:
        return "# GPU suite\n"
    bench = next((r for r in rows if "bertforge" in r), None)
    text = (f"# GPU suite: {first['device']}, torch {first.get('torch', '-')}, transformers "
            f"{(bench or first).get('transformers', '-')}\n\nbf16 autocast unless the case says otherwise; device ms: "
            f"CUDA events per step (host clock after a sync on the CPU); host ms: issuing one step, no sync; "
            f"optimizer ms: clipping + the optimizer step alone, and its share of a step.")
    if bench is not None:
        text += (f" MFU against a matrix product measured in each case's process ({bench['matmul_peak']}: "
                 f"{bench['matmul_peak_tflops']:.3g} TFLOP/s in the first); FLOPs: {bench['flops_counted']}; "
                 f"memory: {bench['memory_counted']}.")
    return text + "\n"


def targets(rows: list[dict]) -> str:
    lines = ["## Targets", ""]
    for case in CASES:
        if case.min_speedup is None:
            continue
        r = next((r for r in rows if r["case"] == case.name), None)
        state = "not run" if r is None else verdict(r) or failure(r)
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


def _json_block(title: str, value: dict, limit: int = 8000) -> str:
    return f"## {title}\n\n```json\n{json.dumps(value, indent=1)[:limit]}\n```\n"


def details(rows: list[dict]) -> str:
    parts = []
    fits = {r["case"]: step_fit(r) for r in rows if step_fit(r)}
    if fits:
        parts.append(_json_block("Step time against tokens per step (token budget question)", fits))
    for r in rows:
        kind = r.get("kind")
        if kind == "sanity":
            body = {k: v for k, v in r.items() if k not in ("case", "kind", "what")}
            parts.append(_json_block(f"sanity: {'ok' if r.get('ok') else 'FAILED'}", body))
        elif kind in ("pretraining", "accuracy"):
            parts.append(_json_block(r["case"], {k: v for k, v in r.items() if k not in ("case", "kind")}))
        elif "error" in r:
            parts.append(_json_block(f"{r['case']}: failed", {k: r.get(k) for k in (
                "error", "where", "first_attempt", "rerun_env", "output_tail") if r.get(k)}))
        for name, p in (r.get("profile") or {}).items():
            parts.append(f"## top kernels: {r['case']}, {name}\n\n```\n{p['top']}\n```\n")
    return "\n".join(parts)


def report(rows: list[dict]) -> str:
    return "\n\n".join([header(rows), bench_table(rows), targets(rows), details(rows)]) + "\n"


def summary_line(r: dict) -> str:
    """One line per case for the console."""
    if "error" in r or "skipped" in r:
        return failure(r)
    if r.get("kind") == "sanity":
        failed = [k for k, v in r.items() if isinstance(v, dict) and v.get("ok") is False]
        return "sanity ok" if r.get("ok") else f"sanity FAILED: {', '.join(failed)}"
    if r.get("kind") == "pretraining":
        return (f"pretraining works: {r.get('passes')} (SST-2 gain {_fmt(r.get('gain'), '+.2f')}, "
                f"spread {_fmt(r.get('spread'), '.2f')})")
    if r.get("kind") == "accuracy":
        return f"accuracy: exit {r.get('exit')}"
    ours = r["bertforge"]
    text = (f"ours {ours['seq_per_s']:.1f} seq/s, MFU {100 * ours['mfu']:.1f}%, first step "
            f"{ours['first_step_s']:.1f} s, peak {ours['peak_memory_gb']:.2f} GB")
    if "hf" in r:
        text += f"; HF {r['hf']['seq_per_s']:.1f} seq/s; speedup {r['speedup_vs_hf']:.2f}x {verdict(r)}"
    return text + f" ({r['seconds']:.0f} s)"


__all__ = ["report", "summary_line", "bench_table", "targets", "header", "step_fit", "verdict", "failure"]
