"""`bertforge benchmark`: training and inference speed, optionally side by side with Hugging Face
transformers in the same process, on the same device, inputs, precision and optimizer.

What one run does, in order:
1. measures the device's matrix-multiply ceiling in the run's precision (8192^3 on CUDA, 1024^3
   on the CPU), the denominator of MFU; again after the timed steps, keeping the better;
2. builds bertforge's model (and, with `compare_hf`, transformers' `BertForQuestionAnswering` or
   `BertForPreTraining` with `attn_implementation="sdpa"` and the same weights) and checks, in
   eval mode on the first batch, that both compute the same outputs;
3. warms each model up on its own (compilation happens here: the first step's time is reported;
   peak memory is read here);
4. times `steps` steps, alternating between the models step by step, so that a machine shared
   with other work slows both alike;
5. training: times the optimizer step alone (clipping + AdamW or LAMB) and the memory it adds;
6. optionally profiles a few more steps of each (`profile`): a Chrome trace file and a table of
   the top kernels.

A training step is the Trainer's `train_step` (see `bertforge.bench.contenders`). FLOPs are model
FLOPs counted on real tokens only (`bertforge.bench.meter`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from bertforge.bench import contenders as C
from bertforge.bench.config import BenchmarkArgs
from bertforge.bench.inputs import Batch, make_batches
from bertforge.bench.meter import (FLOPS_COUNTED, MemoryMeter, batch_flops, compile_counters, device_name,
                                   matmul_peak)
from bertforge.config import BertConfig, resolve_config
from bertforge.errors import ConfigError
from bertforge.train.runtime import DistInfo, Runtime, seed_everything

log = logging.getLogger(__name__)


def _model_config(cfg: BenchmarkArgs):
    """(config, checkpoint or None)."""
    if cfg.model.init_checkpoint:
        from bertforge.checkpoint import load_checkpoint
        # its own config replaces the --bert_model preset; a config file given (--bert_config_file)
        # serves a checkpoint that has none beside it, as for the other commands
        given = cfg.model.bert_model if cfg.model.bert_model and Path(cfg.model.bert_model).is_file() else None
        ckpt = load_checkpoint(cfg.model.init_checkpoint, config=given)
        return ckpt.config, ckpt
    return resolve_config(cfg.model.bert_model), None


def warm_up(c: C.Contender, batches: list[Batch], cfg: BenchmarkArgs, runtime: Runtime) -> None:
    meter = MemoryMeter(runtime.device)
    meter.start()
    # At least one step even with --warmup 0: memory, optimizer state and compilation.
    for i, batch in enumerate(batches[:max(cfg.warmup, 1)]):
        t0 = time.perf_counter()
        C.step(c, batch, cfg, runtime)
        if i == 0:
            runtime.synchronize()
            c.first_step_seconds = time.perf_counter() - t0
    runtime.synchronize()
    c.peak_memory_gb = meter.peak_since_start(c.model)
    c.losses.clear()


def timed(contenders: list[C.Contender], batches: list[Batch], cfg: BenchmarkArgs, runtime: Runtime) -> None:
    for batch in batches[cfg.warmup:]:
        for c in contenders:  # alternate: a noisy neighbour slows both alike
            with c.timer.step():
                C.step(c, batch, cfg, runtime)
    runtime.synchronize()


def _profile(c: C.Contender, batches: list[Batch], cfg: BenchmarkArgs, runtime: Runtime, path: Path | None
             ) -> tuple[str, str | None]:
    """Profile 3 steps: (table of the top 15 kernels or CPU ops, Chrome trace path or None when
    none was asked for or it could not be written)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if runtime.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        for batch in batches[cfg.warmup:][:3]:
            C.step(c, batch, cfg, runtime)
        runtime.synchronize()
    key = "self_cpu_time_total" if runtime.device.type == "cpu" else "self_device_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=15)
    if path is None:
        return table, None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(path))
    except OSError as e:
        log.warning("could not write the trace to %s: %s", path, e.strerror or e)
        return table, None
    return table, str(path)


def _summary(c: C.Contender, batches: list[Batch], cfg: BenchmarkArgs, config: BertConfig,
             peak_tflops: float) -> dict:
    seconds = c.timer.seconds()
    timed = batches[cfg.warmup:]
    total = sum(seconds)
    sequences = sum(len(b.lengths) for b in timed)
    tokens = sum(sum(b.lengths) for b in timed)
    flops = sum(batch_flops(config, cfg, b.lengths, cfg.mode == "train") for b in timed)
    ms = np.array(seconds) * 1e3
    out = {"seq_per_s": sequences / total, "tokens_per_s": tokens / total,
           "step_ms_p50": float(np.percentile(ms, 50)), "step_ms_p99": float(np.percentile(ms, 99)),
           "model_tflops": flops / total / 1e12, "mfu": flops / total / 1e12 / peak_tflops,
           "host_ms_p50": float(np.percentile(np.array(c.timer.host_seconds) * 1e3, 50)),
           "first_step_s": c.first_step_seconds, "compile": c.compile_stats,
           "peak_memory_gb": c.peak_memory_gb, "compiled": c.compiled, "unpadded": c.unpad,
           "step_ms": [round(float(x), 3) for x in ms]}
    if cfg.mode == "infer":
        out["latency_ms_p50"], out["latency_ms_p99"] = out["step_ms_p50"], out["step_ms_p99"]
    else:
        losses = [float(x) for x in c.losses]
        out["loss_first"], out["loss_last"] = (losses[0], losses[-1]) if losses else (None, None)
        out["optimizer"] = {**c.optimizer, "share_of_step": c.optimizer["ms_p50"] / out["step_ms_p50"]}
    return out


def measure(cfg: BenchmarkArgs, profile_when: Callable[[dict], bool] | None = None) -> dict:
    """Run the benchmark; returns the results as a JSON-ready dict (see `run_benchmark`).
    `profile_when`: profile (as cfg.profile does) also when it returns True for the results,
    e.g. for a missed target: the top kernels of both sides come in the same run."""
    runtime = Runtime(cfg.runtime)
    if cfg.cuda_graphs and runtime.device.type != "cuda":
        raise ConfigError(f"--cuda_graphs needs a CUDA device, not {runtime.device}")
    config, ckpt = _model_config(cfg)
    if cfg.seq_length > config.max_position_embeddings:
        raise ConfigError(f"--seq_length {cfg.seq_length} exceeds the model's max_position_embeddings "
                          f"({config.max_position_embeddings})")
    seed_everything(cfg.seed)
    batches = make_batches(cfg, config, runtime.device, ckpt.vocab_file if ckpt else None)
    peak = matmul_peak(runtime.device, runtime.precision)

    contenders = [C.ours(cfg, runtime, config, ckpt)]
    if cfg.compare_hf:
        contenders.append(C.hf(cfg, runtime, config, contenders[0].model))
    result = _facts(cfg, config, runtime.device, runtime.precision, batches, peak)
    if cfg.compare_hf:
        import transformers
        result["transformers"] = transformers.__version__
        result["max_abs_diff_vs_hf"] = C.agreement(contenders[0], contenders[1], batches[0], cfg, runtime)
    if runtime.compile:
        contenders[0].model.compile_layers()
    for c in contenders:
        before = compile_counters()
        C.prepare(c, cfg, runtime)
        warm_up(c, batches, cfg, runtime)
        after = compile_counters()
        c.compile_stats = {k: after[k] - before.get(k, 0) for k in after}
    timed(contenders, batches, cfg, runtime)
    if cfg.mode == "train":
        for c in contenders:
            c.optimizer = C.optimizer_step_cost(c, batches[0], runtime)
    # The ceiling is the better of two measurements, before and after the timed steps: on a
    # shared machine one of them may have been slowed by other work.
    peak = max(peak, matmul_peak(runtime.device, runtime.precision), key=lambda p: p["tflops"])
    log.info("matmul ceiling %.1f TFLOP/s (%s %s)", peak["tflops"], peak["dtype"], peak["shape"])
    result.update(matmul_peak_tflops=peak["tflops"])
    for c in contenders:
        result[c.name] = _summary(c, batches, cfg, config, peak["tflops"])
    if cfg.compare_hf:
        result["speedup_vs_hf"] = result["bertforge"]["seq_per_s"] / result["hf"]["seq_per_s"]
    if cfg.profile or (profile_when is not None and profile_when(result)):
        result["profile"] = {}
        for c in contenders:
            path = Path(cfg.trace_file) if cfg.trace_file else None
            if path is not None and c.name == "hf":
                path = path.with_name(f"{path.stem}_hf{path.suffix}")
            table, written = _profile(c, batches, cfg, runtime, path)
            result["profile"][c.name] = {"trace_file": written, "top": table}
    return result


def _facts(cfg: BenchmarkArgs, config: BertConfig, device: torch.device, precision: str,
           batches: list[Batch], peak: dict) -> dict:
    """What was measured, on what, and how it is counted."""
    grid = len(batches) * cfg.batch_size * cfg.seq_length
    facts = {
        "device": device_name(device), "device_type": device.type, "torch": torch.__version__,
        "model": _describe(config, cfg), "mode": cfg.mode, "task": cfg.task, "data": cfg.data,
        "seq_length": cfg.seq_length, "batch_size": cfg.batch_size, "precision": precision,
        "steps": cfg.steps, "warmup": cfg.warmup,
        "real_token_fraction": sum(sum(b.lengths) for b in batches) / grid,
        "step_tokens": [sum(b.lengths) for b in batches[cfg.warmup:]],  # real tokens of each timed step
        "flops_counted": FLOPS_COUNTED, "matmul_peak": f"{peak['dtype']} {peak['shape']}",
        "memory_counted": MemoryMeter(device).kind + ", during this model's warm-up steps",
    }
    if cfg.task == "pretraining":
        facts["masked_positions"] = cfg.num_masked
    return facts


def _describe(config: BertConfig, cfg: BenchmarkArgs) -> str:
    name = cfg.model.init_checkpoint or cfg.model.bert_model
    return (f"{name} (L={config.num_hidden_layers} H={config.hidden_size} A={config.num_attention_heads} "
            f"V={config.vocab_size})")


def format_table(result: dict) -> str:
    """The human-readable report."""
    lines = [f"bertforge benchmark: {result['model']}",
             f"  {result['task']} {result['mode']}, {result['data']} data, seq {result['seq_length']} x "
             f"batch {result['batch_size']}, {result['precision']}, {result['device']} "
             f"(torch {result['torch']})",
             f"  real tokens: {100 * result['real_token_fraction']:.1f}% of the padded grid; FLOPs: "
             f"{result['flops_counted']}",
             f"  matmul ceiling measured in this run: {result['matmul_peak_tflops']:.1f} TFLOP/s "
             f"({result['matmul_peak']}); memory: {result['memory_counted']}", ""]
    infer = result["mode"] == "infer"
    head = (f"{'':14}{'seq/s':>10}{'tokens/s':>12}{'p50 ms':>10}{'p99 ms':>10}{'TFLOP/s':>10}{'MFU':>8}"
            f"{'mem GB':>9}")
    lines.append(head + ("" if infer else f"{'loss 1st':>10}"))
    for name in ("bertforge", "hf"):
        if name not in result:
            continue
        r = result[name]
        label = name if name == "bertforge" else "transformers"
        row = (f"{label:14}{r['seq_per_s']:10.1f}{r['tokens_per_s']:12.0f}{r['step_ms_p50']:10.2f}"
               f"{r['step_ms_p99']:10.2f}{r['model_tflops']:10.2f}{100 * r['mfu']:7.1f}%"
               f"{r['peak_memory_gb']:9.2f}")
        if not infer:
            row += f"{r['loss_first']:10.4f}" if r["loss_first"] is not None else f"{'-':>10}"
        lines.append(row)
    if not infer:
        lines.append("")
        for name in ("bertforge", "hf"):
            if name in result:
                o = result[name]["optimizer"]
                lines.append(f"optimizer step alone ({'bertforge' if name == 'bertforge' else 'transformers'}): "
                             f"{o['name']} {o['ms_p50']:.2f} ms, {100 * o['share_of_step']:.1f}% of a step, "
                             f"+{o['extra_memory_gb']:.2f} GB at its peak")
    if "speedup_vs_hf" in result:
        lines += ["", f"speedup vs transformers: {result['speedup_vs_hf']:.2f}x   "
                      f"(max |output difference| on batch 0, eval mode: {result['max_abs_diff_vs_hf']:.2e})"]
    for name, p in result.get("profile", {}).items():
        label = "bertforge" if name == "bertforge" else "transformers"
        where = f"trace written to {p['trace_file']}" if p["trace_file"] else "no trace file"
        lines += ["", f"profile of {label}: {where}", p["top"]]
    return "\n".join(lines)


def run_benchmark(cfg: BenchmarkArgs, dist_info: DistInfo = DistInfo()) -> dict:
    """The `bertforge benchmark` command: measure, then print a table (or one JSON object)."""
    if dist_info.enabled:
        raise ConfigError("the benchmark measures one device: run it without torchrun")
    result = measure(cfg)
    print(json.dumps(result) if cfg.json else format_table(result))
    return result
