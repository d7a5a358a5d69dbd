"""The HTTP application on FastAPI, run by uvicorn: simple JSON routes, the Open Inference
Protocol, metrics, health, and the server's life from loading to draining.

    GET  /health     200 {"status": "ok", "model", "head", "endpoints", "infer", "batches", "requests"};
                     503 {"status": "loading" | "draining", "model"}
    POST /answer     {"question", "context"}          -> {"answer", "score", "start", "end"}
    POST /classify   {"text_a", "text_b" (optional)}  -> {"label", "score", "probabilities"}
    POST /encode     {"text"}                         -> {"embedding": [H floats]}
    GET  /metrics    Prometheus metrics (`metrics`)
    /v2/...          the Open Inference Protocol (`v2`)
    GET  /docs       the OpenAPI pages (/openapi.json, /redoc)

A simple route takes one item (a JSON object, answered by one) or a list of up to
max_items_per_request (answered by a list). Which routes a server offers depends on the model's
head (answer: qa, classify: classification, encode: any). Bad input is a 4xx with
{"error": "<what is wrong>"}: 400 for a body that is not JSON, 401/403 for a missing token or a
foreign Host (`guard`), 404 for a route this model does not offer, 408 for a body that is too slow,
413 for a body, list or request over its limit, 415 for a body that is not application/json, 422
for missing, mistyped, empty or over-long fields; 503 while the model loads, when more than
max_pending requests wait, and for requests still unanswered when a graceful shutdown's time is up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from bertforge.serve import deps  # noqa: F401 -- first: names a missing package of the serve extra

import pydantic_core
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, StrictStr, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from bertforge.errors import BertforgeError
from bertforge.serve import v2
from bertforge.serve.config import ServeArgs
from bertforge.serve.batcher import Busy, ShuttingDown
from bertforge.serve.guard import BINARY_HEADER, BodyReader, Guard
from bertforge.serve.metrics import Instrument, Metrics
from bertforge.serve.service import Lifecycle, TooMuchWork

log = logging.getLogger(__name__)


class AnswerRequest(BaseModel):
    question: StrictStr
    context: StrictStr


class ClassifyRequest(BaseModel):
    text_a: StrictStr
    text_b: StrictStr | None = None


class EncodeRequest(BaseModel):
    text: StrictStr


# Each simple route's item, and the ServeArgs limit on the length of each of its texts.
REQUESTS: dict[str, tuple[type[BaseModel], dict[str, str]]] = {
    "answer": (AnswerRequest, {"question": "max_text_chars", "context": "max_context_chars"}),
    "classify": (ClassifyRequest, {"text_a": "max_text_chars", "text_b": "max_text_chars"}),
    "encode": (EncodeRequest, {"text": "max_text_chars"}),
}


def parse_items(body: bytes, model: type[BaseModel], max_items: int) -> tuple[list[BaseModel], bool]:
    """The body's items and whether it was a single object; HTTPException for a body that is not
    JSON (400), a list over `max_items` (413), missing or mistyped fields (422)."""
    try:
        value = pydantic_core.from_json(body)
    except ValueError as e:
        raise HTTPException(400, f"request body is not valid JSON ({e})") from None
    if isinstance(value, dict):
        raw, single = [value], True
    elif isinstance(value, list):
        raw, single = value, False
        if not raw:
            raise HTTPException(422, "the list of items is empty")
        if len(raw) > max_items:
            raise HTTPException(413, f"the list has {len(raw)} items; this server takes at most {max_items} in one "
                                     "request (--max_items_per_request)")
    else:
        raise HTTPException(422, "the body must be a JSON object (or a list of them)")
    items = []
    for i, item in enumerate(raw):
        where = "" if single else f"item {i}: "
        if not isinstance(item, dict):
            raise HTTPException(422, f"{where}must be a JSON object, got {type(item).__name__}")
        try:
            items.append(model.model_validate(item))
        except ValidationError as e:
            raise HTTPException(422, where + _field_errors(e)) from None
    return items, single


def _field_errors(exc: ValidationError) -> str:
    """One message for pydantic's list of errors."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        problems.append(f"missing field {where!r}" if error["type"] == "missing" else f"{where}: {error['msg']}")
    return "; ".join(problems)


def check_lengths(args: ServeArgs, name: str, values: Mapping[str, str | None], where: str = "") -> None:
    """422 for an empty text or one over its character limit."""
    for field_name, flag in REQUESTS[name][1].items():
        text = values.get(field_name)
        if text is None:
            continue
        if not text.strip():
            raise HTTPException(422, f"{where}{field_name} is empty")
        limit = getattr(args, flag)
        if len(text) > limit:
            raise HTTPException(422, f"{where}{field_name} has {len(text)} characters; this server takes at most "
                                     f"{limit} (--{flag})")


def _openapi_body(schema: dict) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def build_app(args: ServeArgs, load: Callable[[ServeArgs], Any], token: str | None = None
              ) -> tuple[FastAPI, Lifecycle]:
    """The application serving the model that `load(args)` returns (a `bertforge.api.Predictor`,
    loaded on a thread of its own once the application starts), and its Lifecycle."""
    # Each refers to the other; the lambdas look their names up when called, once both exist.
    lifecycle = Lifecycle(args, on_step=lambda units, jobs: metrics.step(units, jobs))
    metrics = Metrics(queue=lambda: lifecycle.service.scheduler.waiting if lifecycle.service else 0,
                      queued_units=lambda: lifecycle.service.scheduler.waiting_units if lifecycle.service else 0,
                      ready=lambda: float(lifecycle.ready))
    name = args.model_name

    @asynccontextmanager
    async def lifespan(_app):
        lifecycle.start_loading(load)
        yield
        await lifecycle.stop()

    docs = args.docs
    app = FastAPI(title="bertforge", summary=f"BERT model {name} over HTTP", lifespan=lifespan,
                  docs_url="/docs" if docs else None, redoc_url="/redoc" if docs else None,
                  openapi_url="/openapi.json" if docs else None)
    # Added innermost first: Instrument sees every answer, Guard runs before any body is read.
    app.add_middleware(BodyReader, max_bytes=args.max_body_bytes, timeout_s=args.body_timeout_s)
    app.add_middleware(Guard, hosts=args.host_names(), token=token)
    app.add_middleware(Instrument, metrics=metrics, routes=lambda: app.routes)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such route; this server offers {', '.join(_routes(lifecycle, name))}"
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "another method")
            message = f"{request.method} {request.url.path} is not allowed; it takes {allowed}"
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, exc: Exception):
        return JSONResponse({"error": f"internal error ({type(exc).__name__}: {exc}); the server log has the "
                                      "traceback"}, status_code=500)

    def service_for(endpoint: str):
        if lifecycle.service is None:
            raise HTTPException(503, "the model is still loading; GET /v2/health/ready answers 200 once it is ready")
        service = lifecycle.service
        if endpoint not in service.works:
            head = {"answer": "qa", "classify": "classification"}[endpoint]
            raise HTTPException(404, f"/{endpoint} needs a model with a trained {head} head; this server's model "
                                     f"has a {service.facts.head} head and offers "
                                     f"{', '.join(_routes(lifecycle, name))}")
        return service

    async def run(endpoint: str, items: list[tuple]) -> list[dict]:
        service = service_for(endpoint)
        try:
            return await service.run(endpoint, items)
        except Busy as e:
            raise HTTPException(503, f"the server is busy ({e}); retry shortly") from None
        except ShuttingDown as e:
            raise HTTPException(503, f"{e}; retry shortly") from None
        except TooMuchWork as e:
            raise HTTPException(413, str(e)) from None
        except BertforgeError as e:
            raise HTTPException(422, str(e)) from None

    # ---- health and metrics ------------------------------------------------------------

    @app.get("/health", summary="200 when ready; 503 while loading or draining")
    async def health():
        body: dict[str, Any] = {"status": "ok" if lifecycle.ready else lifecycle.phase, "model": name}
        if lifecycle.service is not None:
            s = lifecycle.service
            body.update(head=s.facts.head, endpoints=["/health", *(f"/{e}" for e in s.facts.endpoints)],
                        infer=f"/v2/models/{name}/infer", batches=s.scheduler.steps, requests=s.scheduler.jobs)
        return JSONResponse(body, status_code=200 if lifecycle.ready else 503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus():
        data, content_type = metrics.exposition()
        return Response(data, media_type=content_type)

    # ---- simple routes -----------------------------------------------------------------

    def simple(endpoint: str, model: type[BaseModel]):
        async def handle(request: Request):
            items, single = parse_items(await request.body(), model, args.max_items_per_request)
            for i, item in enumerate(items):
                check_lengths(args, endpoint, item.model_dump(), "" if single else f"item {i}: ")
            values = [tuple(item.model_dump().values()) for item in items]
            results = await run(endpoint, values)
            return results[0] if single else results
        return handle

    for endpoint, (model, _) in REQUESTS.items():
        schema = model.model_json_schema()
        app.add_api_route(f"/{endpoint}", simple(endpoint, model), methods=["POST"],
                          summary=f"{endpoint}: one item, or a list of up to {args.max_items_per_request}",
                          openapi_extra=_openapi_body({"oneOf": [schema, {"type": "array", "items": schema}]}))

    # ---- the Open Inference Protocol ---------------------------------------------------

    def known(model_name: str) -> None:
        if model_name != name:
            raise HTTPException(404, f"model {model_name!r} not found; this server serves {name!r}")

    @app.get("/v2", summary="server metadata")
    async def server_metadata():
        from bertforge import __version__
        return {"name": "bertforge", "version": __version__, "extensions": v2.EXTENSIONS}

    @app.get("/v2/health/live", summary="200 while the process serves")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready", summary="200 when the model is loaded and the server is not draining")
    async def ready():
        if lifecycle.ready:
            return {"ready": True}
        return JSONResponse({"ready": False, "error": f"the server is {lifecycle.phase}"}, status_code=503)

    @app.get("/v2/models/{model_name}", summary="model metadata")
    async def model_metadata(model_name: str):
        known(model_name)
        facts = service_for("encode").facts
        return v2.model_metadata(name, v2.task_of(facts.endpoints), facts.labels, facts.hidden_size)

    @app.get("/v2/models/{model_name}/ready", summary="200 when the model is ready")
    async def model_ready(model_name: str):
        known(model_name)
        return JSONResponse({"name": name, "ready": lifecycle.ready}, status_code=200 if lifecycle.ready else 503)

    @app.post("/v2/models/{model_name}/infer", summary="inference on named tensors",
              openapi_extra=_openapi_body(v2.InferenceRequest.model_json_schema()))
    async def infer(model_name: str, request: Request):
        known(model_name)
        task = v2.task_of(service_for("encode").facts.endpoints)
        length = request.headers.get(BINARY_HEADER.decode())
        try:
            parsed, binary = v2.parse_request(await request.body(), None if length is None else length.encode())
        except v2.ProtocolError as e:
            raise HTTPException(400, str(e)) from None
        return await _infer(task, parsed, binary)

    async def _infer(task: str, parsed: v2.InferenceRequest, binary: bytes) -> Response:
        try:
            texts = v2.input_texts(parsed, binary, task, name)
        except v2.ProtocolError as e:
            raise HTTPException(400, str(e)) from None
        count = len(next(iter(texts.values())))
        if count > args.max_items_per_request:
            raise HTTPException(413, f"the inputs have {count} elements; this server takes at most "
                                     f"{args.max_items_per_request} in one request (--max_items_per_request)")
        items = []
        for i in range(count):
            values = {v2.INPUTS[task][tensor][0]: column[i] for tensor, column in texts.items()}
            check_lengths(args, task, values, f"element {i}: ")
            items.append(tuple(values.get(field) for field in REQUESTS[task][1]))
        results = await run(task, items)
        try:
            body, json_length = v2.response(name, parsed, task, results)
        except v2.ProtocolError as e:
            raise HTTPException(400, str(e)) from None
        if json_length is None:
            return Response(body, media_type="application/json")
        return Response(body, media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(json_length)})

    return app, lifecycle


def _routes(lifecycle: Lifecycle, name: str) -> list[str]:
    offered = lifecycle.service.facts.endpoints if lifecycle.service else []
    return ["/health", *(f"/{e}" for e in offered), f"/v2/models/{name}/infer", "/metrics"]
