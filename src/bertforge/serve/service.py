"""The server's model side: its life (loading, ready, draining) and, once loaded, the `Service`
that answers requests: prepare a request on the preparation thread, queue its units with the
fair scheduler, which runs them on the model thread (or threads: one per CPU stream), and finish it on
the preparation thread.
Nothing here knows HTTP; `app` turns its outcomes into responses."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from bertforge.api import Predictor
from bertforge.engine.streams import stream_executor, threads_per_stream
from bertforge.errors import BertforgeError
from bertforge.serve import work
from bertforge.serve.batcher import Scheduler, ShuttingDown, Slice
from bertforge.serve.config import ServeArgs

log = logging.getLogger(__name__)


class TooMuchWork(BertforgeError):
    """A request over a per-request limit of compute (413)."""


@dataclass(frozen=True)
class ModelFacts:
    """What the probes and metadata say about the loaded model."""

    name: str
    head: str
    endpoints: list[str]  # answer, classify, encode: those this model offers
    labels: list[str]  # classification: the class names, in output order
    hidden_size: int


class Service:
    """A loaded model's endpoints behind one scheduler (see the module docstring)."""

    def __init__(self, predictor: Predictor, args: ServeArgs, on_step: Callable[[int, int], None]):
        self.args = args
        self.works = work.works(predictor, args)
        work.warm_up(self.works)
        self.facts = ModelFacts(args.model_name, predictor.head, list(self.works), list(predictor.labels),
                                predictor.loaded.config.hidden_size)
        # The model's threads: one, or one per CPU stream (each on its share of the cores; a step's
        # forward passes then run inline on its stream).
        streams = predictor.runtime.streams
        self.model_thread = (stream_executor(streams, "bertforge-model") if streams > 1
                             else ThreadPoolExecutor(max_workers=1, thread_name_prefix="bertforge-model"))
        if streams > 1:
            log.info("%d CPU streams of %d threads each: up to %d batches computed at once", streams,
                     threads_per_stream(streams), streams)
        self.prep_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bertforge-prep")
        self.scheduler = Scheduler(self._step, self.model_thread, args.max_batch_size, args.batch_timeout_ms / 1000,
                                   args.max_pending, on_step, concurrency=streams)

    def _step(self, endpoint: str, slices: Sequence[Slice]) -> list[Any]:
        return self.works[endpoint].run(slices)

    async def run(self, endpoint: str, items: Sequence[tuple]) -> list[dict]:
        """One result per item; raises Busy, ShuttingDown, TooMuchWork or the BertforgeError of
        a bad item."""
        loop = asyncio.get_running_loop()
        asked = self.works[endpoint]
        with self.scheduler.admission():
            prepared = await loop.run_in_executor(self.prep_thread, asked.prepare, items)
            limit = self.args.max_windows_per_request
            if prepared.size > limit:
                what = "windows" if endpoint == "answer" else "texts"
                raise TooMuchWork(f"this request needs {prepared.size} {what} of the model; this server reads at "
                                  f"most {limit} for one request (--max_windows_per_request)")
            outputs = await self.scheduler.submit(endpoint, prepared.payload, prepared.size)
            return await loop.run_in_executor(self.prep_thread, asked.finish, prepared, outputs)

    def start(self) -> None:
        self.scheduler.start()

    async def stop(self) -> None:
        await self.scheduler.stop()
        self.prep_thread.shutdown(wait=True)
        self.model_thread.shutdown(wait=True)


class Lifecycle:
    """loading -> ready -> draining, or loading -> failed. The model loads on a thread of its own
    while the server already answers: live at once, ready once loaded."""

    def __init__(self, args: ServeArgs, on_step: Callable[[int, int], None]):
        self.args = args
        self.on_step = on_step
        self.service: Service | None = None
        self.error: BaseException | None = None
        self.draining = False
        self.failed = asyncio.Event()  # set when loading fails: the server stops

    @property
    def phase(self) -> str:
        if self.error is not None:
            return "failed"
        if self.draining:
            return "draining"
        return "loading" if self.service is None else "ready"

    @property
    def ready(self) -> bool:
        return self.phase == "ready"

    def start_loading(self, load: Callable[[ServeArgs], Predictor]) -> None:
        """`load(args)` (the Predictor) on a thread; then the Service, started on this loop."""
        loop = asyncio.get_running_loop()

        def loading() -> None:
            try:
                outcome, value = self._loaded, Service(load(self.args), self.args, self.on_step)
            except BaseException as e:  # noqa: BLE001 -- the server reports it and stops
                outcome, value = self._fail, e
            try:
                loop.call_soon_threadsafe(outcome, value)
            except RuntimeError:  # the loop is closed: the server stopped while the model loaded
                pass

        threading.Thread(target=loading, name="bertforge-load", daemon=True).start()

    def _loaded(self, service: Service) -> None:
        service.start()
        self.service = service
        log.info("model %s ready (%s head): %s", service.facts.name, service.facts.head,
                 ", ".join(service.facts.endpoints))

    def _fail(self, error: BaseException) -> None:
        self.error = error
        self.failed.set()

    def abort(self) -> None:
        """Every request not yet answered gets 503 now (the graceful shutdown's time is up)."""
        if self.service is not None:
            if self.service.scheduler.waiting:
                log.warning("%d requests unanswered at the end of --graceful_timeout_s: they get 503",
                            self.service.scheduler.waiting)
            self.service.scheduler.abort("the server is shutting down")

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
            s = self.service.scheduler
            log.info("shut down after %d requests in %d forward passes", s.jobs, s.steps)


__all__ = ["Lifecycle", "ModelFacts", "Service", "ShuttingDown", "TooMuchWork"]
