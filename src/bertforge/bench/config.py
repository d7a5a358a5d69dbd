"""What `bertforge benchmark` measures: the model and runtime (the same `ModelArgs` and
`RuntimeArgs` every command takes, with the same defaults), the workload, and the reporting."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from bertforge.errors import ConfigError
from bertforge.runconfig import ModelArgs, RuntimeArgs


@dataclass(kw_only=True)
class BenchmarkArgs:
    """Measure training or inference speed, optionally against Hugging Face transformers."""

    model: ModelArgs = field(default_factory=lambda: ModelArgs(bert_model="large"))
    """bert_model: a preset or config (default large); init_checkpoint: weights to load (any format
    bertforge reads; random weights otherwise: speed does not depend on them, the agreement check
    with transformers is more telling with real ones)."""
    runtime: RuntimeArgs = field(default_factory=RuntimeArgs)
    mode: Literal["train", "infer"] = "train"
    """train: the training step the Trainer runs (forward, backward, clipping, optimizer); infer: a forward."""
    optimizer: Literal["adamw", "lamb"] = "adamw"
    """The training step's optimizer, for both models: AdamW (fine-tuning's; fused on CUDA) or LAMB
    (pretraining's). Its own time per step is measured too (optimizer_ms)."""
    task: Literal["qa", "pretraining"] = "qa"
    """qa: span extraction (SQuAD) loss; pretraining: masked LM (on the masked positions only) + NSP."""
    data: Literal["synthetic", "squad"] = "synthetic"
    """synthetic: random full-length sequences (no padding); squad: SQuAD v1.1 dev features with
    their padding (qa only)."""
    seq_length: int = 384
    """Tokens per sequence (the padded length of SQuAD features)."""
    batch_size: int = 32
    """Sequences per step."""
    masked_positions: int | None = None
    """pretraining: masked positions per sequence; default 20 per 128 tokens (20 at 128, 80 at 512)."""
    squad_file: str | None = None
    """SQuAD v1.1 JSON for --data squad, e.g. the official dev-v1.1.json (relative paths are
    relative to the working directory)."""
    steps: int = 20
    """Timed steps per model."""
    warmup: int = 5
    """Untimed steps per model first (compilation, allocator warm-up)."""
    cuda_graphs: bool = False
    """Inference on CUDA: replay bertforge's forward as a CUDA graph (padded layout, fixed shapes)."""
    compare_hf: bool = False
    """Also measure transformers' BERT (sdpa attention) and report speedup_vs_hf."""
    hf_compile: bool = False
    """torch.compile the transformers model too (whole model)."""
    profile: bool = False
    """Profile a few extra steps: write a Chrome trace and print the top kernels."""
    trace_file: str | None = "benchmark_trace.json"
    """Where --profile writes bertforge's trace (transformers' gets a _hf suffix); null: no trace,
    only the table."""
    json: bool = False
    """Print one JSON object on stdout instead of a table."""
    seed: int = 0
    """Seeds the weights and the synthetic data."""

    def __post_init__(self) -> None:
        for name in ("seq_length", "batch_size", "steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ConfigError(f"--warmup must be at least 0, got {self.warmup}")
        if self.data == "squad" and self.task != "qa":
            raise ConfigError("--data squad goes with --task qa (SQuAD features have no masked positions)")
        if self.data == "squad" and self.squad_file is None:
            raise ConfigError("--data squad needs --squad_file (a SQuAD v1.1 JSON file such as dev-v1.1.json)")
        if self.masked_positions is not None and not 1 <= self.masked_positions < self.seq_length:
            raise ConfigError(f"--masked_positions must be in [1, seq_length), got {self.masked_positions}")
        if self.cuda_graphs and self.mode != "infer":
            raise ConfigError("--cuda_graphs is for --mode infer (training graphs are not captured)")
        if self.model.bert_model is None and self.model.init_checkpoint is None:
            raise ConfigError("which model? give --bert_model (a preset or config) or --init_checkpoint")

    @property
    def num_masked(self) -> int:
        if self.masked_positions is not None:
            return self.masked_positions
        return min(self.seq_length - 1, max(1, round(self.seq_length * 20 / 128)))
