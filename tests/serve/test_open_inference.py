"""The Open Inference Protocol (KServe v2) of `bertforge serve`, spoken by a real client of it,
Triton's `tritonclient.http` (binary tensors, its default, and JSON), and by hand as the
protocol's published examples write it: health, metadata, inference on named BYTES tensors with
the Python API's answers, `id` echoed, outputs chosen, errors as {"error": "..."}."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from serve.conftest import assert_same_answer

MODEL = "run"  # the QA checkpoint directory's name


@pytest.fixture(scope="module")
def client(qa_server):
    client = triton.InferenceServerClient(url=qa_server.url.removeprefix("http://"))
    yield client
    client.close()


def text_input(name: str, texts: list[str], binary: bool) -> triton.InferInput:
    tensor = triton.InferInput(name, [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_), binary_data=binary)
    return tensor


def test_health_and_metadata_through_the_client(client):
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    assert not client.is_model_ready("other")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    metadata = client.get_model_metadata(MODEL)
    assert metadata["name"] == MODEL
    assert metadata["inputs"] == [{"name": "question", "datatype": "BYTES", "shape": [-1]},
                                  {"name": "context", "datatype": "BYTES", "shape": [-1]}]
    assert [(o["name"], o["datatype"]) for o in metadata["outputs"]] == [
        ("answer", "BYTES"), ("score", "FP32"), ("start", "INT64"), ("end", "INT64")]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_through_the_client_equals_the_python_api(client, qa_api, dev_questions, binary):
    chosen = dev_questions[20:23]
    questions, contexts = [q for q, _ in chosen], [c for _, c in chosen]
    inputs = [text_input("question", questions, binary), text_input("context", contexts, binary)]
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("answer", "score", "start", "end")]
    # A JSON request says so; Triton's binary one announces itself by Inference-Header-Content-Length.
    headers = None if binary else {"Content-Type": "application/json"}
    result = client.infer(MODEL, inputs, outputs=outputs, request_id="7", headers=headers)
    assert result.get_response()["id"] == "7" and result.get_response()["model_name"] == MODEL
    # the client gives BYTES elements as bytes from binary data, as str from JSON
    got = [{"answer": a.decode() if binary else a, "score": float(s), "start": int(b), "end": int(e)}
           for a, s, b, e in zip(*(result.as_numpy(n) for n in ("answer", "score", "start", "end")))]
    for answer, want in zip(got, qa_api.answer(questions, contexts)):
        assert_same_answer(answer, want)
    assert result.as_numpy("score").dtype == np.float32 and result.as_numpy("start").dtype == np.int64


def test_the_clients_default_request_binary_in_and_out(client, qa_api):
    inputs = [text_input("question", ["Who wrote it?"], True), text_input("context", ["Mary Shelley wrote it."], True)]
    result = client.infer(MODEL, inputs)  # no outputs named: all of them, as binary
    assert result.as_numpy("answer")[0].decode() == qa_api.answer("Who wrote it?", "Mary Shelley wrote it.").text


def infer(server, body, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/{MODEL}/infer", json=body, timeout=120, **kwargs)


def test_the_protocols_json_example(qa_server, qa_api):
    """As the protocol's inference request example: an id, inputs with shape and data (here
    [2, 1], data nested as the shape), one output asked for."""
    body = {"id": "42",
            "inputs": [{"name": "question", "shape": [2, 1], "datatype": "BYTES",
                        "data": [["Who wrote it?"], ["When was it written?"]]},
                       {"name": "context", "shape": [2, 1], "datatype": "BYTES",
                        "data": [["Mary Shelley wrote it in 1818."], ["Mary Shelley wrote it in 1818."]]}],
            "outputs": [{"name": "answer"}]}
    response = infer(qa_server, body)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    want = qa_api.answer(["Who wrote it?", "When was it written?"], "Mary Shelley wrote it in 1818.")
    assert response.json() == {"model_name": MODEL, "id": "42", "outputs": [
        {"name": "answer", "datatype": "BYTES", "shape": [2], "data": [w.text for w in want]}]}


def tensor(name: str, data, shape=None, datatype: str = "BYTES") -> dict:
    return {"name": name, "shape": shape or [len(data)], "datatype": datatype, "data": data}


QC = [tensor("question", ["Who?"]), tensor("context", ["Mary."])]


@pytest.mark.parametrize("body, status, message", [
    (b'{"inputs": [', 400, "the request is not valid JSON"),
    ({"inputs": [{"name": "question"}]}, 400, "inputs.0.shape: Field required"),
    ({"inputs": [tensor("question", ["Who?"])]}, 400,
     "model 'run' needs input 'context'; it takes question (BYTES), context (BYTES)"),
    ({"inputs": [*QC, tensor("image", ["x"])]}, 400, "model 'run' has no input 'image'"),
    ({"inputs": [tensor("question", [1], datatype="INT64"), QC[1]]}, 400,
     "input 'question' must be BYTES (text), got INT64"),
    ({"inputs": [tensor("question", ["Who?"], shape=[2]), QC[1]]}, 400,
     "input 'question': shape [2] holds 2 elements but 1 are given"),
    ({"inputs": [tensor("question", ["Who?", "What?"]), QC[1]]}, 400,
     "the inputs must have as many elements each: question has 2, context has 1"),
    ({"inputs": QC, "outputs": [{"name": "logits"}]}, 400, "model 'run' has no output 'logits'"),
    ({"inputs": [tensor("question", [""]), QC[1]]}, 422, "element 0: question is empty"),
    ({"inputs": [tensor("question", ["Who?"] * 33), tensor("context", ["Mary."] * 33)]}, 413,
     "the inputs have 33 elements; this server takes at most 32 in one request (--max_items_per_request)"),
])
def test_bad_inference_requests_are_clear_errors(qa_server, body, status, message):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(f"{qa_server.url}/v2/models/{MODEL}/infer", content=content, timeout=60,
                          headers={"content-type": "application/json"})
    assert response.status_code == status
    assert response.json().keys() == {"error"} and message in response.json()["error"]


def test_unknown_model_and_probes(qa_server):
    for path in ("/v2/models/other", "/v2/models/other/ready"):
        response = httpx.get(f"{qa_server.url}{path}", timeout=10)
        assert response.status_code == 404
        assert response.json() == {"error": f"model 'other' not found; this server serves '{MODEL}'"}
    assert infer(qa_server, {"inputs": QC}).status_code == 200
    assert httpx.get(f"{qa_server.url}/v2/health/live", timeout=10).json() == {"live": True}
    assert httpx.get(f"{qa_server.url}/v2/health/ready", timeout=10).json() == {"ready": True}
    assert httpx.get(f"{qa_server.url}/v2/models/{MODEL}/ready", timeout=10).json() == {"name": MODEL, "ready": True}
