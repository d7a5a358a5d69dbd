"""The scheduler alone, with a stand-in for the model that records every step: each forward pass
takes one unit from each waiting request in turn, so a short request that arrives while a long
one runs is served by the next step; a cancelled request costs no more steps; a failing one fails
alone; limits and shutdown are clear exceptions."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from bertforge.serve.batcher import Busy, Scheduler, ShuttingDown


class Model:
    """run(kind, slices): each slice's output is (payload, start, stop); every step is logged as
    [(payload, start, stop), ...]. A payload "bad" raises."""

    def __init__(self, seconds: float = 0.0):
        self.seconds = seconds
        self.steps: list[list[tuple]] = []
        self.lock = threading.Lock()

    def __call__(self, kind, slices):
        if any(s.payload == "bad" for s in slices):
            raise ValueError("bad input")
        time.sleep(self.seconds)
        with self.lock:
            self.steps.append([(s.payload, s.start, s.stop) for s in slices])
        return [(s.payload, s.start, s.stop) for s in slices]


def scheduler(model: Model, max_units: int, timeout_s: float = 0.0, max_pending: int = 100) -> Scheduler:
    return Scheduler(model, ThreadPoolExecutor(max_workers=1), max_units, timeout_s, max_pending)


def test_each_step_takes_one_unit_from_each_request_in_turn():
    model = Model()

    async def main():
        s = scheduler(model, max_units=4, timeout_s=0.05)  # the three arrive within one step's wait
        s.start()
        results = await asyncio.gather(s.submit("answer", "A", 5), s.submit("answer", "B", 1),
                                       s.submit("answer", "C", 3))
        await s.stop()
        return results

    a, b, c = asyncio.run(main())
    # step 1: A, B, C, then A again; step 2: A and C, which have units left; then the rest of A.
    assert model.steps == [[("A", 0, 2), ("B", 0, 1), ("C", 0, 1)], [("A", 2, 4), ("C", 1, 3)], [("A", 4, 5)]]
    assert a == [("A", 0, 2), ("A", 2, 4), ("A", 4, 5)] and b == [("B", 0, 1)] and c == [("C", 0, 1), ("C", 1, 3)]


def test_a_short_request_is_served_by_the_next_step_while_a_long_one_runs():
    model = Model(seconds=0.01)

    async def main():
        s = scheduler(model, max_units=4)
        s.start()
        long = asyncio.ensure_future(s.submit("answer", "long", 400))  # 100 steps
        while len(model.steps) < 3:
            await asyncio.sleep(0.005)
        arrived = len(model.steps)
        await s.submit("answer", "short", 1)
        served = len(model.steps)
        assert not long.done()
        await long
        await s.stop()
        return arrived, served

    arrived, served = asyncio.run(main())
    # The step running when it arrived, then its own: the long request's other 97 steps do not matter.
    assert served - arrived <= 2, (arrived, served)
    (step,) = [step for step in model.steps if any(name == "short" for name, _, _ in step)]
    assert sorted((name, stop - start) for name, start, stop in step) == [("long", 3), ("short", 1)]
    assert sum(stop - start for step in model.steps for name, start, stop in step if name == "long") == 400


def test_kinds_take_turns_and_never_share_a_step():
    model = Model()

    async def main():
        s = scheduler(model, max_units=2, timeout_s=0.05)
        s.start()
        await asyncio.gather(s.submit("answer", "A", 4), s.submit("encode", "E", 2), s.submit("answer", "B", 2))
        await s.stop()

    asyncio.run(main())
    assert model.steps[0] == [("A", 0, 1), ("B", 0, 1)]  # A's kind first, with B
    assert model.steps[1] == [("E", 0, 2)]  # then E, which waited longest
    assert all(len({name in "AB" for name, _, _ in step}) == 1 for step in model.steps)


def test_a_cancelled_request_costs_no_more_steps():
    model = Model(seconds=0.01)

    async def main():
        s = scheduler(model, max_units=1)
        s.start()
        gone = asyncio.ensure_future(s.submit("answer", "gone", 1000))
        while not model.steps:
            await asyncio.sleep(0.005)
        gone.cancel()
        assert await s.submit("answer", "next", 2) == [("next", 0, 1), ("next", 1, 2)]
        await s.stop()

    asyncio.run(main())
    assert sum(1 for step in model.steps if step[0][0] == "gone") <= 3  # those already running, not 1000


def test_a_failing_request_fails_alone():
    model = Model()

    async def main():
        s = scheduler(model, max_units=8, timeout_s=0.05)
        s.start()
        results = await asyncio.gather(s.submit("answer", "good", 2), s.submit("answer", "bad", 1),
                                       return_exceptions=True)
        await s.stop()
        return results

    good, bad = asyncio.run(main())
    assert good == [("good", 0, 2)]
    assert isinstance(bad, ValueError) and str(bad) == "bad input"


def test_busy_and_shutting_down():
    model = Model(seconds=0.01)

    async def main():
        s = scheduler(model, max_units=1, max_pending=1)
        s.start()
        with s.admission():
            with pytest.raises(Busy, match="1 requests are already waiting"):
                with s.admission():
                    pass
            waiting = asyncio.ensure_future(s.submit("answer", "A", 100))
            await asyncio.sleep(0.05)
            s.abort("the server is shutting down")
            with pytest.raises(ShuttingDown, match="the server is shutting down"):
                await waiting
            with pytest.raises(ShuttingDown):
                await s.submit("answer", "B", 1)
        await s.stop()

    asyncio.run(main())


@pytest.mark.parametrize("concurrency", [1, 2])
def test_a_step_that_fails_outside_the_model_fails_the_requests_instead_of_hanging(concurrency):
    def broken_metrics(units, jobs):
        raise RuntimeError("metrics broke")

    async def main():
        s = Scheduler(Model(), ThreadPoolExecutor(max_workers=concurrency), 4, 0.0, 100, on_step=broken_metrics,
                      concurrency=concurrency)
        s.start()
        outcomes = await asyncio.wait_for(asyncio.gather(s.submit("answer", "A", 2), s.submit("answer", "B", 1),
                                                         return_exceptions=True), timeout=10)
        late = await asyncio.gather(s.submit("answer", "C", 1), return_exceptions=True)
        await s.stop()
        return outcomes + late

    outcomes = asyncio.run(main())
    assert all(isinstance(o, ShuttingDown) and "internal error (metrics broke)" in str(o) for o in outcomes), outcomes
