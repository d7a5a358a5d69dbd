"""CPU streams (`--streams`): batches predicted at once on threads that each compute on their
share of torch's threads give the outputs of one stream, in the input order; the thread counts
are set per stream and restored; a server with streams runs steps at once; the refusals."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import torch

from bertforge.engine import check_inference
from bertforge.engine.precision import prepare_for_inference
from bertforge.engine.streams import in_stream, stream_executor, threads_per_stream
from bertforge.errors import ConfigError
from bertforge.infer import predict_timed
from bertforge.runconfig import InferenceRuntimeArgs, RuntimeArgs
from bertforge.serve.batcher import Scheduler
from bertforge.train.runtime import Runtime
from conftest import random_batch
from engine.test_cpu_precision import distinct_model


@pytest.fixture
def four_threads():
    """torch's intra-op thread count set to 4 for the test (any machine can ask for 4)."""
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    yield
    torch.set_num_threads(before)


def arrays(model, rows: int = 23, seed: int = 3) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in random_batch(model.config, batch=rows, seq=40, seed=seed).items()}


def runtime(streams: int) -> Runtime:
    return Runtime(InferenceRuntimeArgs(device="cpu", streams=streams))


def qa_logits(model, batch):
    return model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])


def test_threads_per_stream_share_the_threads():
    assert threads_per_stream(2, threads=4) == 2
    assert threads_per_stream(3, threads=4) == 1
    assert threads_per_stream(4, threads=2) == 1  # never fewer than one


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_streams_give_the_outputs_of_one_stream_in_input_order(precision, four_threads):
    model = prepare_for_inference(distinct_model(), precision)
    data = arrays(model)
    threads_seen, counts_seen = set(), set()

    def forward(m, batch):
        threads_seen.add(threading.current_thread().name)
        counts_seen.add(torch.get_num_threads())
        return qa_logits(m, batch)

    (start1, end1), stats1 = predict_timed(model, data, 3, runtime(1), qa_logits, progress=False, per_token=True)
    (start2, end2), stats2 = predict_timed(model, data, 3, runtime(2), forward, progress=False, per_token=True)
    # 8 batches over 2 streams, each on 2 of the 4 threads; the caller's count is back afterwards.
    assert len(threads_seen) == 2 and all(name.startswith("bertforge-stream") for name in threads_seen)
    assert counts_seen == {2}
    assert torch.get_num_threads() == 4
    np.testing.assert_allclose(start2, start1, rtol=0, atol=1e-5)  # -inf beyond each batch's width too
    np.testing.assert_allclose(end2, end1, rtol=0, atol=1e-5)
    assert np.isneginf(start2).any() and np.isfinite(start2).all(axis=1).sum() < 23
    assert stats2.sequences == stats1.sequences == 23 and stats2.batches == 8 and len(stats2.latencies_ms) == 8


def test_work_inside_a_stream_runs_inline(four_threads):
    model = distinct_model(head="classification")
    data = arrays(model, rows=9)
    inner_threads = set()

    def forward(m, batch):
        inner_threads.add(threading.current_thread().name)
        return m(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])

    def nested():
        assert in_stream()
        return predict_timed(model, data, 2, runtime(2), forward, progress=False)[0][0]

    with stream_executor(2) as pool:
        nested_logits = pool.submit(nested).result()
    (alone,), _ = predict_timed(model, data, 2, runtime(1), forward, progress=False)
    assert not in_stream()
    assert len({name for name in inner_threads if name.startswith("bertforge-stream")}) == 1
    np.testing.assert_allclose(nested_logits, alone, rtol=0, atol=1e-5)


def test_a_failing_batch_fails_the_prediction_and_restores_the_threads(four_threads):
    model = distinct_model()
    calls = []

    def forward(m, batch):
        calls.append(1)
        if len(calls) == 3:
            raise ValueError("batch three is bad")
        time.sleep(0.01)
        return qa_logits(m, batch)

    with pytest.raises(ValueError, match="batch three is bad"):
        predict_timed(model, arrays(model, rows=40), 2, runtime(2), forward, progress=False, per_token=True)
    assert torch.get_num_threads() == 4
    assert len(calls) <= 3 + 2 * 2  # what was queued when it failed; the rest never started


def test_a_scheduler_with_two_streams_runs_two_steps_at_once():
    both_in = threading.Barrier(2, timeout=5)
    overlapped = []

    def run(kind, slices):
        both_in.wait()  # only returns when a second step is running too
        overlapped.append(len(slices))
        return [s.payload for s in slices]

    async def main():
        s = Scheduler(run, stream_executor(2), max_units=1, timeout_s=0.0, max_pending=10, concurrency=2)
        s.start()
        results = await asyncio.gather(s.submit("answer", "A", 1), s.submit("answer", "B", 1))
        await s.stop()
        return results

    assert asyncio.run(main()) == [["A"], ["B"]]
    assert overlapped == [1, 1]


def test_streams_are_refused_where_they_do_not_apply():
    with pytest.raises(ConfigError, match="streams"):
        InferenceRuntimeArgs(streams=0)
    with pytest.raises(ConfigError, match="--streams 2: .*not on cuda"):
        check_inference("bf16", "torch", torch.device("cuda"), streams=2)
    with pytest.raises(ConfigError, match="--streams 2: .*not on the onnxruntime engine"):
        check_inference("int8", "onnxruntime", torch.device("cpu"), streams=2)
    check_inference("int8", "torch", torch.device("cpu"), streams=2)
    assert Runtime(RuntimeArgs(device="cpu")).streams == 1  # training runs predict in one stream
