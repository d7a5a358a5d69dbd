"""`bertforge benchmark`: training and inference speed, optionally side by side with Hugging Face
transformers in the same process, on the same device, inputs, precision and optimizer.

What one run does, in order:
1. measures the device's matrix-multiply ceiling in the run's precision (8192^3 on CUDA, 1024^3
   on the CPU), the denominator of MFU; again after step 4, keeping the better;
2. builds bertforge's model (and, with `compare_hf`, transformers' `BertForQuestionAnswering` or
   `BertForPreTraining` with `attn_implementation="sdpa"` and the same weights) and checks, in
   eval mode on the first batch, that both compute the same outputs;
3. warms each model up on its own (compilation happens here; peak memory is read here);
4. times `steps` steps, alternating between the models step by step, so that a machine shared
   with other work slows both alike;
5. optionally profiles a few more steps of each (`profile`): a Chrome trace file and a table of
   the top kernels.

A training step is the training loop's: forward and loss under autocast, backward (fp16 loss
scaling), gradient clipping at 1.0, an AdamW step (fused on CUDA), zero_grad. An inference step
is a forward under `torch.inference_mode`.

FLOPs are model FLOPs (`model_flops_per_token`: encoder matmuls and attention scores, 2 per
multiply-add, x3 for training) plus the heads' matmuls, counted on the real tokens of each
sequence only: padding is excluded for every model, so a model that computes on padding gets
no credit for it, and MFU compares useful work with the measured ceiling.
"""

from __future__ import annotations

import ctypes
import json
import logging
import platform
import resource
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from torch import Tensor, nn

from bertforge.config import BertConfig, resolve_config
from bertforge.errors import ConfigError, DataError
from bertforge.model import build_model, model_flops_per_token
from bertforge.runconfig import Precision, RuntimeArgs
from bertforge.train.optim import build_optimizer
from bertforge.train.runtime import DistInfo, Runtime, resolve_device, seed_everything

log = logging.getLogger(__name__)

SHARED_DATA = "../shared/data"  # beside the repository root, as the shared data sets are laid out
FLOPS_COUNTED = ("model FLOPs on real tokens only (padding excluded): encoder matmuls + attention "
                 "scores and values (2 per multiply-add, x3 for training) + head matmuls")


@dataclass
class BenchmarkArgs:
    """Measure training or inference speed, optionally against Hugging Face transformers."""

    bert_model: str = "large"
    """A preset (tiny, mini, small, medium, base, large), a config.json / bert_config.json, or a
    checkpoint directory holding one."""
    init_checkpoint: str | None = None
    """Weights to load (any format bertforge reads), whose config then replaces --bert_model;
    random weights otherwise. Speed does not depend on them; the agreement check with
    transformers is more telling with real ones."""
    mode: Literal["train", "infer"] = "train"
    task: Literal["qa", "pretraining"] = "qa"
    """qa: span extraction (SQuAD) loss; pretraining: masked LM (on the masked positions only) + NSP."""
    data: Literal["synthetic", "squad"] = "synthetic"
    """synthetic: random full-length sequences (no padding); squad: SQuAD v1.1 dev features with
    their padding (qa only)."""
    seq_length: int = 384
    batch_size: int = 32
    masked_positions: int | None = None
    """pretraining: masked positions per sequence; default 20 per 128 tokens (20 at 128, 80 at 512)."""
    squad_file: str = f"{SHARED_DATA}/squad/v1.1/dev-v1.1.json"
    """SQuAD v1.1 JSON for --data squad (relative paths are relative to the working directory)."""
    vocab_file: str | None = None
    """WordPiece vocab for --data squad; default: the checkpoint's, else the shared bert-base-uncased one."""
    do_lower_case: bool = True
    steps: int = 20
    """Timed steps per model."""
    warmup: int = 5
    """Untimed steps per model first (compilation, allocator warm-up)."""
    device: str = "auto"
    precision: Precision | None = None
    """fp32, tf32, bf16 or fp16 (autocast); default bf16 on CUDA, fp32 elsewhere."""
    compile: bool | None = None
    """torch.compile bertforge's encoder layers; default on for CUDA."""
    unpad: bool = True
    """bertforge runs on the real tokens only."""
    cuda_graphs: bool = False
    """Inference on CUDA: replay bertforge's forward as a CUDA graph (padded layout, fixed shapes)."""
    compare_hf: bool = False
    """Also measure transformers' BERT (sdpa attention) and report speedup_vs_hf."""
    hf_compile: bool = False
    """torch.compile the transformers model too (whole model)."""
    profile: bool = False
    """Profile a few extra steps: write a Chrome trace and print the top kernels."""
    trace_file: str = "benchmark_trace.json"
    """Where --profile writes bertforge's trace (transformers' gets a _hf suffix)."""
    json: bool = False
    """Print one JSON object on stdout instead of a table."""
    seed: int = 0

    def validate(self) -> None:
        for name in ("seq_length", "batch_size", "steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ConfigError(f"--warmup must be at least 0, got {self.warmup}")
        if self.data == "squad" and self.task != "qa":
            raise ConfigError("--data squad goes with --task qa (SQuAD features have no masked positions)")
        if self.masked_positions is not None and not 1 <= self.masked_positions < self.seq_length:
            raise ConfigError(f"--masked_positions must be in [1, seq_length), got {self.masked_positions}")
        if self.cuda_graphs and self.mode != "infer":
            raise ConfigError("--cuda_graphs is for --mode infer (training graphs are not captured)")

    @property
    def num_masked(self) -> int:
        if self.masked_positions is not None:
            return self.masked_positions
        return min(self.seq_length - 1, max(1, round(self.seq_length * 20 / 128)))


# ---- inputs ----------------------------------------------------------------------------------


@dataclass
class Batch:
    """One step's inputs, on the device: bertforge's batch dict, transformers' keyword arguments
    (the same tensors, plus labels in its format), and the real length of each sequence."""

    ours: dict[str, Tensor]
    hf: dict[str, Tensor]
    lengths: list[int]
    full: bool  # no padding anywhere (known on the host, where the data was made)


def _synthetic_batch(cfg: BenchmarkArgs, config: BertConfig, g: torch.Generator) -> dict[str, Tensor]:
    """Random full-length sequences: ids avoid 0 ([PAD]); the second half is segment B."""
    B, T = cfg.batch_size, cfg.seq_length
    batch = {"input_ids": torch.randint(1, config.vocab_size, (B, T), generator=g),
             "token_type_ids": torch.zeros(B, T, dtype=torch.long),
             "attention_mask": torch.ones(B, T, dtype=torch.long)}
    if config.type_vocab_size > 1:
        batch["token_type_ids"][:, T // 2:] = 1
    if cfg.task == "qa":
        batch["start_positions"] = torch.randint(0, T, (B,), generator=g)
        batch["end_positions"] = torch.randint(0, T, (B,), generator=g)
        return batch
    P = cfg.num_masked
    # P distinct positions per row, never [CLS] (position 0), in increasing order.
    positions = torch.rand(B, T - 1, generator=g).argsort(dim=1)[:, :P].sort(dim=1).values + 1
    batch.update(masked_lm_positions=positions,
                 masked_lm_ids=torch.randint(1, config.vocab_size, (B, P), generator=g),
                 masked_lm_weights=torch.ones(B, P),
                 next_sentence_labels=torch.randint(0, 2, (B,), generator=g))
    return batch


def _squad_batches(cfg: BenchmarkArgs, config: BertConfig, vocab_file: Path, count: int
                   ) -> list[dict[str, Tensor]]:
    """`count` batches of real SQuAD dev features (max_seq_length = seq_length, Google's stride
    128 and query limit 64), padded as stored: in file order for inference, shuffled (seeded)
    for training, as the two use them."""
    from bertforge.data import squad
    from bertforge.tokenization import WordPieceTokenizer

    path = Path(cfg.squad_file)
    if not path.is_file():
        raise DataError(f"SQuAD file not found: {path.resolve()}; pass --squad_file (the shared copy "
                        f"is {SHARED_DATA}/squad/v1.1/dev-v1.1.json beside the repository)")
    tokenizer = WordPieceTokenizer(vocab_file, do_lower_case=cfg.do_lower_case)
    if len(tokenizer) > config.vocab_size:
        raise ConfigError(f"vocab file {vocab_file} has {len(tokenizer)} tokens but the model's "
                          f"vocab_size is {config.vocab_size}; pass a matching --vocab_file")
    needed = count * cfg.batch_size
    examples, _ = squad.read_squad_examples(path, is_training=False)
    # Every question yields at least one window, so the first `needed` questions are enough.
    features = squad.convert_examples_to_features(examples[:needed], tokenizer,
                                                  max_seq_length=cfg.seq_length, progress=False)
    order = np.arange(len(features))
    if cfg.mode == "train":
        order = np.random.default_rng(cfg.seed).permutation(order)
    order = np.resize(order, needed)  # repeats only if the file is smaller than asked for
    arrays = features.batch(order)
    return [{k: torch.from_numpy(v[i * cfg.batch_size:(i + 1) * cfg.batch_size]) for k, v in arrays.items()}
            for i in range(count)]


def _hf_inputs(batch: dict[str, Tensor], cfg: BenchmarkArgs, config: BertConfig) -> dict[str, Tensor]:
    """transformers' keyword arguments for the same batch; labels in its format when training."""
    out = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    if cfg.mode != "train":
        return out
    if cfg.task == "qa":
        return {**out, "start_positions": batch["start_positions"], "end_positions": batch["end_positions"]}
    labels = torch.full_like(batch["input_ids"], -100)  # -100: not predicted
    labels.scatter_(1, batch["masked_lm_positions"], batch["masked_lm_ids"])
    return {**out, "labels": labels, "next_sentence_label": batch["next_sentence_labels"]}


def _vocab_for(cfg: BenchmarkArgs, checkpoint_vocab: Path | None) -> Path:
    vocab = Path(cfg.vocab_file) if cfg.vocab_file else checkpoint_vocab
    vocab = vocab or Path(SHARED_DATA) / "vocab" / "bert-base-uncased" / "vocab.txt"
    if not vocab.is_file():
        raise DataError(f"vocab file not found: {vocab.resolve()}; pass --vocab_file")
    return vocab


def make_batches(cfg: BenchmarkArgs, config: BertConfig, device: torch.device,
                 checkpoint_vocab: Path | None = None) -> list[Batch]:
    """warmup + steps batches (synthetic or SQuAD), moved to the device before any timing."""
    count = cfg.warmup + cfg.steps
    if cfg.data == "squad":
        raw = _squad_batches(cfg, config, _vocab_for(cfg, checkpoint_vocab), count)
    else:
        g = torch.Generator().manual_seed(cfg.seed)
        raw = [_synthetic_batch(cfg, config, g) for _ in range(count)]
    batches = []
    for b in raw:
        lengths = b["attention_mask"].sum(dim=1).tolist()
        on_device = {k: v.to(device) for k, v in b.items()}
        batches.append(Batch(on_device, _hf_inputs(on_device, cfg, config), lengths,
                             full=all(n == cfg.seq_length for n in lengths)))
    return batches


# ---- FLOPs and the ceiling -------------------------------------------------------------------


def batch_flops(config: BertConfig, cfg: BenchmarkArgs, lengths: list[int], training: bool) -> float:
    """Model FLOPs of one batch on its real tokens (see FLOPS_COUNTED)."""
    H, V = config.hidden_size, config.vocab_size
    encoder = sum(n * model_flops_per_token(config, n, training) for n in lengths)
    if cfg.task == "qa":
        heads = sum(lengths) * 2 * H * 2  # start/end logits
    else:
        mlm = cfg.num_masked * 2 * (H * H + H * V)  # transform + tied decoder, masked positions only
        heads = len(lengths) * (mlm + 2 * (H * H + 2 * H))  # + pooler and NSP
    return encoder + (3.0 if training else 1.0) * heads


MATMUL_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def matmul_peak(device: torch.device, precision: str, size: int | None = None, reps: int = 10) -> dict:
    """Median rate of a size^3 matrix product in the run's precision on random data (zeros can run
    faster than real data). TF32 follows the matmul settings the Runtime made."""
    size = size or (8192 if device.type == "cuda" else 1024)
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=MATMUL_DTYPES[precision], generator=g)
    b = torch.randn(size, size, device=device, dtype=MATMUL_DTYPES[precision], generator=g)
    timer = StepTimer(device)
    for i in range(3 + reps):
        with timer.step(record=i >= 3):
            a @ b
    seconds = statistics.median(timer.seconds())
    dtype = str(MATMUL_DTYPES[precision]).replace("torch.", "") + (" (tf32)" if precision == "tf32" else "")
    return {"tflops": 2 * size ** 3 / seconds / 1e12, "shape": f"{size}^3", "dtype": dtype}


# ---- timing and memory -----------------------------------------------------------------------


class StepTimer:
    """Per-step time of device work: CUDA events around each step (no host sync between steps;
    read once at the end), elsewhere a host clock after synchronising."""

    def __init__(self, device: torch.device):
        self.device = device
        self._events: list[tuple[Any, Any]] = []
        self._seconds: list[float] = []

    def _sync(self) -> None:
        if self.device.type != "cpu":
            torch.accelerator.synchronize(self.device)

    def step(self, record: bool = True):
        return _TimedStep(self, record)

    def seconds(self) -> list[float]:
        if self._events:
            self._sync()
            self._seconds += [start.elapsed_time(end) / 1e3 for start, end in self._events]
            self._events = []
        return list(self._seconds)


class _TimedStep:
    def __init__(self, timer: StepTimer, record: bool):
        self.timer, self.record = timer, record

    def __enter__(self):
        if self.timer.device.type == "cuda":
            self.start = torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.timer._sync()
            self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        if exc[0] is not None:
            return False
        if self.timer.device.type == "cuda":
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            if self.record:
                self.timer._events.append((self.start, end))
        else:
            self.timer._sync()
            if self.record:
                self.timer._seconds.append(time.perf_counter() - self.t0)
        return False


class MemoryMeter:
    """Peak memory of one model's steps: on an accelerator, the allocator's peak of live tensors;
    on the CPU, the process's peak resident set (Linux's resettable high-water mark). Both as
    (peak during the steps) - (in use before them) + (the model's own weights), so that another
    model resident at the same time is not counted."""

    def __init__(self, device: torch.device):
        self.device = device
        acc = torch.accelerator
        self._api = acc if hasattr(acc, "max_memory_allocated") else getattr(torch, device.type, None)
        self.kind = ("max memory allocated" if device.type != "cpu"
                     else "peak resident set size (process, Linux VmHWM)")

    def _index(self):
        return self.device.index if self.device.index is not None else 0

    def start(self) -> None:
        if self.device.type == "cpu":
            _reset_rss_peak()
            self.before = _rss_bytes("VmRSS")
        else:
            self._api.reset_peak_memory_stats(self._index())
            self.before = self._api.memory_allocated(self._index())

    def peak_since_start(self, model: nn.Module) -> float:
        """GB."""
        weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
        if self.device.type == "cpu":
            peak = _rss_bytes("VmHWM")
        else:
            peak = self._api.max_memory_allocated(self._index())
        return (peak - self.before + weights) / 1e9


def _reset_rss_peak() -> None:
    """Return freed heap memory to the OS (glibc), so the resident set holds live memory only and
    the next model cannot reuse what the previous one freed without it counting; then reset the
    high-water mark to the current RSS (Linux: writing 5 to clear_refs)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _rss_bytes(key: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # peak only, Linux kB


# ---- the two contenders ----------------------------------------------------------------------


@dataclass
class Contender:
    """One model under test and how a step runs it."""

    name: str
    model: nn.Module
    loss: Callable[[Batch], Tensor]
    forward: Callable[[Batch], Any]
    compiled: bool
    unpad: bool
    optimizer: torch.optim.Optimizer | None = None
    scaler: torch.amp.GradScaler | None = None
    timer: StepTimer | None = None
    losses: list[Tensor] = field(default_factory=list)
    peak_memory_gb: float | None = None


def _ours(cfg: BenchmarkArgs, runtime: Runtime, config: BertConfig, ckpt) -> Contender:
    from bertforge.checkpoint import load_into
    from bertforge.tasks.squad import SpanLoss, span_logits

    head = "qa" if cfg.task == "qa" else "pretraining"
    with torch.device(runtime.device):  # initialise on the device: BERT-large in a blink
        model = build_model(config, head, unpad=cfg.unpad and not cfg.cuda_graphs)
    if ckpt is not None:
        load_into(model, ckpt)
    if cfg.task == "qa":
        span = SpanLoss()

        def loss(b: Batch) -> Tensor:
            return span.loss_sums(model, b.ours)["qa"] / b.ours["input_ids"].shape[0]

        def forward(b: Batch):
            return span_logits(model, b.ours)
    else:
        from bertforge.tasks.pretraining import PretrainLoss
        pretrain = PretrainLoss()

        def loss(b: Batch) -> Tensor:
            sums, den = pretrain.loss_sums(model, b.ours), pretrain.denominators(b.ours)
            return sum(sums[k] / max(den[k], 1.0) for k in sums)

        def forward(b: Batch):
            x = b.ours
            return model(x["input_ids"], x["token_type_ids"], x["attention_mask"],
                         masked_lm_positions=x["masked_lm_positions"]).mlm_logits
    return Contender("bertforge", model, loss, _graphed(model, cfg, runtime) if cfg.cuda_graphs else forward,
                     compiled=runtime.compile, unpad=cfg.unpad and not cfg.cuda_graphs)


def _graphed(model: nn.Module, cfg: BenchmarkArgs, runtime: Runtime) -> Callable[[Batch], Any]:
    """bertforge's forward replayed from CUDA graphs: padded layout, no mask for batches the
    host knows have no padding (so attention takes the flash kernel)."""
    from bertforge.infer import CudaGraphForward

    def qa(m: nn.Module, x: dict[str, Tensor]):
        return m(x["input_ids"], x["token_type_ids"], x.get("attention_mask"))

    def pretraining(m: nn.Module, x: dict[str, Tensor]):
        return m(x["input_ids"], x["token_type_ids"], x.get("attention_mask"),
                 masked_lm_positions=x["masked_lm_positions"]).mlm_logits

    graphs = CudaGraphForward(model, qa if cfg.task == "qa" else pretraining, runtime.autocast_dtype)

    def forward(b: Batch):
        keep = ["input_ids", "token_type_ids"] + ([] if b.full else ["attention_mask"])
        keep += ["masked_lm_positions"] if cfg.task == "pretraining" else []
        return graphs({k: b.ours[k] for k in keep})
    return forward


def _hf(cfg: BenchmarkArgs, runtime: Runtime, config: BertConfig, ours: nn.Module) -> Contender:
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
    result = model.load_state_dict(native_to_hf(ours.state_dict()), strict=False)
    untied = [k for k in result.missing_keys if not k.startswith("cls.predictions.decoder.")]
    if untied or result.unexpected_keys:
        raise ConfigError(f"weights do not map onto transformers' model: missing {untied}, "
                          f"unexpected {result.unexpected_keys}")
    model.to(runtime.device)
    call = torch.compile(model) if cfg.hf_compile else model

    def loss(b: Batch) -> Tensor:
        return call(**b.hf).loss

    def forward(b: Batch):
        out = call(**b.hf)
        return out.start_logits if cfg.task == "qa" else out.prediction_logits
    return Contender("hf", model, loss, forward, compiled=cfg.hf_compile, unpad=False)


def agreement(ours: Contender, hf: Contender, batch: Batch, cfg: BenchmarkArgs, runtime: Runtime) -> float:
    """Max |difference| of the two models' eval-mode outputs on one batch, at real positions
    (QA: start logits) or masked positions (pretraining: MLM logits)."""
    ours.model.eval()
    hf.model.eval()
    with torch.inference_mode(), runtime.autocast():
        a = ours.model(batch.ours["input_ids"], batch.ours["token_type_ids"], batch.ours["attention_mask"],
                       **({"masked_lm_positions": batch.ours["masked_lm_positions"]}
                          if cfg.task == "pretraining" else {}))
        b = hf.model(**{k: batch.hf[k] for k in ("input_ids", "token_type_ids", "attention_mask")})
        if cfg.task == "qa":
            real = batch.ours["attention_mask"].bool()
            diff = a[0].float()[real] - b.start_logits.float()[real]
        else:
            pos = batch.ours["masked_lm_positions"]
            theirs = torch.gather(b.prediction_logits, 1,
                                  pos.unsqueeze(-1).expand(-1, -1, b.prediction_logits.shape[-1]))
            diff = a.mlm_logits.float() - theirs.float()
    return float(diff.abs().max())


# ---- steps -----------------------------------------------------------------------------------


def _prepare(c: Contender, cfg: BenchmarkArgs, runtime: Runtime) -> None:
    c.timer = StepTimer(runtime.device)
    if cfg.mode == "train":
        c.model.train()
        c.optimizer = build_optimizer(c.model, "adamw", 1e-5, 0.01, runtime.device)
        c.scaler = runtime.grad_scaler()
    else:
        c.model.eval()


def _step(c: Contender, batch: Batch, cfg: BenchmarkArgs, runtime: Runtime) -> None:
    if cfg.mode == "infer":
        with torch.inference_mode(), (nullcontext() if cfg.cuda_graphs and c.name == "bertforge"
                                      else runtime.autocast()):
            c.forward(batch)
        return
    with runtime.autocast():
        loss = c.loss(batch)
    if c.scaler is not None:
        c.scaler.scale(loss).backward()
        c.scaler.unscale_(c.optimizer)
    else:
        loss.backward()
    torch.nn.utils.clip_grad_norm_(c.model.parameters(), 1.0, foreach=True)
    if c.scaler is not None:
        c.scaler.step(c.optimizer)
        c.scaler.update()
    else:
        c.optimizer.step()
    c.optimizer.zero_grad(set_to_none=True)
    c.losses.append(loss.detach())


def _warm_up(c: Contender, batches: list[Batch], cfg: BenchmarkArgs, runtime: Runtime) -> None:
    meter = MemoryMeter(runtime.device)
    meter.start()
    # At least one step even with --warmup 0: memory, optimizer state and compilation.
    for batch in batches[:max(cfg.warmup, 1)]:
        _step(c, batch, cfg, runtime)
    runtime.synchronize()
    c.peak_memory_gb = meter.peak_since_start(c.model)
    c.losses.clear()


def _timed(contenders: list[Contender], batches: list[Batch], cfg: BenchmarkArgs, runtime: Runtime) -> None:
    for batch in batches[cfg.warmup:]:
        for c in contenders:  # alternate: a noisy neighbour slows both alike
            with c.timer.step():
                _step(c, batch, cfg, runtime)
    runtime.synchronize()


def _profile(c: Contender, batches: list[Batch], cfg: BenchmarkArgs, runtime: Runtime, path: Path) -> str:
    """A Chrome trace of 3 steps; returns the table of the top 15 kernels (or CPU ops)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if runtime.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        for batch in batches[cfg.warmup:][:3]:
            _step(c, batch, cfg, runtime)
        runtime.synchronize()
    path.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(path))
    key = "self_cpu_time_total" if runtime.device.type == "cpu" else "self_device_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=15)


def _summary(c: Contender, batches: list[Batch], cfg: BenchmarkArgs, config: BertConfig,
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
           "peak_memory_gb": c.peak_memory_gb, "compiled": c.compiled, "unpadded": c.unpad}
    if cfg.mode == "infer":
        out["latency_ms_p50"], out["latency_ms_p99"] = out["step_ms_p50"], out["step_ms_p99"]
    else:
        losses = [float(x) for x in c.losses]
        out["loss_first"], out["loss_last"] = (losses[0], losses[-1]) if losses else (None, None)
    return out


# ---- the run ---------------------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        name = platform.processor() or "cpu"
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        return f"{name}, {torch.get_num_threads()} threads"
    return str(device)


def _model_config(cfg: BenchmarkArgs):
    """(config, checkpoint or None)."""
    if cfg.init_checkpoint:
        from bertforge.checkpoint import load_checkpoint
        ckpt = load_checkpoint(cfg.init_checkpoint)
        return ckpt.config, ckpt
    return resolve_config(cfg.bert_model), None


def measure(cfg: BenchmarkArgs) -> dict:
    """Run the benchmark; returns the results as a JSON-ready dict (see `run_benchmark`)."""
    cfg.validate()
    device = resolve_device(cfg.device)
    precision = cfg.precision or ("bf16" if device.type == "cuda" else "fp32")
    runtime = Runtime(RuntimeArgs(device=str(device), precision=precision, compile=cfg.compile,
                                  unpad=cfg.unpad))
    if cfg.cuda_graphs and device.type != "cuda":
        raise ConfigError(f"--cuda_graphs needs a CUDA device, not {device}")
    config, ckpt = _model_config(cfg)
    if cfg.seq_length > config.max_position_embeddings:
        raise ConfigError(f"--seq_length {cfg.seq_length} exceeds the model's max_position_embeddings "
                          f"({config.max_position_embeddings})")
    seed_everything(cfg.seed)
    batches = make_batches(cfg, config, device, ckpt.vocab_file if ckpt else None)
    peak = matmul_peak(device, precision)

    contenders = [_ours(cfg, runtime, config, ckpt)]
    if cfg.compare_hf:
        contenders.append(_hf(cfg, runtime, config, contenders[0].model))
    result = _facts(cfg, config, device, precision, batches, peak)
    if cfg.compare_hf:
        import transformers
        result["transformers"] = transformers.__version__
        result["max_abs_diff_vs_hf"] = agreement(contenders[0], contenders[1], batches[0], cfg, runtime)
    if runtime.compile:
        from bertforge.train.loop import compile_layers
        compile_layers(contenders[0].model)
    for c in contenders:
        _prepare(c, cfg, runtime)
        _warm_up(c, batches, cfg, runtime)
    _timed(contenders, batches, cfg, runtime)
    # The ceiling is the better of two measurements, before and after the timed steps: on a
    # shared machine one of them may have been slowed by other work.
    peak = max(peak, matmul_peak(device, precision), key=lambda p: p["tflops"])
    log.info("matmul ceiling %.1f TFLOP/s (%s %s)", peak["tflops"], peak["dtype"], peak["shape"])
    result.update(matmul_peak_tflops=peak["tflops"])
    for c in contenders:
        result[c.name] = _summary(c, batches, cfg, config, peak["tflops"])
    if cfg.compare_hf:
        result["speedup_vs_hf"] = result["bertforge"]["seq_per_s"] / result["hf"]["seq_per_s"]
    if cfg.profile:
        result["profile"] = {}
        for c in contenders:
            path = Path(cfg.trace_file)
            if c.name == "hf":
                path = path.with_name(f"{path.stem}_hf{path.suffix}")
            table = _profile(c, batches, cfg, runtime, path)
            result["profile"][c.name] = {"trace_file": str(path), "top": table}
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
        "flops_counted": FLOPS_COUNTED, "matmul_peak": f"{peak['dtype']} {peak['shape']}",
        "memory_counted": MemoryMeter(device).kind + ", during this model's warm-up steps",
    }
    if cfg.task == "pretraining":
        facts["masked_positions"] = cfg.num_masked
    return facts


def _describe(config: BertConfig, cfg: BenchmarkArgs) -> str:
    name = cfg.init_checkpoint or cfg.bert_model
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
    if "speedup_vs_hf" in result:
        lines += ["", f"speedup vs transformers: {result['speedup_vs_hf']:.2f}x   "
                      f"(max |output difference| on batch 0, eval mode: {result['max_abs_diff_vs_hf']:.2e})"]
    for name, p in result.get("profile", {}).items():
        label = "bertforge" if name == "bertforge" else "transformers"
        lines += ["", f"profile of {label}: trace written to {p['trace_file']}", p["top"]]
    return "\n".join(lines)


def run_benchmark(cfg: BenchmarkArgs, dist_info: DistInfo = DistInfo()) -> dict:
    """The `bertforge benchmark` command: measure, then print a table (or one JSON object)."""
    if dist_info.enabled:
        raise ConfigError("the benchmark measures one device: run it without torchrun")
    result = measure(cfg)
    print(json.dumps(result) if cfg.json else format_table(result))
    return result


__all__ = ["BenchmarkArgs", "run_benchmark", "measure", "make_batches", "batch_flops", "matmul_peak",
           "format_table", "FLOPS_COUNTED"]
