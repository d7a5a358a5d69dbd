"""Dynamic batching: requests that arrive together are answered by one forward pass.

The first request of a batch waits up to `timeout_s` for others to join it, up to `max_size`;
then one call of `fn(items)` answers all of them, on the one model thread that every batcher
shares (one forward at a time; the event loop keeps accepting requests meanwhile). Requests
that arrive while the model is busy wait in the queue and form the next batch, so under load
batches fill up without waiting at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

from bertforge.errors import BertforgeError

log = logging.getLogger(__name__)


class Busy(Exception):
    """More requests are waiting than the server takes (`max_pending`)."""


class Batcher:
    """Collects `submit`ted items into batches for `fn` (see the module docstring)."""

    def __init__(self, fn: Callable[[list[Any]], Sequence[Any]], executor: Executor, max_size: int,
                 timeout_s: float, max_pending: int):
        self.fn = fn
        self.executor = executor
        self.max_size = max_size
        self.timeout_s = timeout_s
        self.max_pending = max_pending
        self.queue: asyncio.Queue[tuple[Any, asyncio.Future]] = asyncio.Queue()
        self.task: asyncio.Task | None = None
        self.batches = 0
        self.items = 0

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        while not self.queue.empty():  # nothing should be left after a graceful shutdown
            _, future = self.queue.get_nowait()
            if not future.done():
                future.set_exception(Busy("the server is shutting down"))

    async def submit(self, item: Any) -> Any:
        """The result of `fn` for `item`; raises what `fn` raised for it."""
        if self.queue.qsize() >= self.max_pending:
            raise Busy(f"{self.queue.qsize()} requests are already waiting")
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((item, future))
        return await future

    async def _collect(self) -> list[tuple[Any, asyncio.Future]]:
        batch = [await self.queue.get()]
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        while len(batch) < self.max_size:
            if not self.queue.empty():
                batch.append(self.queue.get_nowait())
                continue
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        # A client that hung up cancelled its future: no work for it.
        return [(item, future) for item, future in batch if not future.done()]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            items = [item for item, _ in batch]
            try:
                results = await loop.run_in_executor(self.executor, self.fn, items)
                outcomes = [(True, r) for r in results]
            except Exception as e:  # noqa: BLE001 -- handed to the requests, never lost
                outcomes = await self._one_by_one(items, e)
            self.batches += 1
            self.items += len(items)
            for (_, future), (ok, value) in zip(batch, outcomes):
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    async def _one_by_one(self, items: list[Any], error: Exception) -> list[tuple[bool, Any]]:
        """After a failed batch: each item alone, so that one bad item fails only its request."""
        if len(items) == 1:
            return [(False, error)]
        if not isinstance(error, BertforgeError):
            log.warning("a batch of %d failed (%s); running its items one by one", len(items), error)
        loop = asyncio.get_running_loop()
        outcomes = []
        for item in items:
            try:
                outcomes.append((True, (await loop.run_in_executor(self.executor, self.fn, [item]))[0]))
            except Exception as e:  # noqa: BLE001
                outcomes.append((False, e))
        return outcomes
