"""The flags of `bertforge serve` (read to print `--help`: no torch here)."""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, field
from pathlib import PurePath

from bertforge.data.squad import SquadSettings
from bertforge.errors import ConfigError
from bertforge.runconfig import InferenceRuntimeArgs, Pooling
from bertforge.validation import check_at_least, check_types

# A model name is a URL path segment of the Open Inference Protocol routes (/v2/models/NAME/...).
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Checkpoint files whose directory names the model (a TF prefix, an NVIDIA .pt, HF weights).
_CHECKPOINT_FILES = (".ckpt", ".pt", ".pth", ".safetensors", ".bin")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass  # not kw_only: jsonargparse makes only positional-capable fields positional (serve CHECKPOINT)
class ServeArgs(SquadSettings):
    """Serve a model's answer / classify / encode over HTTP: simple JSON routes and the Open
    Inference Protocol (KServe v2), with Prometheus metrics and health probes. Windows of several
    requests share each forward pass, taken from the waiting requests in turn. /answer reads
    contexts and decodes answers with the SQuAD settings (`SquadSettings`, the flags of
    `predict squad`)."""

    checkpoint: str
    """The model: a bertforge run directory, a Hugging Face directory, a Google TF or NVIDIA
    checkpoint, or a Hugging Face Hub id."""
    host: str = "127.0.0.1"
    """Address to listen on (0.0.0.0: every interface; then see --allowed_hosts and --auth_token_env)."""
    port: int = 8000
    """TCP port to listen on (0: any free port; the log says which)."""
    model_name: str | None = None
    """The model's name in the Open Inference Protocol routes (/v2/models/NAME/infer); default:
    the checkpoint directory's name, with characters other than letters, digits, _ . - made _."""
    bert_model: str | None = None
    """The bert_config.json when it is not beside the checkpoint (also --bert_config_file)."""
    vocab_file: str | None = None
    """WordPiece vocab.txt; defaults to the one beside the checkpoint."""
    do_lower_case: bool | None = None
    """True for uncased models. Defaults to what the checkpoint records; required otherwise."""
    max_batch_size: int = 32
    """Most sequences (answer windows, texts) in one forward pass, taken from the waiting requests
    in turn: a short request waits about one forward pass however long the others are."""
    batch_timeout_ms: float = 5.0
    """How long a forward pass that is not full waits for more requests to join it, in milliseconds."""
    max_pending: int = 1024
    """Requests waiting for the model beyond this many are refused (503) instead of queued."""
    max_items_per_request: int = 32
    """Most items in the list a request body may hold (413 beyond)."""
    max_windows_per_request: int = 64
    """Most sequences one request may make the model read (413 beyond): an /answer context gives one
    window per --doc_stride tokens, a /classify or /encode text one. This, not the character
    limits, bounds a request's compute."""
    max_body_bytes: int = 1_000_000
    """Largest request body accepted; larger ones get 413."""
    max_context_chars: int = 20_000
    """Longest /answer context, in characters (422 beyond)."""
    max_text_chars: int = 10_000
    """Longest question or /classify, /encode text, in characters (422 beyond)."""
    # Also the length /classify and /encode cut texts to: its own help, SquadSettings' default.
    max_seq_length: int = field(default=SquadSettings.max_seq_length, kw_only=True)
    """/answer: tokens per window of a context ([CLS] question [SEP] part [SEP]); /classify and
    /encode: tokens kept of a text (or pair). At most the model's max_position_embeddings."""
    pooling: Pooling = "mean"
    """/encode: mean (sentence-transformers style), cls, or pooled (BERT's pooler)."""
    normalize: bool = False
    """/encode: unit-length embeddings."""
    allowed_hosts: str | None = None
    """Host names (comma-separated) that requests may address this server by; others get 403, so
    that a web page cannot reach the server through a DNS name rebound to its address. '*': any.
    Default: localhost, 127.0.0.1 and ::1 on a loopback address, the address itself on another,
    any on 0.0.0.0 or ::."""
    auth_token_env: str | None = None
    """Name of an environment variable that holds a secret token: every request but the health
    probes must then carry `Authorization: Bearer <token>` (401 otherwise). Use it whenever the
    server listens beyond localhost."""
    header_timeout_s: float = 10.0
    """A connection whose request line and headers have not all arrived this many seconds after it
    opened (or after its previous response) is closed."""
    body_timeout_s: float = 30.0
    """A request body that has not all arrived this many seconds after its headers gets 408 (413
    when it is over --max_body_bytes) and the connection is closed."""
    drain_s: float = 0.0
    """On SIGTERM: seconds to keep accepting requests while readiness already fails, so that load
    balancers stop sending new ones (Kubernetes: about the readiness probe's period x failures)."""
    graceful_timeout_s: float = 30.0
    """Then, seconds to let requests in flight finish; those still unanswered get 503."""
    docs: bool = True
    """Serve the OpenAPI description (/openapi.json) and its pages (/docs, /redoc)."""
    access_log: bool = False
    """Log every request (uvicorn's access log)."""
    runtime: InferenceRuntimeArgs = field(default_factory=InferenceRuntimeArgs)

    def __post_init__(self) -> None:
        check_types(self, "serve")
        super().__post_init__()
        if not self.checkpoint.strip():
            raise ConfigError("the checkpoint is empty; give a path or a Hugging Face Hub id")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be in [0, 65535], got {self.port}")
        check_at_least(self, 1, ("max_batch_size", "max_pending", "max_items_per_request",
                                 "max_windows_per_request", "max_body_bytes", "max_context_chars",
                                 "max_text_chars"))
        for name in ("batch_timeout_ms", "drain_s", "graceful_timeout_s"):
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                raise ConfigError(f"--{name} must be a number of at least 0, got {getattr(self, name)}")
        for name in ("header_timeout_s", "body_timeout_s"):
            if not (getattr(self, name) > 0 and math.isfinite(getattr(self, name))):
                raise ConfigError(f"--{name} must be a positive number of seconds, got {getattr(self, name)}")
        for name in ("bert_model", "vocab_file"):
            if getattr(self, name) is not None and not getattr(self, name).strip():
                raise ConfigError(f"--{name} is empty; give a path (or leave the flag out)")
        if self.model_name is None:
            self.model_name = default_model_name(self.checkpoint)
        elif not MODEL_NAME.fullmatch(self.model_name):
            raise ConfigError(f"--model_name {self.model_name!r}: use letters, digits, _ . - (starting with a "
                              "letter or digit, at most 128 characters); it is part of the URL")
        if self.auth_token_env is not None and not ENV_NAME.fullmatch(self.auth_token_env):
            raise ConfigError(f"--auth_token_env takes the name of an environment variable (letters, digits, _), "
                              f"got {self.auth_token_env!r}")
        self.host_names()

    def host_names(self) -> frozenset[str] | None:
        """The Host header names requests may use (lower case, without port); None: any."""
        if self.allowed_hosts is None:
            if self.host in ("0.0.0.0", "::", ""):
                return None
            return frozenset(LOOPBACK_NAMES) if is_loopback(self.host) else frozenset({self.host.lower()})
        names = [n.strip().lower().strip("[]") for n in self.allowed_hosts.split(",") if n.strip()]
        if not names:
            raise ConfigError("--allowed_hosts is empty; give host names, comma-separated, or '*' for any")
        return None if "*" in names else frozenset(names)


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) is this machine's loopback."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_model_name(checkpoint: str) -> str:
    """The checkpoint directory's name (a Hub id's model name), as a URL-safe model name."""
    path = PurePath(checkpoint.rstrip("/\\"))
    if path.suffix in _CHECKPOINT_FILES and path.parent.name:
        path = path.parent
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", path.name).lstrip("_.-")[:128]
    return name or "model"
