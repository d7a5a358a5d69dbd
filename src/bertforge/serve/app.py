"""The HTTP application: endpoints, request limits and errors, on FastAPI, run by uvicorn.

    GET  /health     {"status": "ok", "model", "head", "endpoints", "batches", "requests"}
    POST /answer     {"question", "context"}          -> {"answer", "score", "start", "end"}
    POST /classify   {"text_a", "text_b" (optional)}  -> {"label", "score", "probabilities"}
    POST /encode     {"text"}                         -> {"embedding": [H floats]}

Which of the three a server offers depends on the model's head (answer: qa, classify:
classification, encode: any). Bad input is a 4xx with {"error": "<what is wrong>"}, never a 5xx:
400 for a body that is not JSON, 404 for an endpoint this model does not offer, 413 for a body
over max_body_bytes, 422 for missing, mistyped, empty or over-long fields; 503 when more than
max_pending requests wait.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from bertforge.data.squad import SquadSettings
from bertforge.errors import BertforgeError, ConfigError
from bertforge.serve.batcher import Batcher, Busy
from bertforge.serve.config import ServeArgs

try:
    import uvicorn
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, StrictStr, ValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as e:  # the serve extra is not installed
    raise ConfigError(f"bertforge serve needs FastAPI and uvicorn ({e.name} is missing): "
                      "pip install \"bertforge[serve]\"") from None

log = logging.getLogger(__name__)


class AnswerRequest(BaseModel):
    question: StrictStr
    context: StrictStr


class ClassifyRequest(BaseModel):
    text_a: StrictStr
    text_b: StrictStr | None = None


class EncodeRequest(BaseModel):
    text: StrictStr


# Each endpoint's request, and the ServeArgs limit on the length of each of its texts.
REQUESTS: dict[str, tuple[type[BaseModel], dict[str, str]]] = {
    "answer": (AnswerRequest, {"question": "max_text_chars", "context": "max_context_chars"}),
    "classify": (ClassifyRequest, {"text_a": "max_text_chars", "text_b": "max_text_chars"}),
    "encode": (EncodeRequest, {"text": "max_text_chars"}),
}


# ---- request body limit --------------------------------------------------------------------


class BodyLimit:
    """ASGI middleware: 413 for a body over `max_bytes`, by its Content-Length before anything
    is read, or as soon as a body without one (chunked) passes the limit."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await _drain(receive)
            return await _send_error(send, 413, self._message(int(length)))
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, self._message(received, "at least "))
            return message

        return await self.app(scope, limited, send)

    def _message(self, size: int, prefix: str = "") -> str:
        return (f"request body of {prefix}{size} bytes is over this server's limit of {self.max_bytes} "
                f"bytes (--max_body_bytes)")


async def _drain(receive) -> None:
    """Read and drop a refused body, so the client gets its answer instead of a reset connection."""
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False) and message["type"] == "http.request"


async def _send_error(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# ---- the application -----------------------------------------------------------------------


async def parse(request: Request, model: type[BaseModel]) -> BaseModel:
    """The request body as `model`, whatever its Content-Type says (curl -d sends a form type);
    400 for a body that is not JSON, 422 for missing or mistyped fields."""
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as e:
        raise HTTPException(*_field_errors(e)) from None


def _field_errors(exc: ValidationError) -> tuple[int, str]:
    """One message for pydantic's list of errors."""
    problems = []
    for error in exc.errors():
        if error["type"] == "json_invalid":
            return 400, f"request body is not valid JSON ({error.get('ctx', {}).get('error', error['msg'])})"
        where = ".".join(str(p) for p in error["loc"])
        if error["type"] == "missing":
            problems.append(f"missing field {where!r}")
        elif error["type"] == "model_type":
            problems.append("the body must be a JSON object")
        else:
            problems.append(f"{where or 'body'}: {error['msg']}")
    return 422, "; ".join(problems)


def build_app(predictor, args: ServeArgs) -> FastAPI:
    """The FastAPI application serving `predictor` (a `bertforge.api.Predictor`)."""
    model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bertforge-model")
    settings = SquadSettings.of(args)

    def answer(items: list[AnswerRequest]) -> list[dict]:
        answers = predictor.answer([r.question for r in items], [r.context for r in items], settings=settings)
        return [{"answer": a.text, "score": a.score, "start": a.start, "end": a.end} for a in answers]

    def classify(items: list[ClassifyRequest]) -> list[dict]:
        texts = [r.text_a if r.text_b is None else (r.text_a, r.text_b) for r in items]
        return [{"label": c.label, "score": c.score, "probabilities": c.probabilities}
                for c in predictor.classify(texts, max_seq_length=args.max_seq_length)]

    def encode(items: list[EncodeRequest]) -> list[dict]:
        vectors = predictor.encode([r.text for r in items], pooling=args.pooling, normalize=args.normalize,
                                   max_seq_length=args.max_seq_length)
        return [{"embedding": v.tolist()} for v in vectors]

    functions = {"answer": answer, "classify": classify, "encode": encode}
    offered = offered_tasks(predictor)
    batchers = {name: Batcher(functions[name], model_thread, args.max_batch_size, args.batch_timeout_ms / 1000,
                              args.max_pending) for name in offered}

    @asynccontextmanager
    async def lifespan(_app):
        for b in batchers.values():
            b.start()
        yield
        for b in batchers.values():
            await b.stop()
        model_thread.shutdown(wait=True)
        log.info("shut down after %d requests in %d batches", sum(b.items for b in batchers.values()),
                 sum(b.batches for b in batchers.values()))

    app = FastAPI(title="bertforge", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, max_bytes=args.max_body_bytes)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException):
        message = exc.detail
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint; this server offers {', '.join(_endpoints(offered))}"
        elif exc.status_code == 405:
            message = f"{message}: use GET /health, POST for the others"
        return JSONResponse({"error": message}, status_code=exc.status_code)

    def check_length(what: str, text: str | None, limit: int, flag: str) -> None:
        if text is None:
            return
        if not text.strip():
            raise HTTPException(422, f"{what} is empty")
        if len(text) > limit:
            raise HTTPException(422, f"{what} has {len(text)} characters; this server takes at most {limit} "
                                     f"(--{flag})")

    async def run(name: str, item: Any) -> dict:
        try:
            return await batchers[name].submit(item)
        except Busy as e:
            raise HTTPException(503, f"the server is busy ({e}); retry shortly") from None
        except BertforgeError as e:
            raise HTTPException(422, str(e)) from None

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": predictor.source, "head": predictor.head,
                "endpoints": _endpoints(offered), "batches": sum(b.batches for b in batchers.values()),
                "requests": sum(b.items for b in batchers.values())}

    def endpoint(name: str, model: type[BaseModel], limits: dict[str, str]):
        async def handle(request: Request) -> dict:
            if name not in batchers:
                raise HTTPException(404, f"/{name} needs a model with a trained "
                                         f"{'qa' if name == 'answer' else 'classification'} head; this server's "
                                         f"model has a {predictor.head} head and offers "
                                         f"{', '.join(_endpoints(offered))}")
            item = await parse(request, model)
            for field_name, flag in limits.items():
                check_length(field_name, getattr(item, field_name), getattr(args, flag), flag)
            return await run(name, item)
        return handle

    for name, (model, limits) in REQUESTS.items():
        app.add_api_route(f"/{name}", endpoint(name, model, limits), methods=["POST"])
    return app


def offered_tasks(predictor) -> list[str]:
    """What the model can do: encode always; answer with a trained QA head, classify with a
    trained classification head."""
    trained = {"qa": "answer", "classification": "classify"}.get(predictor.head)
    return [name for name in ("answer", "classify", "encode")
            if name == "encode" or (name == trained and predictor.loaded.head_loaded)]


def _endpoints(offered) -> list[str]:
    return ["/health", *(f"/{name}" for name in offered)]


def serve(args: ServeArgs) -> None:
    """Load the model, then serve until SIGINT or SIGTERM: the server stops accepting
    connections, lets requests in flight finish (up to graceful_timeout_s), and exits."""
    from bertforge.api import Predictor
    from bertforge.runconfig import ModelArgs

    predictor = Predictor(ModelArgs(init_checkpoint=args.checkpoint), args.runtime,
                          batch_size=args.predict_batch_size)
    app = build_app(predictor, args)
    log.info("serving %s (%s head) on http://%s:%d: %s", args.checkpoint, predictor.head, args.host, args.port,
             ", ".join(_endpoints(offered_tasks(predictor))))
    config = uvicorn.Config(app, host=args.host, port=args.port, log_config=None, access_log=args.access_log,
                            timeout_graceful_shutdown=args.graceful_timeout_s, lifespan="on")
    uvicorn.Server(config).run()
