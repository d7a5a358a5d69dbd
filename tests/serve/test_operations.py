"""`bertforge serve` as platforms run it: Prometheus metrics, OpenAPI docs, readiness apart from
liveness (not ready while the model loads, nor once SIGTERM drains the server, which still takes
requests for --drain_s and answers what is left at the end with a JSON 503), and flags the model
cannot serve refused at start with one line."""

from __future__ import annotations

import asyncio
import signal
import socket
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bertforge.cli import main
from serve.conftest import long_context, tiny_qa
from serve.server_process import Server


def samples(server: Server) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_requests_errors_latency_and_batches(qa_server, dev_questions):
    before = samples(qa_server)
    items = [{"question": q, "context": c} for q, c in dev_questions[30:33]]
    for body in (items[0], items[1:]):  # two requests, three items
        assert httpx.post(f"{qa_server.url}/answer", json=body, timeout=60).status_code == 200
    assert httpx.post(f"{qa_server.url}/answer", json={"question": "Who?"}, timeout=60).status_code == 422
    after = samples(qa_server)

    def grew(name: str, **labels) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("bertforge_requests_total", route="/answer", status="200") == 2
    assert grew("bertforge_requests_total", route="/answer", status="422") == 1
    assert grew("bertforge_request_errors_total", route="/answer", status="422") == 1
    assert grew("bertforge_request_errors_total", route="/answer", status="200") == 0
    assert grew("bertforge_request_duration_seconds_count", route="/answer") == 3
    assert grew("bertforge_request_duration_seconds_sum", route="/answer") > 0
    assert grew("bertforge_batch_sequences_sum") >= 3  # at least a window per item
    assert 1 <= grew("bertforge_batch_requests_count") <= 3
    assert after[("bertforge_queue_requests", ())] == 0 and after[("bertforge_queue_sequences", ())] == 0
    assert after[("bertforge_ready", ())] == 1


def test_openapi_docs_are_served(qa_server):
    spec = httpx.get(f"{qa_server.url}/openapi.json", timeout=10).json()
    assert {"/answer", "/encode", "/health", "/metrics", "/v2/health/ready", "/v2/models/{model_name}/infer"} \
        <= spec["paths"].keys()
    body = spec["paths"]["/answer"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["oneOf"][0]["required"] == ["question", "context"] and body["oneOf"][1]["type"] == "array"
    page = httpx.get(f"{qa_server.url}/docs", timeout=10)
    assert page.status_code == 200 and "swagger" in page.text.lower()


HOLD_LOADING = """# Holds the model's loading until the file SERVE_TEST_RELEASE names exists.
import os, time
import bertforge.serve.work as work
load = work.load_predictor
def held(args):
    while not os.path.exists(os.environ["SERVE_TEST_RELEASE"]):
        time.sleep(0.02)
    return load(args)
work.load_predictor = held
"""


def test_ready_only_once_loaded_and_no_more_once_draining(tmp_path, vocab_file, squad_dev_file):
    """The server process gets a sitecustomize that holds the model's loading until the test
    releases it, so the server is caught, for sure, live and still loading."""
    checkpoint = tiny_qa(tmp_path / "tiny", vocab_file)
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(HOLD_LOADING)
    release = tmp_path / "release"
    server = Server(checkpoint, tmp_path / "life.log", "--max_seq_length", "64", "--doc_stride", "8",
                    "--max_query_length", "16", "--max_batch_size", "1", "--max_windows_per_request", "1000",
                    "--drain_s", "1", "--graceful_timeout_s", "0", wait="live",
                    env={"SERVE_TEST_RELEASE": str(release)}, python_path=(tmp_path / "hook",))
    try:
        def get(path: str) -> httpx.Response:
            return httpx.get(f"{server.url}{path}", timeout=10)

        assert get("/v2/health/live").json() == {"live": True}
        ready = get("/v2/health/ready")
        assert ready.status_code == 503 and ready.json() == {"ready": False, "error": "the server is loading"}
        assert get("/v2/models/tiny/ready").status_code == 503
        health = get("/health")
        assert health.status_code == 503 and health.json() == {"status": "loading", "model": "tiny"}
        early = httpx.post(f"{server.url}/answer", json={"question": "Who?", "context": "Mary."}, timeout=10)
        assert early.status_code == 503 and "still loading" in early.json()["error"]
        release.touch()
        deadline = time.monotonic() + 120
        while get("/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline and server.process.poll() is None, server.log.read_text()
            time.sleep(0.1)

        long = long_context(squad_dev_file, 19000)  # ~550 windows each, one a forward pass

        async def drain():
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                pending = [asyncio.ensure_future(client.post("/answer", json={"question": f"Who {i}?",
                                                                              "context": long}))
                           for i in range(4)]
                while (await client.get("/health")).json().get("batches", 0) == 0:
                    await asyncio.sleep(0.01)
                server.process.send_signal(signal.SIGTERM)
                stop = time.monotonic() + 0.8
                while (await client.get("/v2/health/ready")).status_code == 200:
                    assert time.monotonic() < stop  # readiness fails at once ...
                    await asyncio.sleep(0.01)
                live = (await client.get("/v2/health/live")).status_code
                async with httpx.AsyncClient(base_url=server.url, timeout=60) as fresh:  # ... new clients are served
                    late = await fresh.post("/answer", json={"question": "Who?", "context": "Mary wrote it."})
                return live, late, await asyncio.gather(*pending)

        live, late, answers = asyncio.run(drain())
        assert live == 200 and late.status_code == 200
        # --graceful_timeout_s 0: what is unanswered when the drain ends gets a JSON 503
        assert {r.status_code for r in answers} <= {200, 503} and 503 in {r.status_code for r in answers}
        for r in answers:
            if r.status_code == 503:
                assert r.json() == {"error": "the server is shutting down; retry shortly"}
        assert server.process.wait(timeout=60) == -signal.SIGTERM
        log = server.log.read_text()
        assert "unanswered at the end of --graceful_timeout_s: they get 503" in log and "Traceback" not in log, log
    finally:
        server.stop()


def refused(capsys, *argv: str) -> str:
    """The one-line error of `bertforge serve` started in this process with a port the system picks."""
    assert main(["serve", *argv, "--port", "0", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_what_the_model_cannot_serve_is_refused_at_start(tmp_path, vocab_file, capsys, monkeypatch):
    bare = tiny_qa(tmp_path / "bare", vocab_file=None, do_lower_case=None)
    assert "no vocab file: pass --vocab_file" in refused(capsys, str(bare))
    assert "pass --do_lower_case true (uncased) or false (cased)" in refused(capsys, str(bare), "--vocab_file",
                                                                             str(vocab_file))
    tiny = tiny_qa(tmp_path / "tiny", vocab_file)
    assert "--max_seq_length 1024 exceeds the model's max_position_embeddings (128)" in refused(
        capsys, str(tiny), "--max_seq_length", "1024")
    monkeypatch.delenv("NO_SUCH_TOKEN_VARIABLE", raising=False)
    assert "--auth_token_env NO_SUCH_TOKEN_VARIABLE: that environment variable is not set" in refused(
        capsys, str(tiny), "--auth_token_env", "NO_SUCH_TOKEN_VARIABLE")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(tiny), "--port", str(port), "--device", "cpu"]) == 2
        assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--model_name", "a/b"], "--model_name 'a/b': use letters, digits, _ . -"),
    (["--max_windows_per_request", "0"], "max_windows_per_request"),
    (["--header_timeout_s", "0"], "--header_timeout_s must be a positive number of seconds"),
    (["--allowed_hosts", " , "], "--allowed_hosts is empty"),
    # refused before the server listens, not once the model loads
    (["--engine", "onnxruntime", "--precision", "bf16"], "--engine onnxruntime runs fp32 or int8 exports"),
    (["--streams", "2", "--engine", "onnxruntime", "--precision", "int8"], "--streams 2: streams share a CPU's"),
])
def test_bad_flags_are_one_line(tmp_path, capsys, flags, message):
    assert main(["serve", str(tmp_path), *flags]) == 2
    assert message in capsys.readouterr().err
