"""Running the application: listen, load the model behind a live server, drain on SIGTERM.

Order of a server's life, and why:
1. Flags and the checkpoint's location are checked before anything listens: a typo is a one-line
   error, not a server that comes up and dies.
2. The socket is bound (a port in use is a one-line error), the application starts and answers
   at once: liveness 200, readiness 503 while the model loads on a thread of its own (a Hub
   download, a large checkpoint, a warm-up that compiles can take minutes; an orchestrator then
   sees a live process that is not ready, instead of a closed port it may kill). A model that
   cannot be loaded, or flags it cannot serve (--max_seq_length beyond its positions), stop the
   server with that error.
3. SIGTERM: readiness fails at once; requests are still accepted for --drain_s (load balancers
   learn from readiness), then uvicorn stops accepting and lets requests in flight finish for
   --graceful_timeout_s; whatever is still unanswered then gets a JSON 503, and the process ends
   by re-raising the signal (exit status 143, a clean stop to service managers). SIGINT (Ctrl-C)
   skips the drain; a second one stops at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections.abc import Mapping
from pathlib import Path

from bertforge.serve import deps  # noqa: F401 -- first: names a missing package of the serve extra

import uvicorn

from bertforge.errors import ConfigError
from bertforge.serve.app import build_app
from bertforge.serve.config import ServeArgs
from bertforge.serve.guard import HeadDeadlineH11Protocol
from bertforge.serve.service import Lifecycle

log = logging.getLogger(__name__)

# uvicorn's own graceful timeout is this much longer than ours, so that the requests we answer
# with 503 at our deadline are sent before uvicorn cancels what is left.
_SEND_MARGIN_S = 1.0


class DrainingServer(uvicorn.Server):
    """uvicorn's server with the drain and the 503 deadline above, stopping too when the model
    cannot be loaded."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, drain_s: float, graceful_timeout_s: float):
        super().__init__(config)
        self.lifecycle = lifecycle
        self.drain_s = drain_s
        self.graceful_timeout_s = graceful_timeout_s
        self.exit_at: float | None = None
        self.deadline_set = False

    def handle_exit(self, sig: int, frame) -> None:
        first = not self.lifecycle.draining
        super().handle_exit(sig, frame)  # records the signal, to re-raise it once stopped
        self.lifecycle.draining = True
        if first and sig == signal.SIGTERM and self.drain_s > 0:
            log.info("SIGTERM: not ready any more; accepting requests for %g s more (--drain_s)", self.drain_s)
            self.should_exit = False
            self.exit_at = time.monotonic() + self.drain_s

    async def on_tick(self, counter: int) -> bool:
        if self.exit_at is not None and time.monotonic() >= self.exit_at:
            self.should_exit = True
        if self.lifecycle.failed.is_set():
            self.should_exit = True
        stopping = await super().on_tick(counter)
        if stopping and not self.deadline_set:
            self.deadline_set = True
            asyncio.get_running_loop().call_later(self.graceful_timeout_s, self.lifecycle.abort)
        return stopping


def check_checkpoint(checkpoint: str) -> None:
    """A checkpoint that is neither on disk nor a Hugging Face Hub id fails here, before the
    server listens (a Hub id is fetched while the server already answers); a `bertforge export`
    directory is for --engine onnxruntime, which the loading checks."""
    from bertforge.checkpoint import detect_format
    from bertforge.checkpoint.hub import is_hub_id
    from bertforge.engine.ort import is_export_dir

    if is_export_dir(checkpoint):
        return
    if Path(checkpoint).exists() or Path(f"{checkpoint}.index").is_file() or not is_hub_id(checkpoint):
        detect_format(checkpoint)


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port; ConfigError when that address cannot be had."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --host or --port"
                          ) from None
    return sock


def auth_token(args: ServeArgs, environ: Mapping[str, str]) -> str | None:
    """The token named by --auth_token_env, read from `environ` (the caller's environment)."""
    if args.auth_token_env is None:
        return None
    token = environ.get(args.auth_token_env, "")
    if len(token.strip()) < 16:
        raise ConfigError(f"--auth_token_env {args.auth_token_env}: that environment variable is "
                          f"{'not set' if not token else 'shorter than 16 characters'}; put a long random "
                          "secret in it (e.g. `openssl rand -hex 32`)")
    return token.strip()


def serve(args: ServeArgs, environ: Mapping[str, str]) -> None:
    """Serve until SIGINT or SIGTERM (see the module docstring); raises the error that kept the
    model from loading. `environ`: where --auth_token_env's variable is read."""
    from bertforge.engine import check_inference
    from bertforge.serve.work import load_predictor
    from bertforge.train.runtime import resolve_device

    token = auth_token(args, environ)
    runtime = args.runtime
    check_inference(runtime.precision, runtime.engine, resolve_device(runtime.device, 0), runtime.streams)
    check_checkpoint(args.checkpoint)
    sock = listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    app, lifecycle = build_app(args, load_predictor, token)
    config = uvicorn.Config(app, log_config=None, access_log=args.access_log, lifespan="on",
                            http=HeadDeadlineH11Protocol.with_head_timeout(args.header_timeout_s),
                            timeout_graceful_shutdown=args.graceful_timeout_s + _SEND_MARGIN_S)
    url_host = f"[{host}]" if ":" in host else host
    log.info("listening on http://%s:%d; loading %s as model %r (GET /v2/health/ready: 200 once ready)",
             url_host, port, args.checkpoint, args.model_name)
    if args.host_names() is None and token is None:
        log.warning("listening on every interface without --auth_token_env: anyone who can reach port %d can "
                    "use this model", port)
    DrainingServer(config, lifecycle, args.drain_s, args.graceful_timeout_s).run(sockets=[sock])
    if lifecycle.error is not None:
        raise lifecycle.error
