"""What stands between the network and the endpoints: who may ask, how a body must come, and how
long a client may take.

- `Guard` (ASGI middleware): the Host header must name this server (403 otherwise: a web page
  cannot read it through a DNS name rebound to its address); with a token, `Authorization:
  Bearer <token>` (401). Health probes are exempt from both: probes send neither. A refused
  request's connection is closed: its body is never read.
- `BodyReader` (ASGI middleware): a request with a body must say `Content-Type:
  application/json` (415), as a web page cannot without the CORS preflight this server never
  grants (the Open Inference Protocol's binary tensors announce themselves by their own header,
  which a page cannot send either); the body is read here, within --max_body_bytes (413) and
  --body_timeout_s (408), and a declared over-long body is read only until that deadline. The
  connection is then closed. A client that hangs up, before its body is in or while its request
  waits for the model, ends its request quietly (one debug line, no traceback) and its remaining
  work is dropped.
- `HeadDeadlineH11Protocol`: uvicorn's HTTP/1.1 protocol, closing a connection whose request
  line and headers are not all in within --header_timeout_s (uvicorn itself never times them out).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging

from bertforge.serve import deps  # noqa: F401 -- first: names a missing package of the serve extra

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

HEALTH_PATHS = frozenset({"/health", "/v2/health/live", "/v2/health/ready"})
# Triton's binary tensor data extension of the Open Inference Protocol: the JSON part's length.
BINARY_HEADER = b"inference-header-content-length"


async def send_error(send, status: int, message: str, headers: list[tuple[bytes, bytes]] = (),
                     close: bool = False) -> None:
    """A JSON `{"error": message}` response; `close` also ends the connection after it."""
    body = json.dumps({"error": message}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    if close:
        head.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


def host_name(value: bytes) -> str:
    """The name part of a Host header: `[::1]:8000` -> `::1`, `LocalHost.:80` -> `localhost`."""
    text = value.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1:text.find("]")] if "]" in text else text
    return text.rsplit(":", 1)[0].rstrip(".") if text.count(":") == 1 else text.rstrip(".")


class Guard:
    """Host and bearer-token checks (see the module docstring). `hosts` None: any host;
    `token` None: no token needed."""

    def __init__(self, app, hosts: frozenset[str] | None, token: str | None):
        self.app = app
        self.hosts = hosts
        self.token = None if token is None else f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in HEALTH_PATHS:
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.hosts is not None:
            name = host_name(headers.get(b"host", b""))
            if name not in self.hosts:
                return await send_error(send, 403, f"Host {name!r} is not one this server answers to "
                                                   f"({', '.join(sorted(self.hosts))}; see --allowed_hosts)",
                                        close=True)
        if self.token is not None and not hmac.compare_digest(headers.get(b"authorization", b""), self.token):
            return await send_error(send, 401, "this server needs the header 'Authorization: Bearer <token>' "
                                               "with the token it was started with (--auth_token_env)",
                                    headers=[(b"www-authenticate", b"Bearer")], close=True)
        return await self.app(scope, receive, send)


class BodyReader:
    """Content type, size and time limits of request bodies (see the module docstring)."""

    def __init__(self, app, max_bytes: int, timeout_s: float):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if kind != b"application/json" and BINARY_HEADER not in headers:
            return await send_error(send, 415, (
                f"Content-Type must be application/json, got {kind.decode('latin-1') or 'none'}; with curl, "
                "pass -H 'Content-Type: application/json' (-d alone sends a form type)"), close=True)
        declared = headers.get(b"content-length", b"")
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        if declared.isdigit() and int(declared) > self.max_bytes:
            # Read what arrives until the deadline, so that the client reads the answer instead of
            # a reset connection in the middle of its upload; then close.
            await self._read(receive, deadline, limit=None)
            return await send_error(send, 413, self._too_large(int(declared)), close=True)
        body, outcome = await self._read(receive, deadline, limit=self.max_bytes)
        if outcome == "disconnected":
            log.debug("%s hung up before its request body was in", _client(scope))
            return None
        if outcome == "too large":
            await self._read(receive, deadline, limit=None)
            return await send_error(send, 413, self._too_large(len(body), "at least "), close=True)
        if outcome == "timeout":
            return await send_error(send, 408, f"the request body did not arrive within {self.timeout_s:g} s "
                                               "(--body_timeout_s)", close=True)
        return await self._call(scope, body, receive, send)

    async def _read(self, receive, deadline: float, limit: int | None) -> tuple[bytes, str]:
        """The body as it comes, until its end ("complete"), the deadline ("timeout"), the client
        leaving ("disconnected") or, with a `limit`, one byte too many ("too large"); without a
        limit, what arrives is dropped."""
        loop = asyncio.get_running_loop()
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
            except asyncio.TimeoutError:
                return b"".join(chunks), "timeout"
            if message["type"] == "http.disconnect":
                return b"".join(chunks), "disconnected"
            chunk = message.get("body", b"")
            size += len(chunk)
            if limit is not None:
                chunks.append(chunk)
                if size > limit:
                    return b"".join(chunks), "too large"
            if not message.get("more_body", False):
                return b"".join(chunks), "complete"

    def _too_large(self, size: int, prefix: str = "") -> str:
        return (f"request body of {prefix}{size} bytes is over this server's limit of {self.max_bytes} "
                f"bytes (--max_body_bytes)")

    async def _call(self, scope, body: bytes, receive, send) -> None:
        """The application with the body read, cancelled if the client hangs up before its answer."""
        left = asyncio.Event()
        delivered = False
        finished = False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await left.wait()
            return {"type": "http.disconnect"}

        async def sending(message):
            nonlocal finished
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                finished = True
            await send(message)

        app = asyncio.ensure_future(self.app(scope, replay, sending))
        watch = asyncio.ensure_future(receive())  # http.disconnect: the client left, or the response is out
        await asyncio.wait({app, watch}, return_when=asyncio.FIRST_COMPLETED)
        if not app.done() and not finished:
            left.set()
            app.cancel()
            log.debug("%s hung up before its answer; its request is dropped", _client(scope))
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
        try:
            await app
        except asyncio.CancelledError:
            if not left.is_set():
                raise


def _client(scope) -> str:
    host, port = scope.get("client") or ("a client", 0)
    return f"{host}:{port}"


class HeadDeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for the request head (see the module docstring).
    Waiting for a head: from the connection's start, and from each response's end."""

    head_timeout_s = 10.0  # set by `with_head_timeout`

    @classmethod
    def with_head_timeout(cls, seconds: float) -> type[HeadDeadlineH11Protocol]:
        return type(cls.__name__, (cls,), {"head_timeout_s": seconds})

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._head_timer = None
        self._arm()

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and not self.cycle.response_complete:
            self._disarm()  # a head is in: the body's deadline is BodyReader's

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._expired)

    def _disarm(self) -> None:
        if getattr(self, "_head_timer", None) is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _expired(self) -> None:
        self._head_timer = None
        if self.cycle is None or self.cycle.response_complete:
            log.debug("closing a connection whose request head did not arrive within %g s", self.head_timeout_s)
            self.transport.close()
