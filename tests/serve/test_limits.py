"""What no single client can do to `bertforge serve`: hold the model with one long request (a
per-request window cap, and windows of several requests share each forward pass), use it without
the token or through a foreign Host name, post a form from a web page, or hold a connection with
a slow or endless header or body. One tiny-BERT server with small limits; its checkpoint records
neither vocabulary nor casing, so --vocab_file and --do_lower_case are what make it servable."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import pytest

from serve.conftest import long_context, tiny_qa
from serve.server_process import Server

TOKEN = "a-test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MARY = {"question": "Who wrote it?", "context": "It was written by Mary Shelley."}


@pytest.fixture(scope="module")
def server(tmp_path_factory, vocab_file):
    root = tmp_path_factory.mktemp("limits")
    checkpoint = tiny_qa(root / "tiny", vocab_file=None, do_lower_case=None)
    server = Server(checkpoint, root / "limits.log", "--vocab_file", str(vocab_file), "--do_lower_case", "true",
                    "--max_seq_length", "64", "--doc_stride", "16", "--max_query_length", "16",
                    "--max_batch_size", "1", "--max_windows_per_request", "200", "--max_body_bytes", "100000",
                    "--allowed_hosts", "localhost,127.0.0.1,bert.internal", "--auth_token_env", "TEST_SERVE_TOKEN",
                    "--header_timeout_s", "1", "--body_timeout_s", "1", "--drain_s", "0",
                    env={"TEST_SERVE_TOKEN": TOKEN})
    yield server
    server.stop()
    assert "Traceback" not in server.log.read_text()  # disconnects and timeouts log no traceback


def post(server: Server, path: str = "/answer", **kwargs) -> httpx.Response:
    kwargs.setdefault("headers", AUTH)
    return httpx.post(f"{server.url}{path}", timeout=60, **kwargs)


def test_the_tokenizer_flags_make_the_model_servable(server):
    response = post(server, json=MARY)
    assert response.status_code == 200 and response.json().keys() == {"answer", "score", "start", "end"}


def test_a_token_is_needed_except_by_the_health_probes(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        response = post(server, json=MARY, headers=headers)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer <token>" in response.json()["error"]
    assert httpx.get(f"{server.url}/metrics", timeout=10).status_code == 401
    for probe in ("/health", "/v2/health/live", "/v2/health/ready"):
        assert httpx.get(f"{server.url}{probe}", timeout=10).status_code == 200


def test_only_the_allowed_host_names(server):
    response = post(server, json=MARY, headers={**AUTH, "Host": "attacker.example:80"})
    assert response.status_code == 403
    assert response.json()["error"] == ("Host 'attacker.example' is not one this server answers to "
                                        "(127.0.0.1, bert.internal, localhost; see --allowed_hosts)")
    assert post(server, json=MARY, headers={**AUTH, "Host": "[::1]"}).status_code == 403  # not in the list
    assert post(server, json=MARY, headers={**AUTH, "Host": "Bert.Internal:1234"}).status_code == 200


@pytest.mark.parametrize("content_type, status", [
    ("text/plain", 415), ("application/x-www-form-urlencoded", 415), ("multipart/form-data; boundary=x", 415),
    ("application/json; charset=utf-8", 200), ("Application/JSON", 200)])
def test_only_json_bodies(server, content_type, status):
    import json
    response = post(server, content=json.dumps(MARY), headers={**AUTH, "Content-Type": content_type})
    assert response.status_code == status
    if status == 415:
        assert "pass -H 'Content-Type: application/json'" in response.json()["error"]


def test_a_request_over_the_window_cap_is_refused_before_any_forward(server, squad_dev_file):
    before = httpx.get(f"{server.url}/health", timeout=10).json()["batches"]
    response = post(server, json={"question": "Who?", "context": long_context(squad_dev_file, 19900)})
    assert response.status_code == 413
    error = response.json()["error"]
    assert error.startswith("this request needs ") and error.endswith(
        "windows of the model; this server reads at most 200 for one request (--max_windows_per_request)")
    assert httpx.get(f"{server.url}/health", timeout=10).json()["batches"] == before


def test_a_short_request_is_not_stuck_behind_a_long_one(server, squad_dev_file):
    """One window a forward pass: the long request is ~170 passes. The short one, sent once the
    long one is being read, is answered while the long one still runs."""
    long = {"question": "Who?", "context": long_context(squad_dev_file, 12000)}

    async def both():
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=120) as client:
            before = (await client.get("/health")).json()["batches"]
            first = asyncio.ensure_future(client.post("/answer", json=long))
            while (await client.get("/health")).json()["batches"] < before + 3:
                await asyncio.sleep(0.005)
            short = await client.post("/answer", json=MARY)
            running = not first.done()
            return short, running, await first, (await client.get("/health")).json()["batches"] - before

    short, long_was_running, long_answer, passes = asyncio.run(both())
    assert short.status_code == 200 and long_answer.status_code == 200
    assert passes > 100  # the long request is many forward passes ...
    assert long_was_running  # ... and the short one did not wait for them


def raw_connection(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def read_until_closed(conn: socket.socket, limit_s: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    start, data = time.monotonic(), b""
    conn.settimeout(limit_s)
    while chunk := conn.recv(65536):
        data += chunk
    return data, time.monotonic() - start


def head(server: Server, length: int) -> bytes:
    return (f"POST /answer HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode()


def test_a_slow_request_head_is_cut_off(server):
    with raw_connection(server) as conn:
        conn.sendall(b"POST /answer HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and nothing more
        data, seconds = read_until_closed(conn, limit_s=15)
    assert data == b"" and 0.9 < seconds < 10  # closed at --header_timeout_s 1


def test_a_slow_body_gets_408_and_the_connection_closes(server):
    with raw_connection(server) as conn:
        conn.sendall(head(server, 100) + b'{"question": ')  # 13 of the 100 bytes, then nothing
        data, seconds = read_until_closed(conn, limit_s=15)
    assert data.startswith(b"HTTP/1.1 408 ") and b"did not arrive within 1 s (--body_timeout_s)" in data
    assert seconds < 10


def test_a_declared_huge_body_is_not_read_forever(server):
    with raw_connection(server) as conn:
        conn.sendall(head(server, 10**12) + b"x" * 50_000)  # a terabyte announced, a trickle sent
        data, seconds = read_until_closed(conn, limit_s=15)
    assert data.startswith(b"HTTP/1.1 413 ") and b"request body of 1000000000000 bytes is over" in data
    assert seconds < 10


def test_clients_that_hang_up_cost_nothing_and_log_no_traceback(server, squad_dev_file):
    with raw_connection(server) as conn:  # gone before its body is in
        conn.sendall(head(server, 100) + b'{"question": ')
    body = ('{"question": "Who?", "context": "%s"}' % long_context(squad_dev_file, 12000)).encode()
    with raw_connection(server) as conn:  # gone while its windows wait for the model
        conn.sendall(head(server, len(body)) + body)
        time.sleep(0.3)
    time.sleep(0.5)
    before = httpx.get(f"{server.url}/health", timeout=10).json()["batches"]
    time.sleep(0.5)
    assert httpx.get(f"{server.url}/health", timeout=10).json()["batches"] == before  # its windows were dropped
    assert post(server, json=MARY).status_code == 200
    assert "Traceback" not in server.log.read_text()
