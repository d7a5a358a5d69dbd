"""Prometheus metrics of a server (GET /metrics, prometheus_client's text format).

    bertforge_requests_total{route, status}            requests answered
    bertforge_request_errors_total{route, status}      those answered with a 4xx or 5xx
    bertforge_request_duration_seconds{route}          latency, from the request head to the answer
    bertforge_batch_sequences                          sequences (windows, texts) per forward pass
    bertforge_batch_requests                           requests sharing a forward pass
    bertforge_queue_requests                           requests admitted and not yet answered
    bertforge_queue_sequences                          sequences waiting for a forward pass
    bertforge_ready                                    1 when loaded and not draining

`route` is the route's template (/answer, /v2/models/{model_name}/infer), or "other" for paths
the server does not have; a client that hung up before its answer counts as status 499.
Each server has its own registry: nothing is shared with other code in the process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from bertforge.serve import deps  # noqa: F401 -- first: names a missing package of the serve extra

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.routing import BaseRoute, Match

SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    """The metrics above; `queue`, `queued_units` and `ready` are read when scraped."""

    def __init__(self, queue: Callable[[], float], queued_units: Callable[[], float], ready: Callable[[], float]):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("bertforge_requests", "HTTP requests answered, by route and status",
                                ["route", "status"], registry=r)
        self.errors = Counter("bertforge_request_errors", "HTTP requests answered with a 4xx or 5xx status",
                              ["route", "status"], registry=r)
        self.latency = Histogram("bertforge_request_duration_seconds", "Seconds from a request's head to its answer",
                                 ["route"], buckets=SECONDS, registry=r)
        self.batch_sequences = Histogram("bertforge_batch_sequences", "Sequences (windows, texts) per forward pass",
                                         buckets=SIZES, registry=r)
        self.batch_requests = Histogram("bertforge_batch_requests", "Requests sharing a forward pass",
                                        buckets=SIZES, registry=r)
        Gauge("bertforge_queue_requests", "Requests admitted and not yet answered",
              registry=r).set_function(queue)
        Gauge("bertforge_queue_sequences", "Sequences waiting for a forward pass",
              registry=r).set_function(queued_units)
        Gauge("bertforge_ready", "1 when the model is loaded and the server is not draining",
              registry=r).set_function(ready)

    def step(self, sequences: int, requests: int) -> None:
        self.batch_sequences.observe(sequences)
        self.batch_requests.observe(requests)

    def exposition(self) -> tuple[bytes, str]:
        """The text format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class Instrument:
    """ASGI middleware: counts every HTTP request by route and status, with its latency."""

    def __init__(self, app, metrics: Metrics, routes: Callable[[], Sequence[BaseRoute]]):
        self.app = app
        self.metrics = metrics
        self.routes = routes

    def _route(self, scope) -> str:
        for route in self.routes():
            match, _ = route.matches(scope)
            if match != Match.NONE:
                return getattr(route, "path", "other")
        return "other"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 499  # no answer: the client hung up

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = self._route(scope)
            self.metrics.requests.labels(route, str(status)).inc()
            if status >= 400:
                self.metrics.errors.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
