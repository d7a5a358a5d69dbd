"""Typed configuration shared by every command: which model (`ModelArgs`), how to train
(`TrainArgs`), where and in which precision to run (`RuntimeArgs`; `InferenceRuntimeArgs` adds
the engine for the commands that only predict), and the base of every task's run config
(`RunConfig`, `PredictRun` for runs that only predict, `TrainRun` for runs that can train), which
nests them.

Each config checks itself in `__post_init__` (types through `bertforge.validation`, then value
ranges), so a bad value fails where the config is made, naming its flag. Field names are the
flag names of the reference recipes (Google's run_squad.py / run_classifier.py, NVIDIA's
run_pretraining.py) wherever they have one: the CLI accepts `--learning_rate` as well as
`--train.learning_rate`.

Batch semantics (logged at the start of every run):
    global batch = train_batch_size (per device) x devices x gradient_accumulation_steps
and the learning rate belongs to the global batch. `global_batch_size`, when given, fixes the
global batch and derives the accumulation steps from the number of devices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from bertforge.errors import ConfigError
from bertforge.validation import check_at_least, check_types

Precision = Literal["fp32", "tf32", "bf16", "fp16", "int8"]
# What runs a trained model's forward passes: PyTorch, or onnxruntime on an ONNX export.
Engine = Literal["torch", "onnxruntime"]
# int8 (dynamically quantised linear layers) has no gradients: a run that trains refuses it.
INT8_IS_FOR_INFERENCE = "--precision int8 is for inference (predict, serve, export); train in fp32 or bf16"
# How `encode` turns a text's hidden states into one vector (the Python API and the server).
Pooling = Literal["mean", "cls", "pooled"]
OptimizerName = Literal["adamw", "lamb"]
ScheduleName = Literal["linear", "poly"]
# Where a training run's metrics go besides metrics.jsonl, which is always written.
TRACKERS = ("jsonl", "tensorboard", "wandb")


def tracker_names(report_to: str) -> list[str]:
    """--report_to's names, each once, jsonl first ("none": metrics.jsonl only)."""
    names = [n.strip() for n in report_to.split(",") if n.strip()]
    if names == ["none"]:
        return ["jsonl"]
    _require(bool(names) and all(n in TRACKERS for n in names), "report_to",
             f"a comma-separated list of {', '.join(TRACKERS)} (or none)", report_to)
    return list(dict.fromkeys(["jsonl", *names]))


def _require(ok: bool, flag: str, want: str, value) -> None:
    if not ok:
        raise ConfigError(f"--{flag} must be {want}, got {value!r}")


@dataclass(kw_only=True)
class ModelArgs:
    """Which BERT: an architecture and/or weights, and its vocabulary."""

    bert_model: str | None = None
    """A preset (tiny, mini, small, medium, base, large) or a bert_config.json / config.json
    (also accepted as --bert_config_file, --config_file). Optional when init_checkpoint has one."""
    init_checkpoint: str | None = None
    """Weights to start from: a bertforge run directory, a Hugging Face directory or Hub id
    (bert-base-uncased, through the local Hugging Face cache), a Google TF checkpoint
    (bert_model.ckpt) or an NVIDIA DLE .pt file."""
    vocab_file: str | None = None
    """WordPiece vocab.txt; defaults to the one beside init_checkpoint."""
    do_lower_case: bool | None = None
    """True for uncased models. Defaults to what the checkpoint records; required otherwise."""

    def __post_init__(self) -> None:
        check_types(self, "model")
        for name in ("bert_model", "init_checkpoint", "vocab_file"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                # An unset shell variable ($CKPT) must not silently mean "random weights".
                raise ConfigError(f"--{name} is empty; give a path (or leave the flag out)")


@dataclass(kw_only=True)
class TrainArgs:
    """The optimisation loop: batches, optimizer, learning-rate schedule, checkpoints."""

    train_batch_size: int = 32
    """Sequences per device per forward/backward pass (the micro-batch)."""
    gradient_accumulation_steps: int = 1
    """Micro-batches accumulated into one optimizer step."""
    global_batch_size: int | None = None
    """If set, the global batch; gradient_accumulation_steps is derived from it and the device count."""
    learning_rate: float = 5e-5
    """Peak learning rate, for the global batch."""
    num_train_epochs: float = 3.0
    """Epochs to train when max_steps is not given."""
    max_steps: int | None = None
    """Optimizer steps to run; overrides num_train_epochs."""
    optimizer: OptimizerName = "adamw"
    """adamw (fine-tuning: torch's AdamW, as Hugging Face's examples use it) or lamb (pretraining:
    NVIDIA's FusedLAMB rule). Both with Adam's bias correction unless adam_bias_correction is false."""
    adam_bias_correction: bool = True
    """Divide Adam's moments by (1 - beta^t), as torch's AdamW and NVIDIA's FusedLAMB do. false:
    no bias correction, as Google's AdamWeightDecayOptimizer (its fine-tuning and pretraining) and
    NVIDIA's fine-tuning (BertAdam; FusedAdam with bias_correction=False) run Adam."""
    schedule: ScheduleName = "linear"
    """linear: warmup, then linear decay to 0 over the steps after warmup (Hugging Face's
    get_linear_schedule_with_warmup). poly: NVIDIA's PolyWarmUpScheduler for pretraining: warmup,
    then lr * (1 - k/total)^schedule_power at update k, the decay measured over all steps. Google's
    optimization.py decays as poly with power 1.0 does, one update behind: its update k uses
    (k-1)/total (and its warmup counts floor(warmup_proportion x total) whole steps).
    Both follow the updates applied: an update fp16 skipped does not advance the schedule."""
    schedule_power: float = 0.5
    """Exponent of the poly schedule (NVIDIA pretraining: 0.5; Google: 1.0)."""
    warmup_proportion: float = 0.1
    """Fraction of the steps spent warming the learning rate up linearly from 0."""
    weight_decay: float = 0.01
    """Decoupled weight decay; never applied to biases and LayerNorm weights."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this (None: no clipping)."""
    seed: int = 42
    """Seeds weight initialisation, data order, dropout and masking."""
    log_every: int = 10
    """Log metrics every N optimizer steps (also when non-finite losses are checked for)."""
    save_every: int | None = None
    """Write a resumable checkpoint every N optimizer steps (also --num_steps_per_checkpoint)."""
    keep_checkpoints: int = 2
    """How many resumable checkpoints to keep."""
    resume: bool | str = False
    """Continue the run in output_dir: --resume takes its latest intact checkpoint, --resume PATH
    the checkpoint directory PATH (also --resume_from_checkpoint)."""
    max_fp16_skips: int = 50
    """fp16: stop when this many consecutive steps overflowed (the loss scale cannot recover)."""
    skip_checkpoint: bool = False
    """Write no checkpoint and not the trained model (NVIDIA's --skip_checkpoint, for benchmark runs);
    overrides save_every."""
    report_to: str = "jsonl"
    """Where metrics go, comma-separated: jsonl (output_dir/metrics.jsonl, always written),
    tensorboard (event files in output_dir/tensorboard), wandb (Weights & Biases; WANDB_MODE=offline
    keeps the run local). Each needs its extra: pip install 'bertforge[tensorboard]' / 'bertforge[wandb]'."""

    def __post_init__(self) -> None:
        check_types(self, "train")
        if self.skip_checkpoint:
            self.save_every = None
        check_at_least(self, 1, ("train_batch_size", "gradient_accumulation_steps", "global_batch_size",
                                 "max_steps", "log_every", "save_every", "keep_checkpoints", "max_fp16_skips"))
        _require(self.learning_rate > 0 and math.isfinite(self.learning_rate), "learning_rate",
                 "a positive number", self.learning_rate)
        _require(0.0 <= self.warmup_proportion <= 1.0, "warmup_proportion", "in [0, 1]",
                 self.warmup_proportion)
        _require(self.weight_decay >= 0 and math.isfinite(self.weight_decay), "weight_decay",
                 "a number >= 0", self.weight_decay)
        _require(self.schedule_power > 0 and math.isfinite(self.schedule_power), "schedule_power",
                 "a positive number", self.schedule_power)
        _require(self.max_grad_norm is None or self.max_grad_norm > 0, "max_grad_norm",
                 "positive (or null: no clipping)", self.max_grad_norm)
        _require(self.max_steps is not None or self.num_train_epochs > 0, "num_train_epochs",
                 "positive", self.num_train_epochs)
        tracker_names(self.report_to)

    @property
    def trackers(self) -> list[str]:
        return tracker_names(self.report_to)

    def accumulation_for(self, world_size: int) -> int:
        """Gradient accumulation steps for `world_size` devices, checking the global batch."""
        if self.global_batch_size is None:
            return self.gradient_accumulation_steps
        per_step = self.train_batch_size * world_size
        if self.global_batch_size % per_step:
            raise ConfigError(
                f"global batch {self.global_batch_size} is not divisible by train_batch_size "
                f"{self.train_batch_size} x {world_size} device(s) = {per_step}; choose a global batch "
                f"that is a multiple of {per_step}, or another per-device batch")
        accumulation = self.global_batch_size // per_step
        if self.gradient_accumulation_steps not in (1, accumulation):
            raise ConfigError(
                f"--gradient_accumulation_steps {self.gradient_accumulation_steps} contradicts "
                f"global batch {self.global_batch_size} = {self.train_batch_size} x {world_size} x "
                f"{accumulation}; give one or the other")
        return accumulation

    def total_steps(self, steps_per_epoch: int) -> int:
        """Optimizer steps of the run: max_steps, else num_train_epochs of `steps_per_epoch`."""
        if self.max_steps is not None:
            return self.max_steps
        return max(1, math.floor(self.num_train_epochs * steps_per_epoch))


@dataclass(kw_only=True)
class RuntimeArgs:
    """Where and how the model runs."""

    device: str = "auto"
    """auto (the accelerator if there is one, else cpu), cpu, cuda, cuda:1, xpu, mps, hpu, ..."""
    precision: Precision = "fp32"
    """fp32, tf32 (fp32 storage, TF32 matmuls), bf16 or fp16 autocast with fp32 master weights;
    int8 is for inference only (predict, serve, export)."""
    compile: bool | None = None
    """torch.compile the encoder layers; default: on for CUDA, off elsewhere."""
    unpad: bool = True
    """Run the encoder on real tokens only (no FLOPs on padding); same outputs."""
    recompute_attention: bool = False
    """CPU training with attention dropout: recompute each layer's attention in the backward
    pass instead of keeping its probabilities and dropout mask (9 bytes per score). Halves the
    live tensors of a MiniLM step at 384 (2.1 to 1.1 GB) at about 20% more time per step
    (docs/memory.md); the same results. For machines short of memory."""
    num_workers: int = 0
    """Background threads that prepare the next batches (index, trim, pin memory) while the
    device computes; 0 prepares each batch when it is needed."""
    json_summary: str | None = None
    """Also write NVIDIA's dllogger JSON lines (`DLLL {...}`: e2e_train_time,
    training_sequences_per_second, final_loss, exact_match, F1, ...) to this file (rank 0);
    also --json-summary, --dllog_path."""

    def __post_init__(self) -> None:
        check_types(self, "runtime")
        check_at_least(self, 0, ("num_workers",))


@dataclass(kw_only=True)
class InferenceRuntimeArgs(RuntimeArgs):
    """Where and how a trained model predicts: the device, the precision and the engine."""

    precision: Precision = "fp32"
    """fp32, the default, is exact; bf16 is for GPUs and for CPUs with AVX512-BF16 or AMX; int8
    is the fastest on CPUs (CPU only); tf32 and fp16 are for GPUs. bf16: linear weights stored in
    bf16, autocast; outputs within about 1% of fp32; refused on a CPU without those
    instructions, where bf16 products are emulated and slower than fp32. int8: the linear layers
    dynamically quantised (PyTorch: torch.ao with a scale per output channel, 8-bit activations
    on CPUs with VNNI, on the unpadded path; onnxruntime: its dynamic quantiser), after
    SmoothQuant moves the activations' outlier channels into the weights; it moves answers a
    little (a fine-tuned MiniLM's SQuAD F1: PyTorch -0.27, onnxruntime -0.13), so score it on
    your data before serving it. benchmarks/RESULTS.md has the speed of each on CPUs."""
    engine: Engine = "torch"
    """torch, the default, runs any device and precision; onnxruntime (CPU, fp32 or int8) is for
    where benchmarks/RESULTS.md shows it faster on your CPU. torch: bertforge's model, unpadded
    (no work on padding). onnxruntime: the model exported to ONNX as it loads (or a `bertforge
    export` directory given as the checkpoint), run in length buckets so that it computes
    little padding; extra: export. Its encode() needs an export of the encoder (the base head)."""
    streams: int = 1
    """CPU, torch engine: forward passes run at once, each on an equal share of the CPU threads;
    2 or more for throughput (predict over a file, a busy server), 1 for the lowest latency of a
    lone request. (`bertforge.engine.streams`; 2 streams of 1 thread on a 2-core CPU computed
    1.28x the batches per second of 1 stream of 2 threads in int8, 1.11x in bf16, 1.09x in fp32;
    a request alone runs on one stream's threads.)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_at_least(self, 1, ("streams",))


def engine_of(runtime: RuntimeArgs) -> Engine:
    """The engine a runtime asks for: a training run's RuntimeArgs has none, and runs PyTorch."""
    return runtime.engine if isinstance(runtime, InferenceRuntimeArgs) else "torch"


def streams_of(runtime: RuntimeArgs) -> int:
    """The CPU streams a runtime asks for: a training run's RuntimeArgs predicts in one."""
    return runtime.streams if isinstance(runtime, InferenceRuntimeArgs) else 1


@dataclass(kw_only=True)
class RunConfig:
    """What every run of a task has: where its results go, the model, and where it runs. A task's
    run config extends it with its data and its do_* switches (the CLI makes every field a flag:
    `--data.max_seq_length`, also `--max_seq_length`, with the field's docstring as help)."""

    output_dir: str = "runs/run"
    """Where the results go."""
    overwrite_output_dir: bool = False
    """Replace earlier results in output_dir."""
    model: ModelArgs = field(default_factory=ModelArgs)
    runtime: RuntimeArgs = field(default_factory=RuntimeArgs)

    def __post_init__(self) -> None:
        check_types(self, type(self).__name__)

    @property
    def training(self) -> bool:
        """Whether this run trains (`train` then holds how)."""
        return False


@dataclass(kw_only=True)
class PredictRun(RunConfig):
    """A run that only predicts with a trained model: it chooses the inference engine too."""

    runtime: InferenceRuntimeArgs = field(default_factory=InferenceRuntimeArgs)


@dataclass(kw_only=True)
class TrainRun(RunConfig):
    """A run that trains when asked (--do_train), then evaluates or predicts."""

    overwrite_output_dir: bool = False
    """Replace the run already in output_dir (only files bertforge wrote)."""
    do_train: bool = False
    """Train."""
    train: TrainArgs = field(default_factory=TrainArgs)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.do_train and self.runtime.precision == "int8":
            raise ConfigError(INT8_IS_FOR_INFERENCE)

    @property
    def training(self) -> bool:
        return self.do_train
