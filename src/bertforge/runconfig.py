"""Typed configuration shared by every command: which model (`ModelArgs`), how to train
(`TrainArgs`), where and in which precision to run (`RuntimeArgs`). Task configs nest these.

Field names are the flag names of the reference recipes (Google's run_squad.py /
run_classifier.py, NVIDIA's run_pretraining.py) wherever they have one, so their commands carry
over: the CLI accepts `--learning_rate` as well as `--train.learning_rate`.

Batch semantics (logged at the start of every run):
    global batch = train_batch_size (per device) x devices x gradient_accumulation_steps
and the learning rate belongs to the global batch. `global_batch_size`, when given, fixes the
global batch and derives the accumulation steps from the number of devices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bertforge.errors import ConfigError

Precision = Literal["fp32", "tf32", "bf16", "fp16"]


@dataclass
class ModelArgs:
    """Which BERT: an architecture and/or weights, and its vocabulary."""

    bert_model: str | None = None
    """A preset (tiny, mini, small, medium, base, large) or a bert_config.json / config.json
    (also accepted as --bert_config_file, --config_file). Optional when init_checkpoint has one."""
    init_checkpoint: str | None = None
    """Weights to start from: a bertforge run directory, a Hugging Face directory, a Google TF
    checkpoint (bert_model.ckpt) or an NVIDIA DLE .pt file."""
    vocab_file: str | None = None
    """WordPiece vocab.txt; defaults to the one beside init_checkpoint."""
    do_lower_case: bool | None = None
    """True for uncased models. Defaults to what the checkpoint records; required otherwise."""


@dataclass
class TrainArgs:
    """The optimisation loop."""

    train_batch_size: int = 32
    """Sequences per device per forward/backward pass (the micro-batch)."""
    gradient_accumulation_steps: int = 1
    """Micro-batches accumulated into one optimizer step."""
    global_batch_size: int | None = None
    """If set, the global batch; gradient_accumulation_steps is derived from it and the device count."""
    learning_rate: float = 5e-5
    """Peak learning rate, for the global batch."""
    num_train_epochs: float = 3.0
    max_steps: int | None = None
    """Optimizer steps to run; overrides num_train_epochs."""
    warmup_proportion: float = 0.1
    """Fraction of the steps spent warming the learning rate up linearly from 0."""
    weight_decay: float = 0.01
    """Decoupled weight decay; never applied to biases and LayerNorm weights."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this (None: no clipping)."""
    seed: int = 42
    log_every: int = 10
    """Log metrics every N optimizer steps."""
    save_every: int | None = None
    """Write a resumable checkpoint every N optimizer steps (also --num_steps_per_checkpoint)."""
    keep_checkpoints: int = 2
    """How many resumable checkpoints to keep."""
    resume: bool = False
    """Continue from the latest checkpoint in output_dir (also --resume_from_checkpoint)."""

    def validate(self) -> None:
        for name in ("train_batch_size", "gradient_accumulation_steps", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ConfigError(f"--learning_rate must be positive, got {self.learning_rate}")
        if not 0.0 <= self.warmup_proportion <= 1.0:
            raise ConfigError(f"--warmup_proportion must be in [0, 1], got {self.warmup_proportion}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"--max_steps must be at least 1, got {self.max_steps}")
        if self.max_steps is None and self.num_train_epochs <= 0:
            raise ConfigError(f"--num_train_epochs must be positive, got {self.num_train_epochs}")
        if self.save_every is not None and self.save_every < 1:
            raise ConfigError(f"--save_every must be at least 1, got {self.save_every}")

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


@dataclass
class RuntimeArgs:
    """Where and how the model runs."""

    device: str = "auto"
    """auto (the accelerator if there is one, else cpu), cpu, cuda, cuda:1, xpu, mps, hpu, ..."""
    precision: Precision = "fp32"
    """fp32, tf32 (fp32 storage, TF32 matmuls), bf16 or fp16 autocast with fp32 master weights."""
    compile: bool | None = None
    """torch.compile the encoder; default: on for CUDA, off elsewhere."""
    unpad: bool = True
    """Run the encoder on real tokens only (no FLOPs on padding); same outputs."""
    num_workers: int = 0
    """Data-loading worker processes."""
