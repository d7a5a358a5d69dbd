"""The GPU suite's first case: before any speed is worth reading, do the fast paths compute the
right function, train, compile once and never make the host wait?

Each check returns a dict with `ok` (True, False, or None when it does not apply to the device)
and what it measured; one check failing does not stop the others.

- `compiled_training`: the compiled, unpadded model trains with dropout (FlashAttention's varlen
  kernel in bf16 on NVIDIA GPUs): finite losses and gradient norms over steps of changing
  lengths, and dynamo's counts (frames, graphs, graph breaks, recompilations).
- `matches_padded`: with dropout 0, the compiled unpadded path against the eager padded path,
  both in the run's precision, each against fp32: the unpadded path may not be less accurate.
- `sync_free_steps`: the whole training step (forward, backward, clipping, optimizer) for the
  SQuAD loss with AdamW and the pretraining loss with LAMB in bf16, and fp16 with loss scaling,
  under `torch.cuda.set_sync_debug_mode("error")`, each configuration with its own result; one
  that reads is run again from a fresh state under `HostSyncRecorder`, which names the op (fp16
  with LAMB is expected to read once: GradScaler's found_inf).
- `flash_kernel` (CUDA): the varlen kernel against SDPA on the padded grid in fp32; dropout
  applied and differentiable.
- `cuda_graph` (CUDA): a forward replayed from a CUDA graph equals the eager forward.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager

import torch
import torch.nn.functional as F

import bertforge
from bertforge.bench.meter import compile_counters
from bertforge.bench.syncs import HostSyncRecorder
from bertforge.config import BertConfig, resolve_config
from bertforge.model import attention
from bertforge.model import build_model
from bertforge.runconfig import RuntimeArgs, TrainArgs
from bertforge.train.loop import TrainState, build_train_state, to_device, train_step
from bertforge.train.runtime import Runtime


@dataclass
class SanityArgs:
    """What the checks run on: the architecture's layer shapes with few layers (a layer's
    graph is what compiles; more layers repeat it)."""

    device: str = "cuda"
    bert_model: str = "large"
    """Preset whose layer shapes are checked (the suite's cases then reuse the compiled layer)."""
    layers: int = 2
    batch: int = 8
    seq: int = 384
    steps: int = 3
    """Training steps per check, each with other sequence lengths."""
    precision: str = "bf16"
    seed: int = 0


def run_sanity(args: SanityArgs, after_check: Callable[[dict], None] | None = None) -> dict:
    """Every check, in order; returns {check name: result} plus what it ran on. `after_check`
    gets the report so far after each check (a run cut short keeps what it checked)."""
    device = torch.device(args.device)
    report: dict = {"torch": torch.__version__, "device": str(device),
                    "flash_varlen_available": attention._flash_varlen_on(device),
                    "flash_op_schema": str(torch.ops.aten._flash_attention_forward.default._schema)}
    checks: dict[str, Callable[[SanityArgs], dict]] = {
        "compiled_training": compiled_training, "matches_padded": matches_padded,
        "sync_free_steps": sync_free_steps, "flash_kernel": flash_kernel, "cuda_graph": cuda_graph}
    for name, check in checks.items():
        try:
            report[name] = check(args)
        except Exception as e:  # noqa: BLE001 - one broken check must not hide the others
            report[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:500],
                            "where": where(e)}
        if after_check is not None:
            after_check(report)
    report["ok"] = all(r.get("ok") is not False for r in report.values() if isinstance(r, dict))
    return report


# ---- inputs ----------------------------------------------------------------------------------


def _config(args: SanityArgs, dropout: float) -> BertConfig:
    return dataclasses.replace(resolve_config(args.bert_model), num_hidden_layers=args.layers,
                               hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)


def host_batch(config: BertConfig, head: str, batch: int, seq: int, seed: int) -> dict:
    """Random ids with ragged lengths (one full row, the rest padded), labels for `head`, and
    the host-known `seq_lengths`, in host memory as a loader hands them over."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(seq // 4, seq + 1, (batch,), generator=g)
    lengths[0] = seq
    lengths[-1] = min(int(lengths[-1]), seq - 1)  # at least one padded row: the unpadded path runs
    mask = (torch.arange(seq)[None] < lengths[:, None]).long()
    out = {"input_ids": torch.randint(1, config.vocab_size, (batch, seq), generator=g) * mask,
           "token_type_ids": (torch.arange(seq)[None] >= lengths[:, None] // 2).long() * mask,
           "attention_mask": mask, "seq_lengths": lengths.tolist()}
    if head == "qa":
        start = (torch.rand(batch, generator=g) * lengths).long()
        out.update(start_positions=start, end_positions=torch.minimum(start + 2, lengths - 1))
        return out
    masked = 20 * seq // 128
    # distinct positions inside each sequence, never [CLS]
    positions = torch.stack([torch.randperm(int(n) - 1, generator=g)[:masked] + 1 for n in lengths])
    out.update(masked_lm_positions=positions.sort(dim=1).values,
               masked_lm_ids=torch.randint(1, config.vocab_size, (batch, masked), generator=g),
               masked_lm_weights=torch.ones(batch, masked),
               next_sentence_labels=torch.randint(0, 2, (batch,), generator=g))
    return out


def _loss(head: str):
    from bertforge.tasks.pretraining import PretrainLoss
    from bertforge.tasks.squad import SpanLoss

    return SpanLoss() if head == "qa" else PretrainLoss()


def _train_state(args: SanityArgs, head: str, precision: str, optimizer: str, dropout: float,
                 compiled: bool, unpad: bool = True) -> tuple[TrainState, Runtime]:
    runtime = Runtime(RuntimeArgs(device=args.device, precision=precision))
    torch.manual_seed(args.seed)
    with torch.device(runtime.device):
        model = build_model(_config(args, dropout), head, unpad=unpad)
    if compiled:
        model.compile_layers()
    state = build_train_state(model, TrainArgs(optimizer=optimizer, learning_rate=1e-5, max_steps=100,
                                               warmup_proportion=0.0), runtime, 100)
    return state, runtime


def where(e: BaseException) -> str:
    """The innermost frame of bertforge's own code in an exception's traceback (where our code
    asked for what failed): "path:line source"."""
    package = Path(bertforge.__file__).resolve().parent
    frames = [f for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).resolve().is_relative_to(package)]
    return f"{frames[-1].filename}:{frames[-1].lineno} {frames[-1].line}" if frames else ""


# ---- the checks ------------------------------------------------------------------------------


def compiled_training(args: SanityArgs) -> dict:
    state, runtime = _train_state(args, "qa", args.precision, "adamw", 0.1, compiled=True)
    config = state.model.config
    before = compile_counters()
    losses, norms = [], []
    for step in range(args.steps):
        out = train_step(state, _loss("qa"), [host_batch(config, "qa", args.batch, args.seq, args.seed + step)])
        losses.append(out.loss.detach())
        norms.append(out.grad_norm.detach())
    after = compile_counters()
    losses_f = [float(x) for x in losses]
    norms_f = [float(x) for x in norms]
    counts = {k: after[k] - before.get(k, 0) for k in after}
    return {"ok": all(map(math.isfinite, losses_f + norms_f)) and counts.get("graph_breaks", 0) == 0
            and counts.get("recompiles", 0) == 0,
            "losses": losses_f, "grad_norms": norms_f, "compile": counts,
            "attention": _attention_kind(runtime, args.precision, config)}


def _attention_kind(runtime: Runtime, precision: str, config: BertConfig) -> str:
    q = torch.empty(0, config.num_attention_heads, config.head_dim, dtype=runtime.autocast_dtype or torch.float32)
    if attention._flash_varlen_on(runtime.device) and attention._flash_varlen_supports(q):
        return "flash varlen"
    return "padded grid (compiled)"


def matches_padded(args: SanityArgs) -> dict:
    """Relative error against fp32 (padded, eager) of the start logits and the gradients of the
    span loss, per path, in training mode with dropout 0."""
    from bertforge.tasks.squad import span_logits

    batch = host_batch(_config(args, 0.0), "qa", args.batch, args.seq, args.seed)
    found = {}
    for name, precision, unpad in (("fp32_padded", "fp32", False), (f"{args.precision}_padded", args.precision, False),
                                   (f"{args.precision}_unpadded_compiled", args.precision, True)):
        state, runtime = _train_state(args, "qa", precision, "adamw", 0.0, compiled=unpad, unpad=unpad)
        data = to_device(batch, runtime.device)
        with runtime.autocast():
            start, end = span_logits(state.model, data)
        loss = (F.cross_entropy(start, data["start_positions"]) + F.cross_entropy(end, data["end_positions"])) / 2
        loss.backward()
        real = data["attention_mask"].bool()
        found[name] = (start.detach()[real], torch.cat([p.grad.flatten() for p in state.model.parameters()]))
    out_ref, grad_ref = found.pop("fp32_padded")
    results = {name: {"out_rel": _rel(out, out_ref), "grad_rel": _rel(grad, grad_ref)}
               for name, (out, grad) in found.items()}
    padded, unpadded = results.values()
    ok = all(unpadded[k] <= 2 * padded[k] + 1e-3 for k in ("out_rel", "grad_rel"))
    return {"ok": ok, "vs_fp32": results,
            "rule": "the unpadded compiled path's error against fp32 is at most 2x the padded path's + 1e-3"}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@dataclass(frozen=True)
class SyncCheck:
    """One configuration of the hot training step, and the host reads it is allowed."""

    head: str
    optimizer: str
    precision: str
    compiled: bool
    """fp16 runs eager: the optimizer and the loss scaler are what differ; the layers are bf16's."""
    expected_reads: tuple[str, ...] = ()
    """Reads that are known and accepted, as HostSyncRecorder names them."""

    @property
    def name(self) -> str:
        return f"{self.head}_{self.optimizer}_{self.precision}"


SYNC_CHECKS = (SyncCheck("qa", "adamw", "bf16", True), SyncCheck("pretraining", "lamb", "bf16", True),
               SyncCheck("qa", "adamw", "fp16", False),
               # GradScaler reads found_inf to skip an optimizer that cannot skip on its own.
               SyncCheck("pretraining", "lamb", "fp16", False, ("aten._local_scalar_dense.default",)))


def sync_check(make_state: Callable[[], tuple[TrainState, Runtime]], check: SyncCheck, batches: list[dict],
               watch: Callable[[], ContextManager], warmup: int = 2) -> dict:
    """`warmup` untimed steps (compilation, optimizer state), then two steps under `watch`, which
    raises at the first host read. After a raise the step was left half done (fp16: the loss
    scaler unscaled the gradients and never reached update(), so the next unscale_ would raise
    on its own), so a fresh state runs one step under HostSyncRecorder to name the reads. The
    configuration passes when it read nothing, or only its expected reads."""
    state, runtime = make_state()
    for b in batches[:warmup]:
        train_step(state, _loss(check.head), [b])
    runtime.synchronize()
    try:
        with watch():
            for b in batches[2:4]:
                train_step(state, _loss(check.head), [b])
        return {"ok": True}
    except (RuntimeError, NotImplementedError) as e:
        result: dict = {"error": str(e)[:300], "where": where(e)}
    state, runtime = make_state()
    for b in batches[:warmup]:
        train_step(state, _loss(check.head), [b])
    recorder = HostSyncRecorder()
    try:
        with recorder:
            train_step(state, _loss(check.head), [batches[4]])
    except (RuntimeError, NotImplementedError) as e:  # where a read cannot return (the meta device)
        result["recorder_stopped_at"] = where(e)
    result["recorded"] = recorder.syncs
    result["ok"] = bool(recorder.syncs) and all(op in check.expected_reads for op in recorder.syncs)
    if check.expected_reads:
        result["expected"] = list(check.expected_reads)
    return result


@contextlib.contextmanager
def cuda_sync_errors():
    """CUDA raises at any synchronising call while inside."""
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def sync_free_steps(args: SanityArgs) -> dict:
    """CUDA: each configuration of SYNC_CHECKS under set_sync_debug_mode("error"), with nothing
    else watching (a Python dispatch mode would change what the compiled layers run); one
    configuration's read does not spoil the others' results. Elsewhere the steps run unwatched:
    the CPU has no device to wait for (tests/train/test_step_syncs.py checks the step on the
    meta device)."""
    results = {}
    cuda = torch.device(args.device).type == "cuda"
    for check in SYNC_CHECKS:
        def make_state(check: SyncCheck = check) -> tuple[TrainState, Runtime]:
            return _train_state(args, check.head, check.precision, check.optimizer, 0.1, check.compiled)

        config = _config(args, 0.1)
        batches = [host_batch(config, check.head, args.batch, args.seq, args.seed + i) for i in range(5)]
        if not cuda:
            state, _ = make_state()
            for b in batches[:4]:
                train_step(state, _loss(check.head), [b])
            results[check.name] = {"ok": None, "note": f"no device to wait for on {args.device}"}
            continue
        batches = [{k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in b.items()} for b in batches]
        try:
            results[check.name] = sync_check(make_state, check, batches, cuda_sync_errors)
        except Exception as e:  # noqa: BLE001 - one configuration's failure must not hide the others'
            results[check.name] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:300], "where": where(e)}
    expected = {c.name: list(c.expected_reads) for c in SYNC_CHECKS if c.expected_reads}
    return {"ok": all(r["ok"] is not False for r in results.values()) if cuda else None, "steps": results,
            "expected_reads": expected}


def flash_kernel(args: SanityArgs) -> dict:
    device = torch.device(args.device)
    if not attention._flash_varlen_on(device):
        return {"ok": None, "skipped": f"no FlashAttention varlen kernel on {device}"}
    config = resolve_config(args.bert_model)
    g = torch.Generator(device=device).manual_seed(args.seed)
    lengths = [args.seq, args.seq // 2 + 3, 17, args.seq - 1]
    mask = (torch.arange(args.seq)[None] < torch.tensor(lengths)[:, None]).to(device)
    layout = attention.Unpadded.from_mask(mask.long(), lengths)
    shape = (sum(lengths), 3, config.num_attention_heads, config.head_dim)
    result = {}
    for dtype in (torch.bfloat16, torch.float16):
        qkv = torch.randn(shape, device=device, generator=g, dtype=torch.float32)
        exact = attention._padded_grid_attention(qkv, layout, 0.0)
        got = attention._flash_varlen_attention(*qkv.to(dtype).unbind(1), layout, 0.0)
        x = qkv.to(dtype).requires_grad_()
        dropped = attention._flash_varlen_attention(*x.unbind(1), layout, 0.1)
        dropped.float().square().sum().backward()
        result[str(dtype).removeprefix("torch.")] = {
            "rel_vs_fp32_grid": _rel(got, exact),
            "dropout_changes_output": bool((dropped.detach() != got).any()),
            "dropout_grads_finite": bool(torch.isfinite(x.grad).all())}
    ok = all(r["rel_vs_fp32_grid"] < 2e-2 and r["dropout_changes_output"] and r["dropout_grads_finite"]
             for r in result.values())
    return {"ok": ok, **result}


def cuda_graph(args: SanityArgs) -> dict:
    if torch.device(args.device).type != "cuda":
        return {"ok": None, "skipped": "CUDA graphs need CUDA"}
    from bertforge.infer import CudaGraphForward

    runtime = Runtime(RuntimeArgs(device=args.device, precision=args.precision))
    torch.manual_seed(args.seed)
    with torch.device(runtime.device):
        model = build_model(_config(args, 0.0), "qa", unpad=False).eval()
    batch = host_batch(model.config, "qa", args.batch, args.seq, args.seed)
    data = {k: batch[k].to(runtime.device) for k in ("input_ids", "token_type_ids", "attention_mask")}
    graphs = CudaGraphForward(model, lambda m, x: m(**x)[0], runtime.autocast_dtype)
    real = data["attention_mask"].bool()
    with torch.inference_mode():
        with runtime.autocast():
            eager = model(**data)[0]
        replayed = graphs(data).clone()
        again = graphs({k: v.clone() for k, v in data.items()}).clone()
    rel = _rel(replayed[real], eager[real])
    return {"ok": rel < 1e-2 and torch.equal(replayed, again), "rel_vs_eager": rel,
            "replay_repeatable": bool(torch.equal(replayed, again))}


__all__ = ["SanityArgs", "SyncCheck", "SYNC_CHECKS", "run_sanity", "sync_check", "host_batch", "where"]
