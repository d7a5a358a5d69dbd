"""The Open Inference Protocol (KServe v2, as KServe, Triton and MLServer speak it) over HTTP.

    GET  /v2                                server metadata
    GET  /v2/health/live                    200 while the process serves
    GET  /v2/health/ready                   200 once the model is loaded, 503 while loading or draining
    GET  /v2/models/{name}                  model metadata: its input and output tensors
    GET  /v2/models/{name}/ready            200 / 503, as the server's readiness
    POST /v2/models/{name}/infer            inference on named tensors

The model does its head's task: a QA head takes BYTES tensors `question` and `context` and gives
`answer` (BYTES), `score` (FP32), `start` and `end` (INT64, character offsets in the context); a
classification head takes `text` (and optionally `text_pair`) and gives `label` (BYTES), `score`
and `probabilities` (FP32, [N, classes]); any other model takes `text` and gives `embedding`
(FP32, [N, hidden]). Inputs are [N] (any shape of N elements), one element per item. Data come
as JSON (strings for BYTES, flat or nested) or, with Triton's binary tensor data extension, as
bytes after the JSON (`Inference-Header-Content-Length`, `binary_data_size`; BYTES elements each
a 4-byte little-endian length and the bytes); outputs come as JSON unless the request asks for
binary (`binary_data_output`, or an output's `binary_data`). Errors are `{"error": "..."}`.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

from bertforge.serve import deps  # noqa: F401 -- first: names a missing package of the serve extra

from pydantic import BaseModel, StrictInt, StrictStr, ValidationError

from bertforge.errors import BertforgeError

# The tensors of each task: inputs (name -> the simple route's field, required), outputs (name ->
# datatype).
INPUTS = {"answer": {"question": ("question", True), "context": ("context", True)},
          "classify": {"text": ("text_a", True), "text_pair": ("text_b", False)},
          "encode": {"text": ("text", True)}}
OUTPUTS = {"answer": {"answer": "BYTES", "score": "FP32", "start": "INT64", "end": "INT64"},
           "classify": {"label": "BYTES", "score": "FP32", "probabilities": "FP32"},
           "encode": {"embedding": "FP32"}}
NUMPY = {"FP32": "<f4", "INT64": "<i8"}
EXTENSIONS = ["binary_tensor_data"]


class ProtocolError(BertforgeError):
    """A request that does not follow the protocol or this model's tensors (400)."""


class RequestInput(BaseModel):
    name: StrictStr
    shape: list[StrictInt]
    datatype: StrictStr
    parameters: dict[str, Any] | None = None
    data: Any = None


class RequestOutput(BaseModel):
    name: StrictStr
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    """$inference_request of the protocol."""

    id: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


def task_of(endpoints: list[str]) -> str:
    """The task a model does over the protocol: its head's (answer, classify), else encode."""
    return next((e for e in ("answer", "classify") if e in endpoints), "encode")


def model_metadata(name: str, task: str, labels: list[str], hidden_size: int) -> dict:
    """$metadata_model_response."""
    per_item = {"probabilities": [len(labels)], "embedding": [hidden_size]}
    return {"name": name, "versions": [], "platform": "pytorch_bertforge",
            "inputs": [{"name": n, "datatype": "BYTES", "shape": [-1]} for n in INPUTS[task]],
            "outputs": [{"name": n, "datatype": t, "shape": [-1, *per_item.get(n, [])]}
                        for n, t in OUTPUTS[task].items()]}


def parse_request(body: bytes, json_length: bytes | None) -> tuple[InferenceRequest, bytes]:
    """The request's JSON part and, with the binary extension, the bytes after it."""
    binary = b""
    if json_length is not None:
        if not json_length.isdigit() or int(json_length) > len(body):
            raise ProtocolError(f"Inference-Header-Content-Length {json_length.decode('latin-1')!r} is not a length "
                                f"within the body of {len(body)} bytes")
        body, binary = body[:int(json_length)], body[int(json_length):]
    try:
        return InferenceRequest.model_validate_json(body), binary
    except ValidationError as e:
        error = e.errors()[0]
        if error["type"] == "json_invalid":
            raise ProtocolError(f"the request is not valid JSON ({error.get('ctx', {}).get('error', error['msg'])})"
                                ) from None
        where = ".".join(str(p) for p in error["loc"]) or "request"
        raise ProtocolError(f"{where}: {error['msg']} (an inference request is "
                            '{"inputs": [{"name", "shape", "datatype", "data"}, ...]})') from None


def input_texts(request: InferenceRequest, binary: bytes, task: str, model: str) -> dict[str, list[str]]:
    """Each input tensor of `request` as its list of strings, checked against the task's."""
    wanted = INPUTS[task]
    takes = ", ".join(f"{n} (BYTES{'' if required else ', optional'})" for n, (_, required) in wanted.items())
    texts: dict[str, list[str]] = {}
    offset = 0
    for tensor in request.inputs:
        if tensor.name not in wanted:
            raise ProtocolError(f"model {model!r} has no input {tensor.name!r}; it takes {takes}")
        if tensor.name in texts:
            raise ProtocolError(f"input {tensor.name!r} is given twice")
        if tensor.datatype != "BYTES":
            raise ProtocolError(f"input {tensor.name!r} must be BYTES (text), got {tensor.datatype}")
        if any(d < 0 for d in tensor.shape):
            raise ProtocolError(f"input {tensor.name!r}: shape {tensor.shape} has a negative dimension")
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise ProtocolError(f"input {tensor.name!r}: binary_data_size {size} does not fit the "
                                    f"{len(binary) - offset} bytes after the JSON")
            values = _unpack_bytes(binary[offset:offset + size], tensor.name)
            offset += size
        elif tensor.data is None:
            raise ProtocolError(f"input {tensor.name!r} has no data")
        else:
            values = _flatten(tensor.data, tensor.name)
        if len(values) != int(np.prod(tensor.shape)):
            raise ProtocolError(f"input {tensor.name!r}: shape {tensor.shape} holds {int(np.prod(tensor.shape))} "
                                f"elements but {len(values)} are given")
        texts[tensor.name] = values
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes after the JSON belong to no input (binary_data_size)")
    for name, (_, required) in wanted.items():
        if required and name not in texts:
            raise ProtocolError(f"model {model!r} needs input {name!r}; it takes {takes}")
    counts = {len(v) for v in texts.values()}
    if len(counts) > 1:
        raise ProtocolError("the inputs must have as many elements each: "
                            + ", ".join(f"{n} has {len(v)}" for n, v in texts.items()))
    return texts


def _flatten(data: Any, name: str) -> list[str]:
    if isinstance(data, str):
        return [data]
    if not isinstance(data, list):
        raise ProtocolError(f"input {name!r}: BYTES data must be strings (in a list), got {type(data).__name__}")
    values: list[str] = []
    for x in data:
        values.extend(_flatten(x, name))
    return values


def _unpack_bytes(raw: bytes, name: str) -> list[str]:
    values, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise ProtocolError(f"input {name!r}: binary BYTES data end inside an element's 4-byte length")
        (n,) = struct.unpack_from("<I", raw, i)
        if i + 4 + n > len(raw):
            raise ProtocolError(f"input {name!r}: a binary BYTES element of {n} bytes runs past the data")
        try:
            values.append(raw[i + 4:i + 4 + n].decode("utf-8"))
        except UnicodeDecodeError:
            raise ProtocolError(f"input {name!r}: element {len(values)} is not UTF-8 text") from None
        i += 4 + n
    return values


def output_tensors(task: str, results: list[dict]) -> dict[str, tuple[str, list[int], list]]:
    """The task's outputs of the endpoint results: name -> (datatype, shape, flat values)."""
    n = len(results)
    if task == "answer":
        columns = {"answer": [r["answer"] for r in results], "score": [r["score"] for r in results],
                   "start": [r["start"] for r in results], "end": [r["end"] for r in results]}
        return {name: (OUTPUTS[task][name], [n], values) for name, values in columns.items()}
    if task == "classify":
        width = len(results[0]["probabilities"]) if results else 0
        return {"label": ("BYTES", [n], [r["label"] or "" for r in results]),
                "score": ("FP32", [n], [r["score"] for r in results]),
                "probabilities": ("FP32", [n, width], [p for r in results for p in r["probabilities"].values()])}
    width = len(results[0]["embedding"]) if results else 0
    return {"embedding": ("FP32", [n, width], [x for r in results for x in r["embedding"]])}


def response(model: str, request: InferenceRequest, task: str, results: list[dict]) -> tuple[bytes, int | None]:
    """The $inference_response (and the JSON part's length when binary outputs follow it)."""
    tensors = output_tensors(task, results)
    asked = request.outputs if request.outputs is not None else [RequestOutput(name=n) for n in tensors]
    binary_default = bool((request.parameters or {}).get("binary_data_output", False))
    outputs, blobs = [], []
    for out in asked:
        if out.name not in tensors:
            raise ProtocolError(f"model {model!r} has no output {out.name!r}; it gives {', '.join(tensors)}")
        datatype, shape, values = tensors[out.name]
        entry: dict[str, Any] = {"name": out.name, "datatype": datatype, "shape": shape}
        if (out.parameters or {}).get("binary_data", binary_default):
            blob = _pack(datatype, values)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = values
        outputs.append(entry)
    head = {"model_name": model, **({"id": request.id} if request.id is not None else {}), "outputs": outputs}
    text = json.dumps(head).encode()
    return (text + b"".join(blobs), len(text)) if blobs else (text, None)


def _pack(datatype: str, values: list) -> bytes:
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(b)) + b for b in (v.encode("utf-8") for v in values))
    return np.asarray(values, dtype=NUMPY[datatype]).tobytes()
