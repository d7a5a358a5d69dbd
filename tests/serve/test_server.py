"""`bertforge serve` for real: the command in a subprocess on a free port, talked to over HTTP
with httpx. Answers equal the Python API's, one item or a list of them, concurrent requests are
batched and each gets its own answer, bad input is a clear 4xx (never a 5xx), a 10 MB body is
refused, and SIGTERM lets the requests in flight finish."""

from __future__ import annotations

import asyncio
import json
import signal

import httpx
import numpy as np
import pytest

import bertforge
from conftest import minilm_with_head
from serve.conftest import assert_same_answer
from serve.server_process import Server

LABELS = ["negative", "positive"]


def post(server: Server, path: str, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", timeout=120, **kwargs)


def test_health(qa_server, qa_dir):
    response = httpx.get(f"{qa_server.url}/health", timeout=10)
    assert response.status_code == 200
    health = response.json()
    assert health["status"] == "ok" and health["head"] == "qa" and health["model"] == qa_dir.name
    assert health["endpoints"] == ["/health", "/answer", "/encode"] and health["infer"] == "/v2/models/run/infer"
    assert str(qa_dir.parent) not in response.text  # no path of the server's file system


def test_answer_and_encode_equal_the_python_api(qa_server, qa_api, dev_questions):
    question, context = dev_questions[3]
    response = post(qa_server, "/answer", json={"question": question, "context": context})
    assert response.status_code == 200
    assert_same_answer(response.json(), qa_api.answer(question, context))
    # curl -d sends a form content type, which a web page can send too: refused, saying what to send.
    response = post(qa_server, "/answer", content=json.dumps({"question": question, "context": context}),
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415
    assert response.json()["error"] == ("Content-Type must be application/json, got application/x-www-form-urlencoded; "
                                         "with curl, pass -H 'Content-Type: application/json' (-d alone sends a form "
                                         "type)")
    response = post(qa_server, "/encode", json={"text": question})
    assert response.status_code == 200
    np.testing.assert_allclose(response.json()["embedding"], qa_api.encode(question), atol=1e-5)


def test_a_list_of_items_is_answered_item_by_item(qa_server, qa_api, dev_questions):
    chosen = dev_questions[10:13]
    response = post(qa_server, "/answer", json=[{"question": q, "context": c} for q, c in chosen])
    assert response.status_code == 200
    got = response.json()
    assert isinstance(got, list) and len(got) == 3
    for answer, want in zip(got, qa_api.answer([q for q, _ in chosen], [c for _, c in chosen])):
        assert_same_answer(answer, want)
    response = post(qa_server, "/encode", json=[{"text": "A cat."}, {"text": "Two dogs."}])
    assert response.status_code == 200
    np.testing.assert_allclose([e["embedding"] for e in response.json()], qa_api.encode(["A cat.", "Two dogs."]),
                               atol=1e-5)


@pytest.mark.parametrize("body, status, message", [
    ([], 422, "the list of items is empty"),
    ([{"question": "Who?", "context": "Mary."}] * 33, 413,
     "the list has 33 items; this server takes at most 32 in one request (--max_items_per_request)"),
    ([{"question": "Who?", "context": "Mary."}, {"question": "Who?"}], 422, "item 1: missing field 'context'"),
    ([{"question": "Who?", "context": "Mary."}, "x"], 422, "item 1: must be a JSON object, got str"),
    ([{"question": "Who?", "context": "Mary."}, {"question": "", "context": "Mary."}], 422,
     "item 1: question is empty"),
])
def test_bad_lists_are_clear_4xx(qa_server, body, status, message):
    response = post(qa_server, "/answer", json=body)
    assert response.status_code == status
    assert response.json()["error"] == message


def test_concurrent_requests_are_batched_and_each_gets_its_answer(qa_server, qa_api, dev_questions):
    chosen = dev_questions[:64]
    before = qa_server.health()

    async def ask_all():
        async with httpx.AsyncClient(base_url=qa_server.url, timeout=300,
                                     limits=httpx.Limits(max_connections=64)) as client:
            return await asyncio.gather(*(client.post("/answer", json={"question": q, "context": c})
                                          for q, c in chosen))

    responses = asyncio.run(ask_all())
    assert [r.status_code for r in responses] == [200] * 64
    for response, want in zip(responses, qa_api.answer([q for q, _ in chosen], [c for _, c in chosen])):
        assert_same_answer(response.json(), want)
    after = qa_server.health()
    requests, batches = after["requests"] - before["requests"], after["batches"] - before["batches"]
    print(f"\n64 concurrent requests -> {batches} batches")
    assert requests == 64
    assert batches <= 32  # at most 16 a batch (--max_batch_size); one forward serves several


def test_a_server_with_two_cpu_streams_answers_as_the_api_does(qa_dir, qa_api, dev_questions, tmp_path):
    """--streams 2: two batches computed at once, each on half the threads; every answer is still
    the Python API's (which computes in one stream)."""
    chosen = dev_questions[:24]
    server = Server(qa_dir, tmp_path / "streams.log", "--max_batch_size", "4", "--streams", "2")
    try:
        async def ask_all():
            async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:
                return await asyncio.gather(*(client.post("/answer", json={"question": q, "context": c})
                                              for q, c in chosen), client.post("/encode", json={"text": "A cat."}))

        *answers, encoded = asyncio.run(ask_all())
        assert [r.status_code for r in answers] == [200] * 24 and encoded.status_code == 200
        for response, want in zip(answers, qa_api.answer([q for q, _ in chosen], [c for _, c in chosen])):
            assert_same_answer(response.json(), want)
        np.testing.assert_allclose(encoded.json()["embedding"], qa_api.encode("A cat."), atol=1e-5)
        assert server.health()["batches"] >= 6  # at most 4 windows a batch
    finally:
        server.stop()
    assert "2 CPU streams of" in (tmp_path / "streams.log").read_text()


@pytest.mark.parametrize("body, status, message", [
    (b'{"question": "Who?", "context": "x"', 400, "request body is not valid JSON"),
    (b"", 400, "request body is not valid JSON"),
    (b'{"question": "Who?"}', 422, "missing field 'context'"),
    (b'{}', 422, "missing field 'question'; missing field 'context'"),
    (b'"Who?"', 422, "the body must be a JSON object (or a list of them)"),
    (b'{"question": 5, "context": "x"}', 422, "question: Input should be a valid string"),
    (b'{"question": "Who?", "context": " \\n "}', 422, "context is empty"),
    (b'{"question": "", "context": "x"}', 422, "question is empty"),
    (json.dumps({"question": "Who?", "context": "word " * 4001}).encode(), 422,
     "context has 20005 characters; this server takes at most 20000 (--max_context_chars)"),
    (json.dumps({"question": "Who? " * 2001, "context": "x"}).encode(), 422,
     "question has 10005 characters; this server takes at most 10000 (--max_text_chars)"),
])
def test_bad_requests_are_clear_4xx(qa_server, body, status, message):
    response = post(qa_server, "/answer", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status
    assert message in response.json()["error"]


def test_wrong_endpoints_and_methods(qa_server):
    response = post(qa_server, "/classify", json={"text_a": "x"})
    assert response.status_code == 404
    assert response.json()["error"] == ("/classify needs a model with a trained classification head; this "
                                        "server's model has a qa head and offers /health, /answer, /encode, "
                                        "/v2/models/run/infer, /metrics")
    response = post(qa_server, "/summarize", json={"text": "x"})
    assert response.status_code == 404 and response.json()["error"] == (
        "no such route; this server offers /health, /answer, /encode, /v2/models/run/infer, /metrics")
    response = httpx.get(f"{qa_server.url}/answer", timeout=10)
    assert response.status_code == 405 and response.json()["error"] == "GET /answer is not allowed; it takes POST"


def test_a_10_mb_request_is_refused_and_the_server_carries_on(qa_server, qa_api):
    big = json.dumps({"question": "Who?", "context": "word " * 2_000_000}).encode()
    assert len(big) > 10_000_000
    response = post(qa_server, "/answer", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"] == (f"request body of {len(big)} bytes is over this server's limit of "
                                        f"1000000 bytes (--max_body_bytes)")

    def chunks():  # no Content-Length: the limit applies as the body arrives
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]

    response = post(qa_server, "/answer", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "over this server's limit" in response.json()["error"]
    response = post(qa_server, "/answer", json={"question": "Who?", "context": "Mary wrote it."})
    assert response.status_code == 200
    assert_same_answer(response.json(), qa_api.answer("Who?", "Mary wrote it."))


def test_classification_server(tmp_path):
    checkpoint = minilm_with_head(tmp_path / "cls", "classification", LABELS)
    api = bertforge.load(checkpoint, device="cpu")
    server = Server(checkpoint, tmp_path / "cls.log", "--drain_s", "0")
    try:
        assert server.health()["endpoints"] == ["/health", "/classify", "/encode"]
        for body, text in (({"text_a": "A gripping film."}, "A gripping film."),
                           ({"text_a": "The cat sat.", "text_b": "A cat sat."}, ("The cat sat.", "A cat sat."))):
            response = post(server, "/classify", json=body)
            assert response.status_code == 200
            want = api.classify(text)
            got = response.json()
            assert got["label"] == want.label and got["probabilities"] == pytest.approx(want.probabilities, abs=1e-5)
        pair = {"text_a": "Dull.", "text_b": "Yes."}
        response = post(server, "/classify", json=[{"text_a": "A gripping film."}, pair])
        assert [r["label"] for r in response.json()] == [c.label for c in api.classify(["A gripping film.",
                                                                                        ("Dull.", "Yes.")])]
        infer = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["A gripping film."]}]}
        response = post(server, "/v2/models/cls/infer", json=infer)
        assert response.status_code == 200
        outputs = {o["name"]: o for o in response.json()["outputs"]}
        assert outputs["label"]["data"] == [api.classify("A gripping film.").label]
        assert outputs["probabilities"]["shape"] == [1, 2]
        assert outputs["probabilities"]["data"] == pytest.approx(list(api.classify("A gripping film.")
                                                                      .probabilities.values()), abs=1e-5)
        assert post(server, "/answer", json={"question": "Who?", "context": "x"}).status_code == 404
        assert post(server, "/classify", json={"text_a": "x", "text_b": 3}).status_code == 422
    finally:
        assert server.stop() == -signal.SIGTERM


def test_sigterm_lets_requests_in_flight_finish(qa_dir, tmp_path, dev_questions):
    server = Server(qa_dir, tmp_path / "shutdown.log", "--max_batch_size", "2", "--graceful_timeout_s", "120")
    # Long contexts (many windows each), 2 windows a forward pass: seconds of work queued.
    long = " ".join(c for _, c in dev_questions[:60:6])[:8000]
    questions = [q for q, _ in dev_questions[:4]]

    async def ask_then_stop():
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:
            pending = [asyncio.ensure_future(client.post("/answer", json={"question": q, "context": long}))
                       for q in questions]
            # Once a forward pass has run, all four are queued or being computed.
            while (await client.get("/health")).json()["batches"] == 0:
                await asyncio.sleep(0.05)
            server.process.send_signal(signal.SIGTERM)
            return await asyncio.gather(*pending)

    responses = asyncio.run(ask_then_stop())
    assert [r.status_code for r in responses] == [200] * 4
    assert all(r.json()["answer"] for r in responses)
    assert server.process.wait(timeout=120) == -signal.SIGTERM  # uvicorn re-raises it once done
    log = server.log.read_text()
    assert "shut down after 4 requests" in log, log
    assert "Traceback" not in log, log
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/health", timeout=5)
