"""The models under test and how one step runs each.

A training step is `bertforge.train.loop.train_step`, the Trainer's own, for both models: forward
and loss under autocast, backward (fp16 loss scaling), clipping at 1.0, an AdamW (fused on CUDA)
or LAMB step, the schedule. transformers' model enters it through a loss adapter that returns its
mean loss. An inference step is a forward under `torch.inference_mode`."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

import dataclasses
import statistics

import torch
from torch import Tensor, nn

from bertforge.bench.config import BenchmarkArgs
from bertforge.bench.inputs import Batch
from bertforge.bench.meter import MemoryMeter, StepTimer
from bertforge.config import BertConfig
from bertforge.errors import ConfigError
from bertforge.model import build_model
from bertforge.runconfig import TrainArgs
from bertforge.tasks.common import model_inputs
from bertforge.train.loop import LossFn, StepOutput, TrainState, build_train_state, to_device, train_step
from bertforge.train.runtime import Runtime

# The optimizer settings of every benchmarked training step (fine-tuning's; the optimizer itself
# is BenchmarkArgs.optimizer); the schedule is far from its end, so the learning rate never reaches 0.
BENCH_TRAIN = TrainArgs(learning_rate=1e-5, weight_decay=0.01, max_grad_norm=1.0, warmup_proportion=0.0,
                        max_steps=1_000_000)


@dataclass
class Contender:
    """One model under test."""

    name: str
    model: nn.Module
    loss_fn: LossFn
    forward: Callable[[dict], Any]  # inference: host batch data -> outputs
    compiled: bool
    unpad: bool
    state: TrainState | None = None
    timer: StepTimer | None = None
    losses: list[Tensor] = field(default_factory=list)
    peak_memory_gb: float | None = None
    optimizer: dict = field(default_factory=dict)  # the optimizer step alone (see optimizer_step_cost)
    first_step_seconds: float | None = None
    compile_stats: dict = field(default_factory=dict)  # torch.compile counters during warm-up


class HFLoss:
    """transformers' mean loss as one loss term with denominator 1."""

    def denominators(self, batch: dict) -> dict[str, float]:
        return {"loss": 1.0}

    def loss_sums(self, model: nn.Module, batch: dict) -> dict[str, Tensor]:
        return {"loss": model(**batch["hf"]).loss}


def ours(cfg: BenchmarkArgs, runtime: Runtime, config: BertConfig, ckpt) -> Contender:
    from bertforge.checkpoint import load_into
    from bertforge.tasks.pretraining import PretrainLoss
    from bertforge.tasks.squad import SpanLoss, span_logits

    head = "qa" if cfg.task == "qa" else "pretraining"
    unpad = cfg.runtime.unpad and not cfg.cuda_graphs
    with torch.device(runtime.device):  # initialise on the device: BERT-large in a blink
        model = build_model(config, head, unpad=unpad)
    if ckpt is not None:
        load_into(model, ckpt)
    if cfg.task == "qa":
        loss_fn: LossFn = SpanLoss()

        def forward(data: dict):
            return span_logits(model, data)
    else:
        loss_fn = PretrainLoss()

        def forward(data: dict):
            return model(**model_inputs(data, "masked_lm_positions")).mlm_logits
    if cfg.cuda_graphs:
        forward = _graphed(model, cfg, runtime)
    return Contender("bertforge", model, loss_fn, forward, compiled=runtime.compile, unpad=unpad)


def _graphed(model: nn.Module, cfg: BenchmarkArgs, runtime: Runtime) -> Callable[[dict], Any]:
    """bertforge's forward replayed from CUDA graphs: padded layout, no mask for batches the
    host knows have no padding (so attention takes the flash kernel)."""
    from bertforge.infer import CudaGraphForward

    def qa(m: nn.Module, x: dict[str, Tensor]):
        return m(**x)

    def pretraining(m: nn.Module, x: dict[str, Tensor]):
        return m(**x).mlm_logits

    graphs = CudaGraphForward(model, qa if cfg.task == "qa" else pretraining, runtime.autocast_dtype)

    def forward(data: dict):
        full = all(n == cfg.seq_length for n in data["seq_lengths"])
        keep = ["input_ids", "token_type_ids"] + ([] if full else ["attention_mask"])
        keep += ["masked_lm_positions"] if cfg.task == "pretraining" else []
        return graphs({k: data[k] for k in keep})
    return forward


def hf(cfg: BenchmarkArgs, runtime: Runtime, config: BertConfig, our_model: nn.Module) -> Contender:
    try:
        import transformers
    except ImportError:
        raise ConfigError("--compare-hf needs Hugging Face transformers: pip install transformers") from None
    from bertforge.checkpoint import native_to_hf

    cls = transformers.BertForQuestionAnswering if cfg.task == "qa" else transformers.BertForPreTraining
    model = cls(transformers.BertConfig(**config.to_dict(), attn_implementation="sdpa"))
    if model.config._attn_implementation != "sdpa":
        raise ConfigError(f"transformers {transformers.__version__} did not take attn_implementation='sdpa'")
    # The same weights as ours: outputs can be compared, and nothing differs but the code.
    result = model.load_state_dict(native_to_hf(our_model.state_dict()), strict=False)
    untied = [k for k in result.missing_keys if not k.startswith("cls.predictions.decoder.")]
    if untied or result.unexpected_keys:
        raise ConfigError(f"weights do not map onto transformers' model: missing {untied}, "
                          f"unexpected {result.unexpected_keys}")
    model.to(runtime.device)
    call = torch.compile(model) if cfg.hf_compile else model

    def forward(data: dict):
        out = call(**data["hf"])
        return out.start_logits if cfg.task == "qa" else out.prediction_logits
    return Contender("hf", call, HFLoss(), forward, compiled=cfg.hf_compile, unpad=False)


def agreement(a: Contender, b: Contender, batch: Batch, cfg: BenchmarkArgs, runtime: Runtime) -> float:
    """Max |difference| of the two models' eval-mode outputs on one batch, at real positions
    (QA: start logits) or masked positions (pretraining: MLM logits)."""
    a.model.eval()
    b.model.eval()
    data = to_device(batch.data, runtime.device)
    with torch.inference_mode(), runtime.autocast():
        ours_out = a.model(**model_inputs(data, *(("masked_lm_positions",) if cfg.task == "pretraining" else ())))
        theirs = b.model(**{k: data["hf"][k] for k in ("input_ids", "token_type_ids", "attention_mask")})
        if cfg.task == "qa":
            real = data["attention_mask"].bool()
            diff = ours_out[0].float()[real] - theirs.start_logits.float()[real]
        else:
            pos = data["masked_lm_positions"]
            picked = torch.gather(theirs.prediction_logits, 1,
                                  pos.unsqueeze(-1).expand(-1, -1, theirs.prediction_logits.shape[-1]))
            diff = ours_out.mlm_logits.float() - picked.float()
    return float(diff.abs().max())


def prepare(c: Contender, cfg: BenchmarkArgs, runtime: Runtime) -> None:
    c.timer = StepTimer(runtime.device)
    if cfg.mode == "train":
        c.model.train()
        train = dataclasses.replace(BENCH_TRAIN, optimizer=cfg.optimizer)
        c.state = build_train_state(c.model, train, runtime, train.max_steps)
    else:
        c.model.eval()


def optimizer_step_cost(c: Contender, batch: Batch, runtime: Runtime, reps: int = 5) -> dict:
    """What the optimizer alone costs a training step: gradient clipping and the optimizer step,
    timed over `reps` repetitions on the gradients of one batch (median ms), and the memory it
    adds at its peak (GB; LAMB's per-tensor trust ratios need temporaries). Changes the weights:
    run it after the timed steps."""
    state = c.state
    with runtime.autocast():
        terms = c.loss_fn.loss_sums(state.model, to_device(batch.data, runtime.device))
    sum(t.float() for t in terms.values()).backward()
    timer = StepTimer(runtime.device)
    meter = MemoryMeter(runtime.device)
    for i in range(reps + 1):  # the first one untimed: the optimizer state exists already, kernels may not
        if i == 1:
            runtime.synchronize()
            meter.start()
        with timer.step(record=i > 0):
            torch.nn.utils.clip_grad_norm_(state.params, BENCH_TRAIN.max_grad_norm, foreach=None)
            state.optimizer.step()
    runtime.synchronize()
    extra = meter.extra_since_start()
    state.optimizer.zero_grad(set_to_none=True)
    return {"name": type(state.optimizer).__name__, "ms_p50": statistics.median(timer.seconds()) * 1e3,
            "extra_memory_gb": extra}


def step(c: Contender, batch: Batch, cfg: BenchmarkArgs, runtime: Runtime) -> None:
    if cfg.mode == "infer":
        graphed = cfg.cuda_graphs and c.name == "bertforge"  # the graph holds its own autocast
        with torch.inference_mode(), (nullcontext() if graphed else runtime.autocast()):
            c.forward(to_device(batch.data, runtime.device))
        return
    out: StepOutput = train_step(c.state, c.loss_fn, [batch.data])
    c.losses.append(out.loss.detach())
