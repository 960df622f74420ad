"""The Open Inference Protocol v2 (KServe, Triton) in one place, whatever the transport. No torch.

REST (JSON, or JSON plus raw bytes in the binary tensor extension) and gRPC
(`accordion.workers.grpcserver`) requests are validated here into one `InferRequest` of numpy
arrays, and answers are rendered from one `InferResponse`: the worker's and the router's REST
and gRPC endpoints share the same checks, the same messages and the same status codes.

Every check raises `InferenceError` with an HTTP status (4xx for the client's mistakes) and a
reason that names the field; the transports render it as KServe's ``{"error": "..."}`` body or
as a gRPC status. Nothing a client sends can raise anything else: numbers are bounded (JSON is
decoded by `decode_json`, which refuses nesting beyond `MAX_JSON_DEPTH`, numbers beyond a
double and malformed UTF-8), shapes are bounded in rank and element count, and every tensor's
element count is checked before numpy sees its data.

A request may carry a batch of samples: the first dimension of its input is the batch size N
(``[N, *sample_shape]``; a shape without the batch dimension is one sample). The worker splits
it into N deadline-carrying items for its batcher and answers them as one response.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import orjson

from accordion.workers.config import DEADLINE_HEADER

Array = npt.NDArray[Any]

DATATYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(dtype).newbyteorder("<")
    for name, dtype in (
        ("BOOL", np.bool_),
        ("UINT8", np.uint8),
        ("UINT16", np.uint16),
        ("UINT32", np.uint32),
        ("UINT64", np.uint64),
        ("INT8", np.int8),
        ("INT16", np.int16),
        ("INT32", np.int32),
        ("INT64", np.int64),
        ("FP16", np.float16),
        ("FP32", np.float32),
        ("FP64", np.float64),
    )
}
"""The v2 datatypes with a fixed element size, little-endian as the binary extension sends them
(BYTES, strings of any length, is not served: no model here takes it)."""

MAX_RANK = 16
MAX_ELEMENTS = 1 << 28
"""Bounds on a declared shape: a rank of at most 16 and 2**28 elements per tensor; the body
size limit refuses most of those anyway, but a shape is checked before anything is allocated."""
MAX_JSON_DEPTH = 1024
"""orjson's own nesting limit (it refuses deeper documents without recursing)."""


MODEL_VERSION = "1"
"""A worker serves one version of one model; so does a router, of its service."""
SERVER_NAME = "accordion"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ("binary_tensor_data",)
"""The v2 extensions served (Triton's name for the binary tensor data extension)."""


def server_metadata_doc() -> dict[str, Any]:
    """``GET /v2`` of the worker and the router."""
    return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": list(EXTENSIONS)}


class InferenceError(Exception):
    """A request the server refuses or could not serve: HTTP status, reason, outcome label."""

    def __init__(self, status: int, reason: str, outcome: str = "rejected") -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.outcome = outcome


class DroppedError(Exception):
    """A queued sample the batcher gave up on (its deadline cannot be met): the reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_T = TypeVar("_T")


def answered_rows(results: Sequence[_T | BaseException]) -> list[_T]:
    """The answers of one request's samples (`asyncio.gather(..., return_exceptions=True)`),
    or the request's error: 503 when a sample was dropped, 500 when the model failed."""
    rows: list[_T] = []
    for result in results:
        if isinstance(result, DroppedError):
            raise InferenceError(503, f"dropped: {result.reason}", "dropped")
        if isinstance(result, BaseException):
            raise InferenceError(500, f"model execution failed: {result}", "error")
        rows.append(result)
    return rows


def decode_json(raw: bytes) -> Any:
    """Parse a JSON document with bounded depth and numbers (orjson: no recursion, integers
    beyond 64 bits become doubles, numbers beyond a double, NaN and Infinity are refused)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        hint = " (NaN and Infinity are not JSON)" if b"NaN" in raw or b"Infinity" in raw else ""
        raise InferenceError(400, f"malformed JSON{hint}: {exc}") from None


def encode_json(value: Any) -> bytes:
    return orjson.dumps(value)


@dataclass(frozen=True)
class TensorSpec:
    """A tensor of a model's signature; -1 in `shape` is a dimension of any size (the batch)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, value: Any) -> TensorSpec:
        """A tensor of a v2 model metadata answer (what a router reads from its backends)."""
        if not isinstance(value, dict):
            raise ValueError("tensor metadata must be an object")
        name, datatype, shape = value.get("name"), value.get("datatype"), value.get("shape")
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise ValueError("tensor metadata needs a name and a datatype")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= -1 for d in shape):
            raise ValueError("tensor metadata needs a shape of integers >= -1")
        return cls(name, datatype, tuple(shape))


@dataclass(frozen=True)
class Signature:
    """What a model takes and returns (its v2 metadata)."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass
class InferRequest:
    """A validated inference request: each input as an array of its declared shape."""

    inputs: dict[str, Array]
    id: str | None = None
    outputs: list[str] | None = None
    """Requested outputs by name; None: all of them."""
    binary_outputs: set[str] = field(default_factory=set)
    """REST: outputs to send in the binary tensor extension."""
    binary_all: bool = False
    """REST: the request parameter ``binary_data_output``."""

    @property
    def batch_size(self) -> int:
        """N, the first dimension every input shares (1 for a rank-0 input)."""
        first = next(iter(self.inputs.values()))
        return int(first.shape[0]) if first.ndim else 1


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    outputs: dict[str, Array]
    id: str | None = None


# -- shared checks ---------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bad(reason: str) -> InferenceError:
    return InferenceError(400, reason)


def check_header(where: str, name: object, datatype: object, shape: Sequence[object]) -> str:
    """The name, datatype and shape of one tensor, whatever the transport; the datatype."""
    if not isinstance(name, str) or not name:
        raise _bad(f"{where}: 'name' must be a non-empty string")
    if not isinstance(datatype, str):
        raise _bad(f"{where} ({name!r}): 'datatype' must be a string")
    if datatype not in DATATYPES:
        supported = ", ".join(DATATYPES)
        raise _bad(f"input {name!r}: datatype {datatype!r} is not supported; one of {supported}")
    if len(shape) > MAX_RANK or not all(_is_int(d) and d >= 0 for d in shape):  # type: ignore[operator]
        raise _bad(
            f"input {name!r}: 'shape' must be a list of integers (at most {MAX_RANK}, "
            "none negative)"
        )
    if math.prod(shape) > MAX_ELEMENTS:  # type: ignore[arg-type]
        raise _bad(f"input {name!r}: shape {list(shape)} has more than {MAX_ELEMENTS} elements")
    return datatype


def expect_shape(
    name: str, datatype: str, shape: list[int], signature: Signature | None
) -> list[int]:
    """Check one input's name, datatype and shape against the model's before its data is read;
    return the shape to read it as (a sample without its batch dimension is a batch of one).
    Without a signature (a router that has not read its backends' yet) the shape is taken as
    declared."""
    if signature is None:
        return shape
    spec = next((s for s in signature.inputs if s.name == name), None)
    if spec is None:
        expected = [s.name for s in signature.inputs]
        raise _bad(f"unknown input tensor {name!r}; expected {expected}")
    if datatype != spec.datatype:
        raise _bad(f"input {name!r} has datatype {datatype!r}; expected {spec.datatype!r}")
    full = shape
    if len(shape) == len(spec.shape) - 1 and spec.shape[:1] == (-1,):
        full = [1, *shape]
    if len(full) != len(spec.shape) or any(
        want not in (-1, got) for want, got in zip(spec.shape, full, strict=True)
    ):
        raise _bad(
            f"input {name!r} has shape {shape}; expected {list(spec.shape)} "
            "(-1: any size; the first dimension is the batch)"
        )
    if spec.shape[:1] == (-1,) and full[0] < 1:
        raise _bad(f"input {name!r}: a batch needs at least one sample, not shape {shape}")
    return full


def check_inputs(arrays: dict[str, Array], signature: Signature | None) -> None:
    """After every input is read: none missing, and all agree on the batch size."""
    if signature is None:
        return
    missing = [s.name for s in signature.inputs if s.name not in arrays]
    if missing:
        raise _bad(f"missing input tensor {missing[0]!r}")
    batches = {arrays[s.name].shape[0] for s in signature.inputs if s.shape[:1] == (-1,)}
    if len(batches) > 1:
        raise _bad(f"inputs disagree on the batch size: {sorted(batches)}")


def from_values(name: str, datatype: str, shape: list[int], data: Any) -> Array:
    """A tensor from JSON numbers (flat row-major, or nested as the shape is); the element count
    is checked on the flat list before numpy converts anything."""
    dtype = DATATYPES[datatype]
    count = math.prod(shape)
    if isinstance(data, list) and data and not isinstance(data[0], list) and len(data) != count:
        raise _bad(f"input {name!r}: data has {len(data)} elements; shape {shape} needs {count}")
    try:
        if datatype == "BOOL":
            array = np.asarray(data, dtype=object)
            if not all(isinstance(v, bool) for v in array.ravel()):
                raise _bad(f"input {name!r}: BOOL data must be true or false")
            array = array.astype(dtype)
        elif dtype.kind == "f":
            array = np.asarray(data, dtype=np.float64)
        else:
            array = np.asarray(data)
            if array.dtype.kind not in "iub" and array.size:
                raise ValueError(f"not integers ({array.dtype})")
    except (ValueError, TypeError, OverflowError) as exc:
        raise _bad(f"input {name!r}: data is not {datatype}: {exc}") from None
    if array.size != count:
        raise _bad(f"input {name!r}: data has {array.size} elements; shape {shape} needs {count}")
    if array.ndim > 1 and list(array.shape) != shape:
        raise _bad(
            f"input {name!r}: data is nested as {list(array.shape)}; give it flat or nested as "
            f"its shape {shape}"
        )
    if dtype.kind == "f":
        if not np.all(np.isfinite(array)):
            raise _bad(f"input {name!r}: data contains NaN or infinity")
        with np.errstate(over="ignore"):
            array = array.astype(dtype)
        if not np.all(np.isfinite(array)):
            raise _bad(f"input {name!r}: data exceeds the range of {datatype}")
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        if array.size and (int(array.min()) < info.min or int(array.max()) > info.max):
            raise _bad(f"input {name!r}: data exceeds the range of {datatype}")
        array = array.astype(dtype)
    return array.reshape(shape)


def from_bytes(name: str, datatype: str, shape: list[int], raw: bytes | memoryview) -> Array:
    dtype = DATATYPES[datatype]
    need = math.prod(shape) * dtype.itemsize
    if len(raw) != need:
        raise _bad(f"input {name!r}: {len(raw)} bytes of binary data; shape {shape} needs {need}")
    array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    if dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise _bad(f"input {name!r}: data contains NaN or infinity")
    if datatype == "BOOL" and np.any(np.frombuffer(raw, dtype=np.uint8) > 1):
        raise _bad(f"input {name!r}: BOOL bytes must be 0 or 1")
    return array


def _parameters(obj: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise _bad(f"{where}: 'parameters' must be an object")
    return params


# -- REST ------------------------------------------------------------------------------------


def parse_rest(body: Any, binary: bytes, signature: Signature | None) -> InferRequest:
    """Validate a v2 REST infer body (decoded JSON) and the raw bytes after its JSON header."""
    if not isinstance(body, dict):
        raise _bad("request body must be a JSON object")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _bad("'inputs' must be a non-empty list of tensors")
    arrays: dict[str, Array] = {}
    offset = 0
    view = memoryview(binary)
    for i, tensor in enumerate(inputs):
        if not isinstance(tensor, dict):
            raise _bad(f"inputs[{i}] must be an object")
        name, shape = tensor.get("name"), tensor.get("shape")
        if not isinstance(shape, list):
            raise _bad(f"inputs[{i}] ({name!r}): 'shape' must be a list of integers")
        datatype = check_header(f"inputs[{i}]", name, tensor.get("datatype"), shape)
        assert isinstance(name, str)
        if name in arrays:
            raise _bad(f"input {name!r} appears twice")
        shape = expect_shape(name, datatype, shape, signature)
        size = _parameters(tensor, f"input {name!r}").get("binary_data_size")
        if size is not None:
            if not _is_int(size) or size < 0:
                raise _bad(f"input {name!r}: binary_data_size must be a non-negative integer")
            if "data" in tensor:
                raise _bad(f"input {name!r} has both 'data' and parameters.binary_data_size")
            if offset + size > len(binary):
                raise _bad(
                    f"input {name!r}: binary_data_size is {size} but {len(binary) - offset} "
                    "bytes of binary data are left after the JSON header"
                )
            arrays[name] = from_bytes(name, datatype, shape, view[offset : offset + size])
            offset += size
        else:
            if "data" not in tensor:
                raise _bad(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
            data = tensor["data"]
            if not isinstance(data, list):
                raise _bad(f"input {name!r}: 'data' must be a list")
            arrays[name] = from_values(name, datatype, shape, data)
    if offset != len(binary):
        raise _bad(
            f"{len(binary) - offset} bytes follow the JSON header beyond what the inputs' "
            "parameters.binary_data_size declare"
        )
    check_inputs(arrays, signature)
    request = InferRequest(arrays)
    request_id = body.get("id")
    if request_id is not None:
        if not isinstance(request_id, str):
            raise _bad("'id' must be a string")
        request.id = request_id
    request.binary_all = _parameters(body, "request").get("binary_data_output") is True
    outputs = body.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list):
            raise _bad("'outputs' must be a list of requested output tensors")
        request.outputs = []
        for i, out in enumerate(outputs):
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise _bad(f"outputs[{i}] must be an object with a string 'name'")
            request.outputs.append(out["name"])
            if _parameters(out, f"output {out['name']!r}").get("binary_data") is True:
                request.binary_outputs.add(out["name"])
    check_outputs(request, signature)
    return request


def parse_rest_body(
    raw: bytes, header_length: str | None, signature: Signature | None
) -> InferRequest:
    """A REST infer body as received (JSON, or a JSON header and binary data split by its
    ``Inference-Header-Content-Length``) validated into a request: the one path of every REST
    body, whether the server decodes it or a decoder process does (`accordion.workers.decoding`,
    for bulk bodies), so both give the same checks and the same messages."""
    header, binary = split_binary(raw, header_length)
    return parse_rest(decode_json(header), binary, signature)


def check_outputs(request: InferRequest, signature: Signature | None) -> None:
    if signature is None or request.outputs is None:
        return
    known = {s.name for s in signature.outputs}
    for name in request.outputs:
        if name not in known:
            raise _bad(f"unknown requested output {name!r}; this model has {sorted(known)}")


def render_rest(response: InferResponse, request: InferRequest) -> tuple[bytes, int | None]:
    """The REST answer: JSON, or a JSON header and raw bytes for the outputs asked in binary;
    (body, the JSON header's length when binary data follows it)."""
    names = request.outputs if request.outputs is not None else list(response.outputs)
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name in names:
        array = response.outputs[name]
        datatype = datatype_of(array)
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if request.binary_all or name in request.binary_outputs:
            blob = np.ascontiguousarray(array, dtype=DATATYPES[datatype]).tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = array.ravel().tolist()
        tensors.append(tensor)
    doc: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": tensors,
    }
    if response.id is not None:
        doc["id"] = response.id
    header = encode_json(doc)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def datatype_of(array: Array) -> str:
    """The v2 datatype of an array numpy made (any byte order)."""
    for name, dtype in DATATYPES.items():
        if array.dtype.newbyteorder("<") == dtype:
            return name
    raise ValueError(f"no v2 datatype for numpy {array.dtype}")


def parse_deadline_ms(value: str | None, default_s: float) -> float:
    """The remaining budget (seconds) from the deadline header (ms); `default_s` without one."""
    if value is None:
        return default_s
    try:
        budget_ms = float(value)
    except ValueError:
        raise _bad(f"{DEADLINE_HEADER} must be a number of milliseconds") from None
    if not math.isfinite(budget_ms) or budget_ms <= 0:
        raise _bad(f"{DEADLINE_HEADER} must be a positive number of milliseconds")
    return budget_ms / 1000.0


def decode_rest_response(payload: bytes, header_length: str | None) -> InferResponse:
    """A v2 REST answer (JSON, or JSON header and binary outputs) back into arrays: what the
    router's gRPC endpoint does with a worker's answer."""
    header, binary = split_binary(payload, header_length)
    doc = decode_json(header)
    if not isinstance(doc, dict) or not isinstance(doc.get("outputs"), list):
        raise InferenceError(502, "the backend's answer has no 'outputs' list", "error")
    outputs: dict[str, Array] = {}
    offset = 0
    try:
        for tensor in doc["outputs"]:
            name, datatype, shape = tensor["name"], tensor["datatype"], tensor["shape"]
            check_header("output", name, datatype, shape)
            size = _parameters(tensor, f"output {name!r}").get("binary_data_size")
            if size is not None:
                outputs[name] = from_bytes(name, datatype, shape, binary[offset : offset + size])
                offset += size
            else:
                outputs[name] = from_values(name, datatype, shape, tensor.get("data"))
    except (InferenceError, KeyError, TypeError) as exc:
        raise InferenceError(502, f"the backend's answer is malformed: {exc}", "error") from None
    request_id = doc.get("id")
    return InferResponse(
        str(doc.get("model_name", "")),
        str(doc.get("model_version", "")),
        outputs,
        id=None if request_id is None else str(request_id),
    )


def binary_request(request: InferRequest) -> tuple[bytes, int]:
    """A validated request as a REST body in the binary tensor extension, outputs asked in
    binary too; (body, JSON header length). The router forwards gRPC requests this way."""
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, array in request.inputs.items():
        blob = np.ascontiguousarray(array, dtype=DATATYPES[datatype_of(array)]).tobytes()
        tensors.append(
            {
                "name": name,
                "datatype": datatype_of(array),
                "shape": list(array.shape),
                "parameters": {"binary_data_size": len(blob)},
            }
        )
        blobs.append(blob)
    doc: dict[str, Any] = {"inputs": tensors, "parameters": {"binary_data_output": True}}
    if request.id is not None:
        doc["id"] = request.id
    if request.outputs is not None:
        doc["outputs"] = [{"name": n} for n in request.outputs]
    header = encode_json(doc)
    return header + b"".join(blobs), len(header)


def split_binary(raw: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON header, binary data) of a body, by its ``Inference-Header-Content-Length``."""
    if header_length is None:
        return raw, b""
    text = header_length.strip()
    if not text.isdecimal() or not text.isascii() or len(text) > 12 or int(text) > len(raw):
        raise _bad(
            "Inference-Header-Content-Length must be a byte count within the body of "
            f"{len(raw)} bytes, not {header_length[:40]!r}"
        )
    return raw[: int(text)], raw[int(text) :]
