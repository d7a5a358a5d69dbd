"""Dynamic batching with a fair share of every forward pass.

A request becomes a job of `size` units: the sequences the model reads for it (an /answer
context's windows, a /classify or /encode text each). Each step of the one model thread runs one
call of `run(kind, slices)` on at most `max_units` units, taken from the waiting jobs of one kind
in turn: one unit from each job, then another from each, until the step is full. Jobs that still
have units go to the back of the line. So a short request that arrives while a long one is being
read waits for the step in progress and is answered by the next, however many windows the long
one has; and requests that arrive together still share forward passes (the first unit of a step
that is not full waits up to `timeout_s` for more to join it).

A job whose caller gave up (its future cancelled: the client hung up) costs no further compute.
When a step fails, each of its slices runs again alone, so that a bad request fails by itself.

With `concurrency` > 1 (CPU streams: the executor has that many threads, each computing on its
share of the cores) up to that many steps run at once: a step is taken as soon as a stream is
free, from the line as it stands then.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from bertforge.errors import BertforgeError

log = logging.getLogger(__name__)


class Busy(Exception):
    """More requests are waiting than the server takes (`max_pending`)."""


class ShuttingDown(Exception):
    """The server stopped before this request was answered."""


@dataclass(frozen=True)
class Slice:
    """Units [start, stop) of one job's payload."""

    payload: Any
    start: int
    stop: int


# run(kind, slices) -> one output per slice, on the model thread.
StepFunction = Callable[[str, Sequence[Slice]], Sequence[Any]]


@dataclass(eq=False)
class Job:
    kind: str
    payload: Any
    size: int
    future: asyncio.Future
    scheduled: int = 0  # units handed to steps so far
    done: int = 0  # units whose outputs are in
    outputs: list[tuple[int, Any]] = field(default_factory=list)  # (start, output) per slice

    @property
    def gone(self) -> bool:
        return self.future.done()


class Scheduler:
    """Runs `submit`ted jobs in fair steps on `executor` (see the module docstring).
    `on_step(units, jobs)` is told the size of every step (metrics)."""

    def __init__(self, run: StepFunction, executor: Executor, max_units: int, timeout_s: float,
                 max_pending: int, on_step: Callable[[int, int], None] = lambda units, jobs: None,
                 concurrency: int = 1):
        self.run = run
        self.executor = executor
        self.concurrency = concurrency  # steps at once (the executor's threads)
        self.running: set[asyncio.Task] = set()
        self.max_units = max_units
        self.timeout_s = timeout_s
        self.max_pending = max_pending
        self.on_step = on_step
        self.line: deque[Job] = deque()  # jobs with units not yet handed to a step, in turn order
        self.active: set[Job] = set()  # every job not yet answered
        self.admitted = 0
        self.closed: str | None = None  # why no job is taken any more
        self.arrived = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.steps = 0
        self.units = 0
        self.jobs = 0

    # ---- the callers' side -----------------------------------------------------------------

    @contextmanager
    def admission(self) -> Iterator[None]:
        """Holds one of `max_pending` places from the request's arrival (before its preparation)
        to its answer; raises Busy when none is free."""
        if self.admitted >= self.max_pending:
            raise Busy(f"{self.admitted} requests are already waiting")
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    async def submit(self, kind: str, payload: Any, size: int) -> list[Any]:
        """The outputs of `run` for units [0, size) of `payload`, one per slice, in order."""
        if self.closed is not None or self.task is None:
            raise ShuttingDown(self.closed or "the server is not running")
        if size == 0:
            return []
        job = Job(kind, payload, size, asyncio.get_running_loop().create_future())
        self.line.append(job)
        self.active.add(job)
        self.arrived.set()
        try:
            return await job.future
        finally:
            self.active.discard(job)

    @property
    def waiting(self) -> int:
        """Requests admitted and not yet answered (queue depth)."""
        return self.admitted

    @property
    def waiting_units(self) -> int:
        return sum(job.size - job.scheduled for job in self.line if not job.gone)

    # ---- life ------------------------------------------------------------------------------

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())
        self.task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task) -> None:
        """A scheduler that stopped by mistake fails its requests instead of leaving them waiting."""
        if not task.cancelled() and task.exception() is not None:
            log.error("the scheduler stopped", exc_info=task.exception())
            self.abort(f"internal error ({task.exception()})")

    def abort(self, reason: str) -> None:
        """Every job not yet answered fails with ShuttingDown(reason), and so does every job
        submitted from now on."""
        self.closed = reason
        for job in list(self.active):
            if not job.gone:
                job.future.set_exception(ShuttingDown(reason))
        self.line.clear()

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None
        for step in list(self.running):
            step.cancel()
        await asyncio.gather(*self.running, return_exceptions=True)
        self.abort("the server is shutting down")

    # ---- the model's side ------------------------------------------------------------------

    async def _loop(self) -> None:
        free = asyncio.Semaphore(self.concurrency)  # streams without a step
        while True:
            await free.acquire()
            kind = await self._next_kind()
            await self._gather(kind)
            slices = self._take(kind)
            if not slices:
                free.release()
                continue
            step = asyncio.get_running_loop().create_task(self._step(kind, slices))
            self.running.add(step)
            step.add_done_callback(functools.partial(self._step_done, free))

    def _step_done(self, free: asyncio.Semaphore, step: asyncio.Task) -> None:
        """Frees the step's stream. A step that failed by mistake (not its model call: those reach
        the requests) fails every request instead of leaving them waiting."""
        self.running.discard(step)
        free.release()
        if not step.cancelled() and step.exception() is not None and self.task is not None:
            self.task.cancel()
            log.error("a step failed", exc_info=step.exception())
            self.abort(f"internal error ({step.exception()})")

    async def _step(self, kind: str, slices: list[tuple[Job, Slice]]) -> None:
        jobs = {id(job) for job, _ in slices}
        self.on_step(sum(s.stop - s.start for _, s in slices), len(jobs))
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(self.executor, self.run, kind,
                                                                       [s for _, s in slices])
            outcomes = [(True, o) for o in outputs]
        except Exception as e:  # noqa: BLE001 -- handed to the requests, never lost
            outcomes = await self._one_by_one(kind, slices, e)
        self.steps += 1
        self.units += sum(s.stop - s.start for _, s in slices)
        for (job, s), (ok, value) in zip(slices, outcomes):
            self._deliver(job, s, ok, value)

    async def _next_kind(self) -> str:
        """The kind of the first job in line, once there is one."""
        while True:
            while self.line and self.line[0].gone:
                self.line.popleft()
            if self.line:
                return self.line[0].kind
            self.arrived.clear()
            await self.arrived.wait()

    async def _gather(self, kind: str) -> None:
        """Wait up to timeout_s for a step that is not full to fill up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        while self._units_of(kind) < self.max_units:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _units_of(self, kind: str) -> int:
        return sum(job.size - job.scheduled for job in self.line if job.kind == kind and not job.gone)

    def _take(self, kind: str) -> list[tuple[Job, Slice]]:
        """Up to max_units units of `kind`, one from each job in turn, round after round."""
        jobs = [job for job in self.line if job.kind == kind and not job.gone]
        share = [0] * len(jobs)
        budget = self.max_units
        while budget:
            before = budget
            for i, job in enumerate(jobs):
                if budget and job.scheduled + share[i] < job.size:
                    share[i] += 1
                    budget -= 1
            if budget == before:
                break
        slices = []
        served = set()
        for job, n in zip(jobs, share):
            if n:
                slices.append((job, Slice(job.payload, job.scheduled, job.scheduled + n)))
                job.scheduled += n
                served.add(id(job))
        # Jobs not served keep their places; those served and not finished go to the back.
        waiting = [job for job in self.line if id(job) not in served and not job.gone]
        again = [job for job in self.line if id(job) in served and job.scheduled < job.size]
        self.line = deque(waiting + again)
        return slices

    def _deliver(self, job: Job, s: Slice, ok: bool, value: Any) -> None:
        if job.gone:
            return
        if not ok:
            job.future.set_exception(value)
            return
        job.outputs.append((s.start, value))
        job.done += s.stop - s.start
        if job.done == job.size:
            self.jobs += 1
            job.future.set_result([output for _, output in sorted(job.outputs, key=lambda x: x[0])])

    async def _one_by_one(self, kind: str, slices: list[tuple[Job, Slice]], error: Exception
                          ) -> list[tuple[bool, Any]]:
        """After a failed step: each slice alone, so that one bad request fails only itself."""
        if len(slices) == 1:
            return [(False, error)]
        if not isinstance(error, BertforgeError):
            log.warning("a step of %d requests failed (%s); running them one by one", len(slices), error)
        loop = asyncio.get_running_loop()
        outcomes = []
        for job, s in slices:
            if job.gone:
                outcomes.append((False, error))
                continue
            try:
                outcomes.append((True, (await loop.run_in_executor(self.executor, self.run, kind, [s]))[0]))
            except Exception as e:  # noqa: BLE001
                outcomes.append((False, e))
        return outcomes
