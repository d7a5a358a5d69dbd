"""The flags of `bertforge serve`."""

from __future__ import annotations

from dataclasses import dataclass, field

from bertforge.data.squad import SquadSettings
from bertforge.errors import ConfigError
from bertforge.runconfig import Pooling, RuntimeArgs
from bertforge.validation import check_at_least, check_types


@dataclass  # not kw_only: jsonargparse makes only positional-capable fields positional (serve CHECKPOINT)
class ServeArgs(SquadSettings):
    """Serve a model's answer / classify / encode over HTTP and JSON, batching concurrent requests.
    /answer reads contexts and decodes answers with the SQuAD settings (`SquadSettings`, the flags
    of `predict squad`)."""

    checkpoint: str
    """The model: a bertforge run directory, a Hugging Face directory, a Google TF or NVIDIA
    checkpoint, or a Hugging Face Hub id."""
    host: str = "127.0.0.1"
    """Address to listen on (0.0.0.0: every interface)."""
    port: int = 8000
    """TCP port to listen on (0: any free port; the log says which)."""
    max_batch_size: int = 32
    """Most requests answered by one forward pass."""
    batch_timeout_ms: float = 5.0
    """How long the first request of a batch waits for more to join it, in milliseconds."""
    max_pending: int = 1024
    """Requests waiting for the model beyond this many are refused (503) instead of queued."""
    predict_batch_size: int = 64
    """Sequences per forward pass (a long context is several windows, each a sequence)."""
    max_body_bytes: int = 1_000_000
    """Largest request body accepted; larger ones get 413."""
    max_context_chars: int = 20_000
    """Longest /answer context, in characters (422 beyond)."""
    max_text_chars: int = 10_000
    """Longest question or /classify, /encode text, in characters (422 beyond)."""
    # Also the length /classify and /encode cut texts to: its own help, SquadSettings' default.
    max_seq_length: int = field(default=SquadSettings.max_seq_length, kw_only=True)
    """/answer: tokens per window of a context ([CLS] question [SEP] part [SEP]); /classify and
    /encode: tokens kept of a text (or pair)."""
    pooling: Pooling = "mean"
    """/encode: mean (sentence-transformers style), cls, or pooled (BERT's pooler)."""
    normalize: bool = False
    """/encode: unit-length embeddings."""
    graceful_timeout_s: float = 30.0
    """On SIGTERM/SIGINT: seconds to let requests in flight finish before closing."""
    access_log: bool = False
    """Log every request (uvicorn's access log)."""
    runtime: RuntimeArgs = field(default_factory=RuntimeArgs)

    def __post_init__(self) -> None:
        check_types(self, "serve")
        super().__post_init__()
        if not self.checkpoint.strip():
            raise ConfigError("the checkpoint is empty; give a path or a Hugging Face Hub id")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be in [0, 65535], got {self.port}")
        check_at_least(self, 1, ("max_batch_size", "max_pending", "predict_batch_size", "max_body_bytes",
                                 "max_context_chars", "max_text_chars"))
        for name in ("batch_timeout_ms", "graceful_timeout_s"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"--{name} must be at least 0, got {getattr(self, name)}")
